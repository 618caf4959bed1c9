//! The error type shared by library crates. Messages name the field, the offending value and the fix.
use thiserror::Error;

/// Result alias used across trainlab's library crates.
pub type Result<T> = std::result::Result<T, Error>;

/// Errors a backend, a loader or a validator can report. Bad input is always [`Error::Invalid`] with a field path.
#[derive(Debug, Error)]
pub enum Error {
    /// A value the user supplied is unusable. Displayed as ``invalid FIELD = `VALUE`: REASON (fix: FIX)``: the field
    /// path plain, the value in backticks (so quotes never nest; see [`quoted`]).
    #[error("invalid {field} = {}: {reason} (fix: {fix})", quoted(value))]
    Invalid {
        /// Dotted path of the field, e.g. `workload.cluster.nodes` (plain text: no backticks).
        field: String,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
        /// How to fix it.
        fix: String,
    },
    /// The backend cannot answer this workload (e.g. no GPU present, or no model for this case).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A file could not be read or written. The cause is part of the message and not also returned by
    /// [`std::error::Error::source`], so a printer of the cause chain (`{:#}` of `anyhow`) shows it once.
    #[error("{context}: {cause}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying cause.
        cause: std::io::Error,
    },
    /// A failure inside a backend (a device error, a solver that did not converge...).
    #[error("{0}")]
    Backend(String),
    /// The run was interrupted (Ctrl-C); partial results may have been kept by the caller.
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    /// Builds an [`Error::Invalid`].
    pub fn invalid(
        field: impl Into<String>,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Error::Invalid {
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
            fix: fix.into(),
        }
    }

    /// Builds an [`Error::Io`] with a context string.
    pub fn io(context: impl Into<String>, cause: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            cause,
        }
    }

    /// Rewrites the field path of an [`Error::Invalid`] (e.g. to prefix it with where the value came from); other
    /// errors pass through unchanged.
    pub fn map_field(self, f: impl FnOnce(String) -> String) -> Self {
        match self {
            Error::Invalid {
                field,
                value,
                reason,
                fix,
            } => Error::Invalid {
                field: f(field),
                value,
                reason,
                fix,
            },
            other => other,
        }
    }

    /// True for errors caused by the user's input (the CLI maps these to exit code 2).
    pub fn is_user_error(&self) -> bool {
        matches!(self, Error::Invalid { .. } | Error::Io { .. })
    }
}

/// `value` in backticks, as error messages quote values: `` `x` ``, or with double backticks and spaces when the value
/// itself holds a backtick (Markdown's rule), so a quoted value never nests inside another quote.
pub fn quoted(value: &str) -> String {
    if value.contains('`') {
        format!("`` {value} ``")
    } else {
        format!("`{value}`")
    }
}

/// Validation helpers: each returns [`Error::Invalid`] naming `field`.
pub mod check {
    use super::Error;

    /// `value` must be finite and strictly positive.
    pub fn positive(field: &str, value: f64) -> Result<(), Error> {
        if value.is_finite() && value > 0.0 {
            Ok(())
        } else {
            Err(Error::invalid(
                field,
                value,
                "must be a finite number > 0",
                "give a positive value",
            ))
        }
    }

    /// `value` must be finite and >= 0.
    pub fn non_negative(field: &str, value: f64) -> Result<(), Error> {
        if value.is_finite() && value >= 0.0 {
            Ok(())
        } else {
            Err(Error::invalid(
                field,
                value,
                "must be a finite number >= 0",
                "give a non-negative value",
            ))
        }
    }

    /// `value` must be in `[lo, hi]`.
    pub fn in_range(field: &str, value: f64, lo: f64, hi: f64) -> Result<(), Error> {
        if value.is_finite() && value >= lo && value <= hi {
            Ok(())
        } else {
            Err(Error::invalid(
                field,
                value,
                format!("must lie in [{lo}, {hi}]"),
                format!("give a value between {lo} and {hi}"),
            ))
        }
    }

    /// Integer that must not exceed `max`; `why` says what the limit protects (shown in the reason).
    pub fn at_most(field: &str, value: u64, max: u64, why: &str) -> Result<(), Error> {
        if value <= max {
            Ok(())
        } else {
            Err(Error::invalid(
                field,
                value,
                format!("must be at most {max} ({why})"),
                format!("use a value of at most {max}"),
            ))
        }
    }

    /// `value` must be finite, > 0 and at most `max`; `why` says what the limit protects.
    pub fn positive_at_most(field: &str, value: f64, max: f64, why: &str) -> Result<(), Error> {
        positive(field, value)?;
        float_at_most(field, value, max, why)
    }

    fn float_at_most(field: &str, value: f64, max: f64, why: &str) -> Result<(), Error> {
        if value <= max {
            Ok(())
        } else {
            Err(Error::invalid(
                field,
                value,
                format!("must be at most {max:e} ({why})"),
                format!("use a value of at most {max:e}"),
            ))
        }
    }

    /// `value` must be finite, >= 0 and at most `max`; `why` says what the limit protects.
    pub fn non_negative_at_most(field: &str, value: f64, max: f64, why: &str) -> Result<(), Error> {
        non_negative(field, value)?;
        float_at_most(field, value, max, why)
    }

    /// Integer count that must be at least `min`.
    pub fn at_least(field: &str, value: u64, min: u64) -> Result<(), Error> {
        if value >= min {
            Ok(())
        } else {
            Err(Error::invalid(
                field,
                value,
                format!("must be at least {min}"),
                format!("set it to {min} or more"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_quotes_the_value_only() {
        let e = Error::invalid(
            "x.csv: line 11, column loss",
            "\"abc\"",
            "not a number",
            "write a number",
        );
        assert_eq!(
            e.to_string(),
            "invalid x.csv: line 11, column loss = `\"abc\"`: not a number (fix: write a number)"
        );
        // A value holding a backtick is fenced with double backticks, never nested.
        let e = Error::invalid("f", "a`b", "r", "x");
        assert!(e.to_string().contains("= `` a`b ``:"), "{e}");
    }

    #[test]
    fn io_shows_its_cause_once_and_not_as_a_source() {
        let e = Error::io(
            "reading x.csv",
            std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        );
        assert_eq!(e.to_string(), "reading x.csv: gone");
        assert!(std::error::Error::source(&e).is_none());
        assert!(e.is_user_error());
    }
}
