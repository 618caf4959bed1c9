//! Reading calibration profiles (`--profile FILE` or `--profile DIR`) and handing each kind the ones it reads.
//!
//! Every file is a [`trainlab_core::Profile`] envelope: `kind` says which calibration wrote it, `format` must be
//! [`PROFILE_FORMAT`] (anything else is stale: re-run the calibration), `params` are typed by the model that reads
//! them. A file given by name must be read by the scenario's kind, else it is an input error (exit 2) naming the
//! profile's kind and the kinds that read it; from a directory, every profile a kind reads is used, the others are
//! ignored, and a directory with none that applies is an error too. Nothing is ever silently ignored.
use crate::kinds::{KINDS, Kind};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use trainlab_core::{Error, PROFILE_FORMAT, Profile, Provenance};

/// One profile file, its parameters still untyped.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Where it was read from.
    pub path: PathBuf,
    /// The profile kind (`device`, `moe_layer`, `training_job`, ...).
    pub kind: String,
    /// Its provenance.
    pub provenance: Provenance,
    /// The whole file.
    table: toml::Table,
}

/// The profiles given on the command line.
#[derive(Debug, Clone, Default)]
pub struct Profiles {
    /// The profiles, in file-name order.
    pub items: Vec<Loaded>,
    /// What was given: a file or a directory (for messages); `None` when no `--profile` was given.
    pub source: Option<PathBuf>,
    /// True when `source` is a directory.
    pub from_dir: bool,
}

#[derive(serde::Deserialize)]
struct Header {
    kind: String,
    format: u32,
    provenance: Provenance,
}

fn malformed(path: &Path, reason: impl Into<String>) -> Error {
    Error::invalid(
        format!("{} (profile)", path.display()),
        "(see reason)",
        reason,
        "use a file written by `trainlab calibrate --workload KIND`",
    )
}

/// The kinds that read profiles of kind `profile_kind`.
pub fn readers(profile_kind: &str) -> Vec<&'static str> {
    KINDS
        .iter()
        .filter(|k| k.reads().contains(&profile_kind))
        .map(|k| k.name())
        .collect()
}

fn load_file(path: &Path) -> Result<Loaded, Error> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading profile {}", path.display()), e))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| malformed(path, e.message().to_string()))?;
    let format = table.get("format").and_then(toml::Value::as_integer);
    match format {
        Some(f) if f == i64::from(PROFILE_FORMAT) => {}
        Some(f) => {
            return Err(Error::invalid(
                format!("{}: format", path.display()),
                f,
                format!("a stale profile (this trainlab reads format {PROFILE_FORMAT})"),
                "re-run the `trainlab calibrate` command that wrote it (its provenance.command)",
            ));
        }
        None => {
            return Err(Error::invalid(
                format!("{}: format", path.display()),
                "missing",
                format!("not a profile of this trainlab (format {PROFILE_FORMAT}); an older profile or another file"),
                "re-run `trainlab calibrate --workload KIND` to write a current profile",
            ));
        }
    }
    let header: Header = {
        let mut t = toml::Table::new();
        for k in ["kind", "format", "provenance"] {
            if let Some(v) = table.get(k) {
                t.insert(k.into(), v.clone());
            }
        }
        trainlab_datasets::scenario::from_table(&t, &path.display().to_string(), "profile")?
    };
    debug_assert_eq!(header.format, PROFILE_FORMAT);
    if readers(&header.kind).is_empty() {
        return Err(Error::invalid(
            format!("{}: kind", path.display()),
            format!("\"{}\"", header.kind),
            "no workload kind reads profiles of this kind",
            "use a file written by `trainlab calibrate`",
        ));
    }
    Ok(Loaded {
        path: path.to_path_buf(),
        kind: header.kind,
        provenance: header.provenance,
        table,
    })
}

impl Profiles {
    /// No profiles.
    pub fn none() -> Self {
        Profiles::default()
    }

    /// Reads a profile file, or every `*.toml` profile in a directory.
    pub fn load(path: &Path) -> Result<Profiles, Error> {
        if path.is_dir() {
            let rd = std::fs::read_dir(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            files.sort();
            let items = files.iter().map(|f| load_file(f)).collect::<Result<Vec<_>, _>>()?;
            if items.is_empty() {
                return Err(Error::invalid(
                    "--profile",
                    path.display(),
                    "the directory holds no profile (*.toml)",
                    "give the --out directory of `trainlab calibrate`, or a profile file",
                ));
            }
            Ok(Profiles {
                items,
                source: Some(path.to_path_buf()),
                from_dir: true,
            })
        } else {
            Ok(Profiles {
                items: vec![load_file(path)?],
                source: Some(path.to_path_buf()),
                from_dir: false,
            })
        }
    }

    /// Reads `--profile` if given.
    pub fn load_opt(path: Option<&Path>) -> Result<Profiles, Error> {
        path.map_or_else(|| Ok(Profiles::none()), Profiles::load)
    }

    /// True when no profile was given.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Checks that the profiles suit `kind`: a profile file must be one `kind` reads; a directory must hold at least
    /// one. Returns the profiles `kind` will use.
    pub fn check_for(&self, kind: &dyn Kind) -> Result<Vec<&Loaded>, Error> {
        let Some(source) = &self.source else {
            return Ok(Vec::new());
        };
        let used: Vec<&Loaded> = self
            .items
            .iter()
            .filter(|p| kind.reads().contains(&p.kind.as_str()))
            .collect();
        if !used.is_empty() {
            return Ok(used);
        }
        let have: Vec<String> = self.items.iter().map(|p| format!("a `{}` profile", p.kind)).collect();
        let reads = if kind.reads().is_empty() {
            format!("kind \"{}\" reads no profile", kind.name())
        } else {
            format!("kind \"{}\" reads {} profiles", kind.name(), kind.reads().join(" or "))
        };
        let by = self
            .items
            .first()
            .map(|p| format!(" ({} profiles are read by {})", p.kind, readers(&p.kind).join(", ")))
            .unwrap_or_default();
        Err(Error::invalid(
            "--profile",
            source.display(),
            format!("{} here, and {reads}{by}", have.join(", ")),
            if kind.reads().is_empty() {
                "drop --profile".to_string()
            } else {
                format!("write one with `trainlab calibrate --workload {}`", kind.name())
            },
        ))
    }

    /// Every profile of `profile_kind`, typed, in file-name order.
    pub fn get_all<P: DeserializeOwned>(&self, profile_kind: &str) -> Result<Vec<Profile<P>>, Error> {
        self.items
            .iter()
            .filter(|p| p.kind == profile_kind)
            .map(|one| trainlab_datasets::scenario::from_table(&one.table, &one.path.display().to_string(), "profile"))
            .collect()
    }

    /// The one profile of `profile_kind` that `pick` accepts, or `None`. Two that it accepts (in a directory) is an
    /// input error: the answer would depend on which one was meant.
    pub fn get_one<P: DeserializeOwned>(
        &self,
        profile_kind: &str,
        pick: impl Fn(&Profile<P>) -> bool,
    ) -> Result<Option<Profile<P>>, Error> {
        let mut found: Vec<Profile<P>> = self.get_all(profile_kind)?.into_iter().filter(|p| pick(p)).collect();
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop()),
            n => Err(Error::invalid(
                "--profile",
                self.source.as_ref().map_or(String::new(), |s| s.display().to_string()),
                format!("{n} `{profile_kind}` profiles apply to this workload"),
                "give one profile file, or keep one profile of each kind and device in the directory",
            )),
        }
    }
}
