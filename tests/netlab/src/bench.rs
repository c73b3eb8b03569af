//! Helpers of the benchmarks that run release binaries as processes.

use std::path::{Path, PathBuf};

/// A release binary of the workspace, next to the running bench executable (`target/release`).
pub fn release_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("bench exe");
    exe.parent().and_then(Path::parent).map(|d| d.join(name)).expect("target/release")
}

/// CPU time a running process has used so far, all its threads, user and system, seconds
/// (`/proc/<pid>/stat`, in the kernel's user-visible ticks of 1/100 s); NaN when it cannot be read.
/// The difference across a run measures the work done in it even when the machine's speed
/// swings from one run to the next, as it does on this VM (docs/performance.md).
pub fn cpu_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // The command name may hold spaces; the fields after it are counted from its `)`.
            let rest = &s[s.rfind(')')? + 1..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .map_or(f64::NAN, |ticks| ticks / 100.0)
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
