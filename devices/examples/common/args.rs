//! The benchmarks' command line: `[seconds per run] [case filter]`.

/// Seconds per run (default 0.5) and the optional filter: only cases whose
/// label contains it run (handy under a profiler).
pub fn parse() -> (f64, Option<String>) {
    let secs = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.5);
    (secs, std::env::args().nth(2))
}
