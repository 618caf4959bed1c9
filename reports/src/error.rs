//! The crate's error type.
use std::path::{Path, PathBuf};

/// Everything that can go wrong while writing or reading reports.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file or directory could not be created, written or read.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Polars failed to build, encode or decode a table; `path` is the file concerned, if any.
    #[error("table error{}: {source}", path.as_ref().map(|p| format!(" on {}", p.display())).unwrap_or_default())]
    Polars {
        /// The file concerned, if any.
        path: Option<PathBuf>,
        /// The underlying error.
        #[source]
        source: polars::error::PolarsError,
    },
    /// A file was read successfully but does not hold what was expected (missing column, null where a value is
    /// required, unknown enum name).
    #[error("unexpected content in {}: {reason}", path.display())]
    Schema {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The caller passed something unusable (ragged table, duplicate column name, empty file stem...).
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The offending argument or field.
        field: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// Plotting failed (backend error or font problem).
    #[error("chart error: {0}")]
    Chart(String),
}

impl ReportError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ReportError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn polars(path: Option<&std::path::Path>, source: polars::error::PolarsError) -> Self {
        ReportError::Polars {
            path: path.map(|p| p.to_path_buf()),
            source,
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ReportError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<ReportError> for trainlab_core::Error {
    fn from(e: ReportError) -> Self {
        match e {
            ReportError::Io { path, source } => trainlab_core::Error::io(path.display().to_string(), source),
            ReportError::Invalid { field, reason } => {
                trainlab_core::Error::invalid(field, "(as given)", reason, "pass well-formed report input")
            }
            other => trainlab_core::Error::Backend(other.to_string()),
        }
    }
}

/// The temporary name an output is first written under: a hidden file in the same folder with the same extension
/// (`.NAME.tmp-PID.EXT`), so that writers that pick a format from the extension still see it, and a rename onto the
/// final name (atomic within one file system) is the last step. An interrupted or failed write never leaves a half
/// file under the final name.
pub(crate) fn tmp_for(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|s| format!(".{}", s.to_string_lossy()))
        .unwrap_or_default();
    path.with_file_name(format!(".{stem}.tmp-{}{ext}", std::process::id()))
}

/// Renames a finished temporary file (see [`tmp_for`]) onto its final name; removes it if the rename fails.
pub(crate) fn commit(tmp: &Path, path: &Path) -> Result<(), ReportError> {
    std::fs::rename(tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(tmp);
        ReportError::io(path, e)
    })
}

/// Writes `bytes` to `path` atomically (a temporary file in the same folder, then a rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let tmp = tmp_for(path);
    if let Err(e) = std::fs::write(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(ReportError::io(path, e));
    }
    commit(&tmp, path)
}
