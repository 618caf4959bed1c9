//! Property tests (proptest) of the two text readers the CLI feeds user files to (issue 16): the scenario TOML
//! parser and the CSV reader of `trainlab fit` / `plan-mixture`.
//!
//! - `scenario::parse` never panics, on arbitrary text and on valid embedded scenarios with random edits; every
//!   error is a user error, and text that is not TOML at all gets an error with its line and column.
//! - `fit::csv::Table::parse` never panics on arbitrary text (and `Table::read` on arbitrary bytes); every error is a
//!   user error (`Error::Invalid`, or `Error::Io` for bytes that are not UTF-8); a table it accepts holds only
//!   finite numbers, one per column, and building the D-CPT dataset from it never panics either.
use proptest::prelude::*;
use trainlab_datasets::scenario::{EMBEDDED, parse};
use trainlab_models::fit::csv::Table;

/// Valid scenario text with a few random edits: bytes replaced, inserted or removed (kept on char boundaries).
fn edited_scenario() -> impl Strategy<Value = String> {
    let n = EMBEDDED.len();
    (
        0..n,
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, prop::char::any()), 1..6),
    )
        .prop_map(|(i, edits)| {
            let mut s: Vec<char> = EMBEDDED[i].1.chars().collect();
            for (at, op, c) in edits {
                if s.is_empty() {
                    break;
                }
                let k = at.index(s.len());
                match op {
                    0 => s[k] = c,
                    1 => s.insert(k, c),
                    _ => {
                        s.remove(k);
                    }
                }
            }
            s.into_iter().collect()
        })
}

/// TOML-ish noise: the characters TOML syntax is made of.
fn tomlish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "[", "]", "[[", "]]", "=", "\"", "'", "\n", " ", ",", "{", "}", "#", ".", "kind", "name", "workload",
            "seed", "1", "-1", "nan", "inf", "1e999", "\"x\"", "true", "\\", "\u{feff}", "\r\n",
        ]),
        0..40,
    )
    .prop_map(|v| v.concat())
}

/// CSV-ish noise: headers, separators, numbers and junk.
fn csvish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "N",
            "D",
            "r",
            "loss",
            "general_loss",
            "domain_loss",
            ",",
            "\n",
            "\r\n",
            "\"",
            "#",
            " ",
            "1",
            "0",
            "-1",
            "0.5",
            "1e9",
            "1e999",
            "nan",
            "inf",
            "abc",
            "\u{feff}",
            "",
            ",,",
        ]),
        0..60,
    )
    .prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn scenario_parse_never_panics_on_any_text(text in any::<String>()) {
        if let Err(e) = parse(&text, "fuzz.toml") {
            prop_assert!(e.is_user_error(), "{e}");
        }
    }

    #[test]
    fn scenario_parse_never_panics_on_tomlish_text(text in tomlish()) {
        if let Err(e) = parse(&text, "fuzz.toml") {
            prop_assert!(e.is_user_error(), "{e}");
            if toml::from_str::<toml::Table>(&text).is_err() {
                let msg = e.to_string();
                prop_assert!(msg.contains("line ") && msg.contains("column "), "no line/column: {msg}");
            }
        }
    }

    #[test]
    fn scenario_parse_never_panics_on_edited_scenarios(text in edited_scenario()) {
        match parse(&text, "fuzz.toml") {
            Err(e) => {
                prop_assert!(e.is_user_error(), "{e}");
                if toml::from_str::<toml::Table>(&text).is_err() {
                    let msg = e.to_string();
                    prop_assert!(msg.contains("line ") && msg.contains("column "), "no line/column: {msg}");
                }
            }
            // An accepted edit still has to get through the typed stage without a panic.
            Ok(sc) => {
                let _ = sc.workload::<trainlab_core::workloads::Gemm>();
            }
        }
    }

    #[test]
    fn csv_parse_never_panics_and_errors_are_user_errors(text in prop_oneof![any::<String>(), csvish()]) {
        match Table::parse(&text, "fuzz.csv") {
            Err(e) => prop_assert!(
                matches!(e, trainlab_core::Error::Invalid { .. }) && e.is_user_error(),
                "{e}"
            ),
            Ok(t) => {
                prop_assert!(!t.rows.is_empty());
                for row in &t.rows {
                    prop_assert_eq!(row.len(), t.columns.len());
                    prop_assert!(row.iter().all(|v| v.is_finite()));
                }
                let law = trainlab_models::laws::DcptL3::new();
                for col in ["loss", "general_loss", "domain_loss"] {
                    if let Err(e) = trainlab_models::fit::csv::dataset(&t, &law, col, false) {
                        prop_assert!(e.is_user_error(), "{e}");
                    }
                }
            }
        }
    }

    #[test]
    fn csv_read_never_panics_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let dir = std::env::temp_dir().join(format!("trainlab-reader-props-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("runs.csv");
        std::fs::write(&p, &bytes).unwrap();
        if let Err(e) = Table::read(&p) {
            prop_assert!(e.is_user_error(), "{e}");
        }
    }
}
