//! Scenario files: TOML with a header (`name`, `kind`, `description`, `seed`) and a `[workload]` table (or, for the
//! `plan` kind, a `[plan]` table) that deserialises into the kind's workload type with `deny_unknown_fields`.
//!
//! Loading is two-stage: the header is read strictly, then [`Scenario::workload`] expands shorthands (a `cluster`
//! given as `{ gpu = "h100-sxm", nodes = 8, gpus_per_node = 8 }`, or a `gpu` given as a preset name), deserialises
//! with the full field path on error, and runs the workload's own `validate`. Every error names the field path and
//! the fix; nothing here panics on user input.
use serde::Deserialize;
use std::path::{Path, PathBuf};
use trainlab_core::{Error, Seed, Workload};

/// The embedded scenarios: `(name, TOML text)`. `trainlab scenarios` lists them; any CLI argument that is not a
/// file path is looked up here.
pub const EMBEDDED: &[(&str, &str)] = &[
    ("default-plan", include_str!("../../scenarios/default-plan.toml")),
    ("gemm-cpu", include_str!("../../scenarios/gemm-cpu.toml")),
    ("triad-cpu", include_str!("../../scenarios/triad-cpu.toml")),
    ("allreduce-h100", include_str!("../../scenarios/allreduce-h100.toml")),
    ("llama2-70b-h100", include_str!("../../scenarios/llama2-70b-h100.toml")),
    ("mm1", include_str!("../../scenarios/mm1.toml")),
    ("mmc", include_str!("../../scenarios/mmc.toml")),
    (
        "moe-switch-capacity",
        include_str!("../../scenarios/moe-switch-capacity.toml"),
    ),
    (
        "moe-m6t-prototypes",
        include_str!("../../scenarios/moe-m6t-prototypes.toml"),
    ),
    ("c4-production", include_str!("../../scenarios/c4-production.toml")),
    ("llama3-405b", include_str!("../../scenarios/llama3-405b.toml")),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    kind: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    workload: Option<toml::Table>,
    #[serde(default)]
    plan: Option<toml::Table>,
}

/// A parsed scenario, its workload still untyped until [`Scenario::workload`] is called with the kind's type.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Scenario name.
    pub name: String,
    /// Workload kind (`Workload::KIND`, or `plan`).
    pub kind: String,
    /// One-line description.
    pub description: String,
    /// Seed (default 42); the CLI's `--seed` overrides it.
    pub seed: Seed,
    /// The `[workload]` or `[plan]` table.
    pub body: toml::Table,
    /// Where it was read from (`embedded:NAME` or a path).
    pub origin: String,
}

/// Parses scenario text; `origin` is used in messages.
pub fn parse(text: &str, origin: &str) -> Result<Scenario, Error> {
    let raw: RawScenario = toml::from_str(text).map_err(|e| toml_error(e, origin, ""))?;
    let body = match (raw.workload, raw.plan) {
        (Some(w), None) => w,
        (None, Some(p)) => p,
        (Some(_), Some(_)) => {
            return Err(Error::invalid(
                format!("{origin}: plan"),
                "both [workload] and [plan]",
                "a scenario has one body",
                "keep [plan] for kind = \"plan\" and [workload] otherwise",
            ));
        }
        (None, None) => {
            return Err(Error::invalid(
                format!("{origin}: workload"),
                "missing",
                "the scenario has no [workload] table",
                "add a [workload] table with the fields of the kind",
            ));
        }
    };
    if raw.name.trim().is_empty() {
        return Err(Error::invalid(
            format!("{origin}: name"),
            "\"\"",
            "empty",
            "give the scenario a name",
        ));
    }
    Ok(Scenario {
        name: raw.name,
        kind: raw.kind,
        description: raw.description,
        seed: Seed(raw.seed.unwrap_or(42)),
        body,
        origin: origin.to_string(),
    })
}

/// Loads a scenario from a path, or, if no such file exists and the argument has no path separator, from the
/// embedded scenarios by name.
pub fn load(arg: &str) -> Result<Scenario, Error> {
    let path = PathBuf::from(arg);
    if path.exists() {
        return load_file(&path);
    }
    if let Some((name, text)) = EMBEDDED.iter().find(|(n, _)| *n == arg || format!("{n}.toml") == arg) {
        return parse(text, &format!("embedded:{name}"));
    }
    let names: Vec<&str> = EMBEDDED.iter().map(|(n, _)| *n).collect();
    Err(Error::io(
        format!(
            "scenario `{arg}`: no such file, and no embedded scenario of that name (embedded: {})",
            names.join(", ")
        ),
        std::io::Error::new(std::io::ErrorKind::NotFound, "not found"),
    ))
}

/// Loads a scenario file.
pub fn load_file(path: &Path) -> Result<Scenario, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    parse(&text, &path.display().to_string())
}

fn toml_error(e: toml::de::Error, origin: &str, prefix: &str) -> Error {
    let msg = e.message().to_string();
    let field = if prefix.is_empty() {
        origin.to_string()
    } else {
        format!("{origin}: {prefix}")
    };
    let fix = if msg.contains("unknown field") {
        "remove or rename the field (the message lists the accepted names)"
    } else if msg.contains("missing field") {
        "add the missing field"
    } else {
        "correct the value's type or spelling"
    };
    Error::invalid(field, "(see reason)", msg, fix)
}

/// Expands shorthands in place: a `cluster` table with `gpu = "<preset>"` and `nodes`/`gpus_per_node` but no
/// `intra`/`inter` becomes a full [`trainlab_core::ClusterSpec`]; a `gpu = "<preset>"` string elsewhere becomes
/// the preset's table. Applied recursively.
pub fn expand_shorthands(table: &mut toml::Table, path: &str) -> Result<(), Error> {
    let keys: Vec<String> = table.keys().cloned().collect();
    for key in keys {
        let here = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        let is_cluster_shorthand = key == "cluster"
            && table
                .get(&key)
                .and_then(|v| v.as_table())
                .is_some_and(|t| t.get("gpu").is_some_and(|g| g.is_str()) && !t.contains_key("intra"));
        if is_cluster_shorthand {
            let t = table[&key].as_table().cloned().unwrap_or_default();
            for k in t.keys() {
                if !["gpu", "nodes", "gpus_per_node"].contains(&k.as_str()) {
                    return Err(Error::invalid(
                        format!("{here}.{k}"),
                        &t[k],
                        "unknown field in the cluster shorthand",
                        "use gpu, nodes, gpus_per_node (or give a full cluster with intra and inter tiers)",
                    ));
                }
            }
            let gpu = t.get("gpu").and_then(|v| v.as_str()).unwrap_or_default();
            let nodes = int_field(&t, "nodes", &here, 1)?;
            let gpn = int_field(&t, "gpus_per_node", &here, 8)?;
            let spec = crate::gpus::cluster(gpu, nodes, gpn).map_err(|e| prefix_field(e, &here))?;
            let value = toml::Value::try_from(&spec)
                .map_err(|e| Error::Backend(format!("internal: cannot re-encode cluster: {e}")))?;
            table.insert(key, value);
            continue;
        }
        if key == "gpu"
            && let Some(name) = table.get(&key).and_then(|v| v.as_str()).map(str::to_string)
        {
            let spec = crate::gpus::preset(&name).ok_or_else(|| {
                Error::invalid(
                    &here,
                    format!("\"{name}\""),
                    "unknown GPU preset",
                    format!("use one of: {}", crate::gpus::names().join(", ")),
                )
            })?;
            let value = toml::Value::try_from(&spec)
                .map_err(|e| Error::Backend(format!("internal: cannot re-encode gpu: {e}")))?;
            table.insert(key, value);
            continue;
        }
        if let Some(toml::Value::Table(sub)) = table.get_mut(&key) {
            expand_shorthands(sub, &here)?;
        }
    }
    Ok(())
}

fn int_field(t: &toml::Table, key: &str, here: &str, default: i64) -> Result<u32, Error> {
    match t.get(key) {
        None => Ok(default as u32),
        Some(toml::Value::Integer(i)) if *i >= 1 && *i <= u32::MAX as i64 => Ok(*i as u32),
        Some(v) => Err(Error::invalid(
            format!("{here}.{key}"),
            v,
            "must be a positive integer",
            format!("set {key} to a whole number >= 1"),
        )),
    }
}

fn prefix_field(e: Error, prefix: &str) -> Error {
    e.map_field(|field| format!("{prefix}.{}", field.strip_prefix("cluster.").unwrap_or(&field)))
}

/// Deserialises a table into `T` with the field path in any error, prefixed by `prefix` (e.g. `workload`).
pub fn from_table<T: serde::de::DeserializeOwned>(table: &toml::Table, origin: &str, prefix: &str) -> Result<T, Error> {
    let text = toml::to_string(table).map_err(|e| Error::Backend(format!("internal: re-encoding {prefix}: {e}")))?;
    let de = toml::Deserializer::parse(&text).map_err(|e| toml_error(e, origin, prefix))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let full = if path == "." || path.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}.{path}")
        };
        toml_error(inner, origin, &full)
    })
}

impl Scenario {
    /// The typed, validated workload. Fails if `kind` is not `W::KIND`.
    pub fn workload<W: Workload>(&self) -> Result<W, Error> {
        if self.kind != W::KIND {
            return Err(Error::invalid(
                format!("{}: kind", self.origin),
                format!("\"{}\"", self.kind),
                format!("expected kind \"{}\" here", W::KIND),
                "use a scenario of the right kind",
            ));
        }
        let mut body = self.body.clone();
        expand_shorthands(&mut body, "workload").map_err(|e| in_origin(e, &self.origin))?;
        let w: W = from_table(&body, &self.origin, "workload")?;
        w.validate().map_err(|e| in_origin(e, &self.origin))?;
        Ok(w)
    }

    /// The body deserialised as an arbitrary type (for non-workload kinds such as `plan`), with shorthand expansion.
    pub fn body_as<T: serde::de::DeserializeOwned>(&self, prefix: &str) -> Result<T, Error> {
        let mut body = self.body.clone();
        expand_shorthands(&mut body, prefix).map_err(|e| in_origin(e, &self.origin))?;
        from_table(&body, &self.origin, prefix)
    }
}

fn in_origin(e: Error, origin: &str) -> Error {
    e.map_field(|field| format!("{origin}: {field}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use trainlab_core::workloads::{Collective, Gemm};

    #[test]
    fn every_embedded_scenario_parses() {
        for (name, text) in EMBEDDED {
            let s = parse(text, name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&s.name, name);
        }
    }

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let text = "name = \"x\"\nkind = \"gemm\"\n[workload]\nm = 4\nn = 4\nk = 4\nbogus = 1\n";
        let e = parse(text, "t.toml")
            .unwrap()
            .workload::<Gemm>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus") && e.contains("workload"), "{e}");
        let e = parse("name = \"x\"\nkind = \"gemm\"\nextra = 3\n[workload]\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("extra"), "{e}");
    }

    #[test]
    fn nested_errors_carry_the_path() {
        let text = "name = \"x\"\nkind = \"collective\"\n[workload]\nop = \"all_reduce\"\nbytes = 1024\nranks = 16\n\
                    cluster = { gpu = \"h100-sxm\", nodes = 2, gpus_per_node = 8, colour = 1 }\n";
        let e = parse(text, "t.toml")
            .unwrap()
            .workload::<Collective>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("workload.cluster.colour"), "{e}");
        let text = "name = \"x\"\nkind = \"collective\"\n[workload]\nop = \"all_reduce\"\nbytes = 1024\nranks = 16\n\
                    cluster = { gpu = \"h100-sxm\", nodes = -2, gpus_per_node = 8 }\n";
        let e = parse(text, "t.toml")
            .unwrap()
            .workload::<Collective>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("workload.cluster.nodes"), "{e}");
        let text = "name = \"x\"\nkind = \"collective\"\n[workload]\nop = \"all_reduce\"\nbytes = 1024\nranks = 64\n\
                    cluster = { gpu = \"h100-sxm\", nodes = 2, gpus_per_node = 8 }\n";
        let e = parse(text, "t.toml")
            .unwrap()
            .workload::<Collective>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("workload.ranks") && e.contains("16 GPUs"), "{e}");
    }

    #[test]
    fn shorthand_expands_to_a_full_cluster() {
        let text = "name = \"x\"\nkind = \"collective\"\n[workload]\nop = \"all_gather\"\nbytes = 1024\nranks = 16\n\
                    cluster = { gpu = \"a100-80gb\", nodes = 2, gpus_per_node = 8 }\n";
        let w: Collective = parse(text, "t.toml").unwrap().workload().unwrap();
        assert_eq!(w.cluster.gpus(), 16);
        assert_eq!(w.cluster.gpu.name, "a100-80gb");
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let e = load("does/not/exist.toml").unwrap_err();
        assert!(e.is_user_error());
        assert!(e.to_string().contains("does/not/exist.toml"));
    }
}
