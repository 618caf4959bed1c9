//! trainlab-reports: Records -> Polars DataFrames -> Parquet/CSV; plotters charts; the HTML report.
//!
//! This is the only crate of the workspace that knows `polars` and `plotters`, so the rest compiles and tests fast.
//!
//! * [`records_frame`], [`write_records`], [`read_records_parquet`], [`read_records_csv`], [`merge_parquet`]: the
//!   uniform [`Record`](trainlab_core::Record) rows as a typed table, written as Parquet (zstd) and CSV side by side.
//!   Output bytes depend only on the input (no timestamps, single-threaded column encoding), so a re-run of the same
//!   scenario with the same seed produces byte-identical files.
//! * [`write_table`] with [`TableColumn`]: arbitrary tables (e.g. a configuration search) with numeric, text and
//!   boolean columns.
//! * [`render_chart`], [`chart_svg_string`] with [`ChartSpec`]/[`Series`]: line, scatter and bar charts with linear or
//!   logarithmic axes, a legend and a distinct colour per series, as PNG (with an embedded DejaVu Sans font, so no
//!   system fonts are needed) or SVG.
//! * [`HtmlReport`] and [`markdown_table`]: a single self-contained HTML file (inline CSS and SVG, no scripts) and
//!   Markdown tables for terminals and READMEs.
#![warn(missing_docs)]

mod chart;
mod error;
mod format;
mod html;
mod table;

pub use chart::{ChartKind, ChartSpec, Series, chart_svg_string, render_chart, series_from_records};
pub use error::{ReportError, write_atomic};
pub use format::{format_thousands, format_value, markdown_table};
pub use html::{HtmlReport, escape_html, record_rows, records_markdown};
pub use table::{
    RECORD_COLUMNS, TableColumn, merge_parquet, read_records_csv, read_records_parquet, records_frame,
    records_from_frame, sort_records, table_frame, write_frame, write_records, write_table,
};

/// Re-export of the `polars` `DataFrame` and `Column` types this crate's API returns.
pub use polars::prelude::{Column, DataFrame};
