//! Helpers of the benchmarks that run release binaries as processes.

use std::path::{Path, PathBuf};

/// A release binary of the workspace, next to the running bench executable (`target/release`).
pub fn release_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("bench exe");
    exe.parent().and_then(Path::parent).map(|d| d.join(name)).expect("target/release")
}

/// Peak resident set (`VmHWM`) of a running process, MiB; NaN when it cannot be read. It counts
/// pages of memory-mapped files too.
pub fn peak_rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM:")
}

/// Current anonymous resident memory (`RssAnon`: heap and stacks, no file pages), MiB.
pub fn anon_rss_mib(pid: u32) -> f64 {
    status_mib(pid, "RssAnon:")
}

fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .map_or(f64::NAN, |kib| kib / 1024.0)
}
