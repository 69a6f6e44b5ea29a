//! Benchmark drivers of the `tandem bench-*` commands (see `bench/*.sh` and BENCHMARKS.md):
//! part of the binary, not of the library a deployment links.

pub mod billing;
pub mod groups;
pub mod ingest;
pub mod reconcile;
pub mod scaleout;
pub mod seed;
pub mod sla;

/// The JSON line of one timed phase.
pub fn phase_line(
    phase: impl std::fmt::Debug,
    started: std::time::Instant,
    figures: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "phase": format!("{phase:?}").to_lowercase(),
        "seconds": started.elapsed().as_secs_f64(),
        "peakRssMiB": peak_rss_mib(),
        "figures": figures,
    })
}

/// Peak resident set size of this process, in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
