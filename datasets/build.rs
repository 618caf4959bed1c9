//! Embeds every `scenarios/*.toml` file into the binary, sorted by file name, so adding a scenario needs no list.
use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scenarios");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    files.sort();
    let mut code =
        String::from("/// The embedded scenarios, `(name, TOML text)`, one per `scenarios/*.toml`, sorted by name.\n");
    code.push_str("pub const EMBEDDED: &[(&str, &str)] = &[\n");
    for p in &files {
        println!("cargo:rerun-if-changed={}", p.display());
        let stem = p
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("scenario file names are UTF-8");
        let abs = p.canonicalize().expect("scenario path resolves");
        let _ = writeln!(code, "    ({stem:?}, include_str!({:?})),", abs.display().to_string());
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("embedded.rs");
    std::fs::write(out, code).expect("writing the embedded scenario list");
}
