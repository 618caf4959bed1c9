//! A small, strict CSV reader for run tables (`N,D,r,general_loss,domain_loss`, ...).
//!
//! Every cell must be a finite number; errors name the row (1-based, header = row 1) and the column. Quoted fields,
//! blank lines and `#` comment lines are accepted; nothing else is guessed.
use trainlab_core::{Error, Result};

/// A numeric table with named columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Header names as written.
    pub columns: Vec<String>,
    /// Rows, one value per column.
    pub rows: Vec<Vec<f64>>,
    /// Line number (1-based) of each row in the source, for error messages.
    pub lines: Vec<usize>,
    /// Where the table came from (a path), for error messages.
    pub source: String,
}

/// The fields of one CSV line, trimmed (RFC 4180 quoting: commas inside double quotes kept, the enclosing quotes
/// dropped, and a doubled quote inside a quoted field read as one quote).
pub fn split_line(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().map(|s| s.trim().to_string()).collect()
}

impl Table {
    /// Parses CSV text. `source` names the file in error messages.
    pub fn parse(text: &str, source: &str) -> Result<Table> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        let Some((_, header)) = lines.next() else {
            return Err(Error::invalid(
                source,
                "(empty)",
                "no header line",
                "start the file with a header such as `N,D,r,loss`",
            ));
        };
        let columns = split_line(header.trim_start_matches('\u{feff}'));
        for (j, c) in columns.iter().enumerate() {
            if c.is_empty() {
                return Err(Error::invalid(
                    format!("{source}: header column {}", j + 1),
                    "(empty)",
                    "column without a name",
                    "name every column",
                ));
            }
            if columns[..j].iter().any(|p| p.eq_ignore_ascii_case(c)) {
                return Err(Error::invalid(
                    format!("{source}: header"),
                    c,
                    "duplicate column",
                    "give each column a distinct name",
                ));
            }
        }
        let mut rows = Vec::new();
        let mut line_nos = Vec::new();
        for (i, line) in lines {
            let cells = split_line(line);
            if cells.len() != columns.len() {
                return Err(Error::invalid(
                    format!("{source}: line {}", i + 1),
                    line,
                    format!("{} fields, header has {}", cells.len(), columns.len()),
                    "give every row one value per column",
                ));
            }
            let mut row = Vec::with_capacity(cells.len());
            for (cell, col) in cells.iter().zip(&columns) {
                let v: f64 = cell.parse().map_err(|_| {
                    Error::invalid(
                        format!("{source}: line {}, column {col}", i + 1),
                        format!("{cell:?}"),
                        "not a number",
                        "write a plain decimal or scientific number such as 1.5e9",
                    )
                })?;
                if !v.is_finite() {
                    return Err(Error::invalid(
                        format!("{source}: line {}, column {col}", i + 1),
                        cell,
                        "NaN or infinite",
                        "remove the row or give a finite value",
                    ));
                }
                row.push(v);
            }
            rows.push(row);
            line_nos.push(i + 1);
        }
        if rows.is_empty() {
            return Err(Error::invalid(
                source,
                "(header only)",
                "no data rows",
                "add rows below the header",
            ));
        }
        Ok(Table {
            columns,
            rows,
            lines: line_nos,
            source: source.to_string(),
        })
    }

    /// Reads and parses a file.
    pub fn read(path: &std::path::Path) -> Result<Table> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Table::parse(&text, &path.display().to_string())
    }

    /// Index of a column (case-insensitive), or an error listing the columns present.
    pub fn index(&self, name: &str) -> Result<usize> {
        self.columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                Error::invalid(
                    format!("{}: columns", self.source),
                    self.columns.join(","),
                    format!("missing column `{name}`"),
                    format!("add a `{name}` column"),
                )
            })
    }

    /// True when a column exists.
    pub fn has(&self, name: &str) -> bool {
        self.columns.iter().any(|c| c.eq_ignore_ascii_case(name))
    }

    /// The values of a column, checked to be > 0 (`positive`) or in `[0, 1]` (`unit`).
    pub fn column_checked(&self, name: &str, check: ColumnCheck) -> Result<Vec<f64>> {
        let j = self.index(name)?;
        let mut out = Vec::with_capacity(self.rows.len());
        for (row, line) in self.rows.iter().zip(&self.lines) {
            let v = row[j];
            let (ok, why) = match check {
                ColumnCheck::Positive => (v > 0.0, "must be > 0"),
                ColumnCheck::Unit => ((0.0..=1.0).contains(&v), "must lie in [0, 1]"),
                ColumnCheck::NonNegative => (v >= 0.0, "must be >= 0"),
                ColumnCheck::Any => (true, ""),
            };
            if !ok {
                return Err(Error::invalid(
                    format!("{}: line {line}, column {}", self.source, self.columns[j]),
                    v,
                    why,
                    "correct or remove the row",
                ));
            }
            out.push(v);
        }
        Ok(out)
    }
}

/// Builds the dataset a law needs from a table: the law's input columns (a `UnitInterval` input is the ratio column
/// `r`; when `flip_ratio` is true it becomes `1 − r`, e.g. the general share for the general-loss law) and the loss
/// column `loss_col`. Errors name the file, line and column.
pub fn dataset(
    table: &Table,
    law: &dyn crate::fit::Law,
    loss_col: &str,
    flip_ratio: bool,
) -> Result<crate::fit::Dataset> {
    use crate::fit::InputDomain;
    let mut cols = Vec::new();
    for spec in law.inputs() {
        let check = match spec.domain {
            InputDomain::Positive => ColumnCheck::Positive,
            InputDomain::UnitInterval => ColumnCheck::Unit,
            InputDomain::NonNegative => ColumnCheck::NonNegative,
        };
        let mut v = table.column_checked(&spec.name, check)?;
        if flip_ratio && spec.domain == InputDomain::UnitInterval {
            v.iter_mut().for_each(|r| *r = 1.0 - *r);
        }
        cols.push(v);
    }
    let y = table.column_checked(loss_col, ColumnCheck::Positive)?;
    let x = (0..y.len()).map(|i| cols.iter().map(|c| c[i]).collect()).collect();
    crate::fit::Dataset::new(law.inputs().iter().map(|s| s.name.clone()).collect(), x, y)
}

/// What a column's values must satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnCheck {
    /// Strictly positive.
    Positive,
    /// In `[0, 1]`.
    Unit,
    /// Zero or more.
    NonNegative,
    /// Any finite value.
    Any,
}

/// Writes rows as CSV text.
pub fn write(columns: &[&str], rows: &[Vec<f64>]) -> String {
    let mut s = columns.join(",");
    s.push('\n');
    for r in rows {
        let cells: Vec<String> = r.iter().map(|v| format!("{v}")).collect();
        s.push_str(&cells.join(","));
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_line_follows_rfc_4180_quoting() {
        assert_eq!(split_line("a, b ,c"), ["a", "b", "c"]);
        assert_eq!(split_line("\"x, y\",2"), ["x, y", "2"]);
        // a doubled quote inside a quoted field is one quote (the report writers escape quotes this way)
        assert_eq!(split_line("\"policy = \"\"lru\"\"\",3"), ["policy = \"lru\"", "3"]);
        assert_eq!(split_line("\"\""), [""]);
        assert_eq!(split_line(""), [""]);
    }

    #[test]
    fn parses_and_reports_row_and_column() {
        let t = Table::parse("N,D,loss\n1e6,2e9,3.1\n# comment\n2e6,\"4e9\",2.9\n", "x.csv").unwrap();
        assert_eq!(t.rows.len(), 2);
        assert_eq!(t.rows[1], vec![2e6, 4e9, 2.9]);
        assert_eq!(t.lines, vec![2, 4]);
        let e = Table::parse("N,D,loss\n1,2,abc\n", "x.csv").unwrap_err().to_string();
        assert!(
            e.contains("line 2, column loss = `\"abc\"`") && e.contains("not a number") && !e.contains("`loss`"),
            "{e}"
        );
        let e = Table::parse("N,D,loss\n1,2,NaN\n", "x.csv").unwrap_err().to_string();
        assert!(e.contains("NaN"), "{e}");
        let e = Table::parse("N,D,loss\n1,-2,3\n", "x.csv")
            .unwrap()
            .column_checked("D", ColumnCheck::Positive)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("must be > 0"), "{e}");
        let e = t.index("r").unwrap_err().to_string();
        assert!(e.contains("missing column `r`"), "{e}");
        assert!(Table::parse("N,D\n1,2,3\n", "x.csv").is_err());
        assert!(Table::parse("", "x.csv").is_err());
    }
}
