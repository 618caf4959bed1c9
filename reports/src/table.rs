//! Records and generic tables as Polars DataFrames, written to Parquet and CSV.
//!
//! Determinism: column encoding runs single-threaded, Parquet uses zstd with fixed settings and no key-value
//! metadata, and nothing time-dependent is written, so identical input gives identical bytes.
use std::cmp::Ordering;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use polars::prelude::*;
use trainlab_core::{Fidelity, Param, Record, Unit};

use crate::ReportError;
use crate::error::{commit, tmp_for};

/// The column names of a records table, in order. `fidelity` and `unit` are stored by their snake-case names
/// (`"analytical"`, `"flop_per_second"`), `ci_low`/`ci_high` may be null, `seed` is an unsigned 64-bit integer.
/// After them come the case parameters of a study, one column `param.<path>` each, sorted by path: Float64 when every
/// value of that parameter is a number, else String; null where a record has no such parameter.
pub const RECORD_COLUMNS: [&str; 11] = [
    "study", "workload", "case", "backend", "fidelity", "metric", "unit", "value", "ci_low", "ci_high", "seed",
];

/// One column of a generic table for [`write_table`].
#[derive(Debug, Clone, PartialEq)]
pub enum TableColumn {
    /// 64-bit floats (NaN allowed; `None` is null).
    Float(Vec<Option<f64>>),
    /// Signed integers.
    Int(Vec<Option<i64>>),
    /// Unsigned integers.
    UInt(Vec<Option<u64>>),
    /// Text.
    Text(Vec<Option<String>>),
    /// Booleans.
    Bool(Vec<Option<bool>>),
}

impl TableColumn {
    /// A float column without nulls.
    pub fn floats(v: impl IntoIterator<Item = f64>) -> Self {
        TableColumn::Float(v.into_iter().map(Some).collect())
    }
    /// A signed integer column without nulls.
    pub fn ints(v: impl IntoIterator<Item = i64>) -> Self {
        TableColumn::Int(v.into_iter().map(Some).collect())
    }
    /// An unsigned integer column without nulls.
    pub fn uints(v: impl IntoIterator<Item = u64>) -> Self {
        TableColumn::UInt(v.into_iter().map(Some).collect())
    }
    /// A text column without nulls.
    pub fn texts<S: Into<String>>(v: impl IntoIterator<Item = S>) -> Self {
        TableColumn::Text(v.into_iter().map(|s| Some(s.into())).collect())
    }
    /// A boolean column without nulls.
    pub fn bools(v: impl IntoIterator<Item = bool>) -> Self {
        TableColumn::Bool(v.into_iter().map(Some).collect())
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        match self {
            TableColumn::Float(v) => v.len(),
            TableColumn::Int(v) => v.len(),
            TableColumn::UInt(v) => v.len(),
            TableColumn::Text(v) => v.len(),
            TableColumn::Bool(v) => v.len(),
        }
    }

    /// True when the column has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn into_polars(self, name: &str) -> Column {
        let name = PlSmallStr::from(name);
        match self {
            TableColumn::Float(v) => Column::new(name, v),
            TableColumn::Int(v) => Column::new(name, v),
            TableColumn::UInt(v) => Column::new(name, v),
            TableColumn::Text(v) => Column::new(name, v),
            TableColumn::Bool(v) => Column::new(name, v),
        }
    }
}

fn enum_name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}

fn parse_enum<T: serde::de::DeserializeOwned>(s: &str, path: &Path, col: &str) -> Result<T, ReportError> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|e| ReportError::Schema {
        path: path.to_path_buf(),
        reason: format!("column `{col}`: {e}"),
    })
}

/// Builds the records table (columns [`RECORD_COLUMNS`], one row per record, in the given order).
pub fn records_frame(records: &[Record]) -> Result<DataFrame, ReportError> {
    let s = |f: fn(&Record) -> &str| records.iter().map(f).collect::<Vec<&str>>();
    let cols = vec![
        Column::new("study".into(), s(|r| &r.study)),
        Column::new("workload".into(), s(|r| &r.workload)),
        Column::new("case".into(), s(|r| &r.case)),
        Column::new("backend".into(), s(|r| &r.backend)),
        Column::new(
            "fidelity".into(),
            records.iter().map(|r| r.fidelity.as_str()).collect::<Vec<_>>(),
        ),
        Column::new("metric".into(), s(|r| &r.metric)),
        Column::new(
            "unit".into(),
            records.iter().map(|r| enum_name(&r.unit)).collect::<Vec<_>>(),
        ),
        Column::new("value".into(), records.iter().map(|r| r.value).collect::<Vec<f64>>()),
        Column::new(
            "ci_low".into(),
            records.iter().map(|r| r.ci_low).collect::<Vec<Option<f64>>>(),
        ),
        Column::new(
            "ci_high".into(),
            records.iter().map(|r| r.ci_high).collect::<Vec<Option<f64>>>(),
        ),
        Column::new("seed".into(), records.iter().map(|r| r.seed).collect::<Vec<u64>>()),
    ];
    let mut cols = cols;
    cols.extend(param_columns(records));
    DataFrame::new(records.len(), cols).map_err(|e| ReportError::polars(None, e))
}

/// Prefix of the case-parameter columns.
pub const PARAM_PREFIX: &str = "param.";

fn param_columns(records: &[Record]) -> Vec<Column> {
    let names: std::collections::BTreeSet<&str> = records
        .iter()
        .flat_map(|r| r.params.iter().map(|(k, _)| k.as_str()))
        .collect();
    names
        .into_iter()
        .map(|name| {
            fn get<'r>(r: &'r Record, name: &str) -> Option<&'r Param> {
                r.params.iter().find(|(k, _)| k == name).map(|(_, v)| v)
            }
            let col = PlSmallStr::from(format!("{PARAM_PREFIX}{name}"));
            let numeric = records.iter().all(|r| !matches!(get(r, name), Some(Param::Text(_))));
            if numeric {
                let v: Vec<Option<f64>> = records
                    .iter()
                    .map(|r| match get(r, name) {
                        Some(Param::Num(x)) => Some(*x),
                        _ => None,
                    })
                    .collect();
                Column::new(col, v)
            } else {
                let v: Vec<Option<String>> = records.iter().map(|r| get(r, name).map(|p| p.to_string())).collect();
                Column::new(col, v)
            }
        })
        .collect()
}

fn records_schema() -> Schema {
    let mut schema = Schema::default();
    for name in RECORD_COLUMNS {
        let dtype = match name {
            "value" | "ci_low" | "ci_high" => DataType::Float64,
            "seed" => DataType::UInt64,
            _ => DataType::String,
        };
        schema.with_column(name.into(), dtype);
    }
    schema
}

/// Converts a records table (as written by [`write_records`]) back to records. `path` names the source in errors.
pub fn records_from_frame(df: &DataFrame, path: &Path) -> Result<Vec<Record>, ReportError> {
    let schema_err = |reason: String| ReportError::Schema {
        path: path.to_path_buf(),
        reason,
    };
    let pe = |e: PolarsError| ReportError::polars(Some(path), e);
    let col = |name: &str| {
        df.column(name)
            .map_err(|_| schema_err(format!("missing column `{name}`")))
    };
    let cast = |name: &str, dt: &DataType| -> Result<Column, ReportError> {
        let c = col(name)?;
        if c.dtype() == dt {
            Ok(c.clone())
        } else {
            c.strict_cast(dt).map_err(pe)
        }
    };
    let text: Vec<Column> = ["study", "workload", "case", "backend", "fidelity", "metric", "unit"]
        .iter()
        .map(|n| cast(n, &DataType::String))
        .collect::<Result<_, _>>()?;
    let text: Vec<&StringChunked> = text.iter().map(|c| c.str().map_err(pe)).collect::<Result<_, _>>()?;
    let value = cast("value", &DataType::Float64)?;
    let ci_low = cast("ci_low", &DataType::Float64)?;
    let ci_high = cast("ci_high", &DataType::Float64)?;
    let seed = cast("seed", &DataType::UInt64)?;
    let (value, ci_low, ci_high, seed) = (
        value.f64().map_err(pe)?,
        ci_low.f64().map_err(pe)?,
        ci_high.f64().map_err(pe)?,
        seed.u64().map_err(pe)?,
    );
    let mut params: Vec<(String, Column)> = Vec::new();
    for c in df.columns() {
        if let Some(name) = c.name().as_str().strip_prefix(PARAM_PREFIX) {
            params.push((name.to_string(), c.clone()));
        }
    }
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        let mut row_params = Vec::new();
        for (name, c) in &params {
            let v = match c.dtype() {
                DataType::String => c.str().map_err(pe)?.get(i).map(|s| Param::Text(s.to_string())),
                DataType::Null => None,
                _ => {
                    let f = c.strict_cast(&DataType::Float64).map_err(pe)?;
                    f.f64().map_err(pe)?.get(i).map(Param::Num)
                }
            };
            if let Some(v) = v {
                row_params.push((name.clone(), v));
            }
        }
        // Text columns: a CSV empty field reads back as null; treat it as the empty string it was written from.
        let t = |k: usize| text[k].get(i).unwrap_or("").to_string();
        let fidelity: Fidelity = parse_enum(&t(4), path, "fidelity")?;
        let unit: Unit = parse_enum(&t(6), path, "unit")?;
        let value = value
            .get(i)
            .ok_or_else(|| schema_err(format!("row {i}: null `value`")))?;
        let seed = seed.get(i).ok_or_else(|| schema_err(format!("row {i}: null `seed`")))?;
        out.push(Record {
            study: t(0),
            workload: t(1),
            case: t(2),
            backend: t(3),
            fidelity,
            metric: t(5),
            unit,
            value,
            ci_low: ci_low.get(i),
            ci_high: ci_high.get(i),
            seed,
            params: row_params,
        });
    }
    Ok(out)
}

fn check_stem(stem: &str) -> Result<(), ReportError> {
    if stem.is_empty() || stem.contains(['/', '\\']) || stem == "." || stem == ".." {
        return Err(ReportError::invalid(
            "stem",
            format!("`{stem}` must be a non-empty file name without separators"),
        ));
    }
    Ok(())
}

fn create(path: &Path) -> Result<File, ReportError> {
    File::create(path).map_err(|e| ReportError::io(path, e))
}

/// Writes any DataFrame as `dir/stem.parquet` and `dir/stem.csv` (creating `dir`), deterministically.
/// Returns `(parquet_path, csv_path)`.
pub fn write_frame(df: &mut DataFrame, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), ReportError> {
    check_stem(stem)?;
    std::fs::create_dir_all(dir).map_err(|e| ReportError::io(dir, e))?;
    let pq = dir.join(format!("{stem}.parquet"));
    let csv = dir.join(format!("{stem}.csv"));
    // Each file is written under a temporary name and renamed when complete, so an interrupted run never leaves a
    // truncated table under the final name.
    let (pq_tmp, csv_tmp) = (tmp_for(&pq), tmp_for(&csv));
    let written = ParquetWriter::new(create(&pq_tmp)?)
        .with_compression(ParquetCompression::Zstd(None))
        .set_parallel(false)
        .finish(df)
        .map_err(|e| ReportError::polars(Some(&pq), e))
        .and_then(|_| {
            CsvWriter::new(create(&csv_tmp)?)
                .include_header(true)
                .n_threads(1)
                .finish(df)
                .map_err(|e| ReportError::polars(Some(&csv), e))
        });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&pq_tmp);
        let _ = std::fs::remove_file(&csv_tmp);
        return Err(e);
    }
    commit(&pq_tmp, &pq)?;
    commit(&csv_tmp, &csv)?;
    Ok((pq, csv))
}

/// Writes records (in the given order) as `dir/stem.parquet` and `dir/stem.csv`; see [`records_frame`] for the
/// columns. Returns `(parquet_path, csv_path)`. Identical input gives byte-identical files.
pub fn write_records(records: &[Record], dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), ReportError> {
    let mut df = records_frame(records)?;
    write_frame(&mut df, dir, stem)
}

/// Builds a DataFrame from named columns. All columns must have the same length and distinct, non-empty names.
pub fn table_frame(columns: Vec<(String, TableColumn)>) -> Result<DataFrame, ReportError> {
    let height = columns.first().map(|(_, c)| c.len()).unwrap_or(0);
    let mut seen = std::collections::BTreeSet::new();
    for (name, c) in &columns {
        if name.is_empty() {
            return Err(ReportError::invalid("columns", "a column name is empty"));
        }
        if !seen.insert(name.as_str()) {
            return Err(ReportError::invalid(format!("columns.{name}"), "duplicate column name"));
        }
        if c.len() != height {
            return Err(ReportError::invalid(
                format!("columns.{name}"),
                format!(
                    "has {} rows but the first column has {height}; all columns must be equally long",
                    c.len()
                ),
            ));
        }
    }
    let cols = columns.into_iter().map(|(n, c)| c.into_polars(&n)).collect();
    DataFrame::new(height, cols).map_err(|e| ReportError::polars(None, e))
}

/// Writes an arbitrary table (e.g. a configuration search: numeric and text columns) as `dir/stem.parquet` and
/// `dir/stem.csv`. Returns `(parquet_path, csv_path)`.
pub fn write_table(
    columns: Vec<(String, TableColumn)>,
    dir: &Path,
    stem: &str,
) -> Result<(PathBuf, PathBuf), ReportError> {
    let mut df = table_frame(columns)?;
    write_frame(&mut df, dir, stem)
}

/// Reads a records Parquet file written by [`write_records`], in file order.
pub fn read_records_parquet(path: &Path) -> Result<Vec<Record>, ReportError> {
    let f = File::open(path).map_err(|e| ReportError::io(path, e))?;
    let df = ParquetReader::new(f)
        .finish()
        .map_err(|e| ReportError::polars(Some(path), e))?;
    records_from_frame(&df, path)
}

/// Reads a records CSV file written by [`write_records`], in file order. The schema is fixed (not inferred), so
/// all-null CI columns and large seeds read back exactly.
///
/// Parameter columns are read as text; a value that parses as a number comes back as [`Param::Num`] (CSV keeps no
/// types: read the Parquet file where a numeric-looking text parameter must stay text).
pub fn read_records_csv(path: &Path) -> Result<Vec<Record>, ReportError> {
    use std::io::BufRead;
    let f = File::open(path).map_err(|e| ReportError::io(path, e))?;
    let mut header = String::new();
    std::io::BufReader::new(f)
        .read_line(&mut header)
        .map_err(|e| ReportError::io(path, e))?;
    let mut schema = records_schema();
    for name in header.trim_end().split(',') {
        if name.starts_with(PARAM_PREFIX) {
            schema.with_column(name.into(), DataType::String);
        }
    }
    let df = CsvReadOptions::default()
        .with_has_header(true)
        .with_schema(Some(Arc::new(schema)))
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .and_then(|r| r.finish())
        .map_err(|e| ReportError::polars(Some(path), e))?;
    let mut records = records_from_frame(&df, path)?;
    for r in &mut records {
        for (_, v) in &mut r.params {
            if let Param::Text(s) = v
                && let Ok(x) = s.parse::<f64>()
            {
                *v = Param::Num(x);
            }
        }
    }
    Ok(records)
}

fn cmp_opt(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.total_cmp(&b),
        (a, b) => a.is_some().cmp(&b.is_some()),
    }
}

/// Sorts records into the canonical order used by [`merge_parquet`]: by `study`, `workload`, `case`, `backend`,
/// `fidelity` (analytical < simulated < measured), `metric`, `seed` (strings compared bytewise), then by `unit` name,
/// `value`, `ci_low`, `ci_high` (floats by IEEE total order, null first) so that the order is total and
/// independent of the input order.
pub fn sort_records(records: &mut [Record]) {
    records.sort_by(|a, b| {
        a.study
            .cmp(&b.study)
            .then_with(|| a.workload.cmp(&b.workload))
            .then_with(|| a.case.cmp(&b.case))
            .then_with(|| a.backend.cmp(&b.backend))
            .then_with(|| a.fidelity.cmp(&b.fidelity))
            .then_with(|| a.metric.cmp(&b.metric))
            .then_with(|| a.seed.cmp(&b.seed))
            .then_with(|| a.unit.symbol().cmp(b.unit.symbol()))
            .then_with(|| a.value.total_cmp(&b.value))
            .then_with(|| cmp_opt(a.ci_low, b.ci_low))
            .then_with(|| cmp_opt(a.ci_high, b.ci_high))
    });
}

/// Merges Parquet record files (e.g. the shards of a Slurm array, each run on a disjoint subset of cases) into one
/// list in the canonical order of [`sort_records`]. The result does not depend on the order of `paths` or of rows
/// within a file, so it equals `sort_records` applied to the records of a single, unsharded run. Records are not
/// de-duplicated: shards must be disjoint. An empty `paths` is an error (most likely a wrong glob).
pub fn merge_parquet(paths: &[PathBuf]) -> Result<Vec<Record>, ReportError> {
    if paths.is_empty() {
        return Err(ReportError::invalid(
            "paths",
            "no Parquet files to merge; check the shard file pattern",
        ));
    }
    let mut all = Vec::new();
    for p in paths {
        all.extend(read_records_parquet(p)?);
    }
    sort_records(&mut all);
    Ok(all)
}
