//! Benchmark drivers of the `tandem bench-*` commands (see `bench/*.sh` and BENCHMARKS.md):
//! part of the binary, not of the library a deployment links.

pub mod billing;
pub mod groups;
pub mod ingest;
pub mod reconcile;
pub mod scaleout;
pub mod seed;
pub mod sla;
