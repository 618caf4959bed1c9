//! The `trainlab` command-line interface.
mod cmd;
mod workloads;

fn main() {}
