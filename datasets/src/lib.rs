//! trainlab-datasets: hardware presets with sources, published tables, scenario loading.
#![warn(missing_docs)]
