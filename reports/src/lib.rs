//! trainlab-reports: Records -> Polars DataFrames -> Parquet/CSV; plotters charts; the HTML report.
#![warn(missing_docs)]
