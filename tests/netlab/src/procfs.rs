//! What `/proc` says about a process the tests started: the user and capabilities of each of its
//! threads (capabilities belong to threads on Linux, so a process-level look would miss one).

/// One thread's credentials, from `/proc/PID/task/TID/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadCreds {
    /// Thread name (`comm`).
    pub name: String,
    /// Real, effective, saved and filesystem uids.
    pub uids: Vec<u32>,
    /// Real, effective, saved and filesystem gids.
    pub gids: Vec<u32>,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Effective capability mask.
    pub cap_eff: u64,
    /// Permitted capability mask.
    pub cap_prm: u64,
}

/// `CAP_NET_RAW` as a capability mask bit.
pub const CAP_NET_RAW: u64 = 1 << 13;

/// Credentials of every thread of `pid`.
pub fn thread_creds(pid: u32) -> std::io::Result<Vec<ThreadCreds>> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = task?.path();
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else { continue }; // thread ended
        let field = |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_default().trim().to_string();
        let ids = |key: &str| field(key).split_whitespace().filter_map(|v| v.parse().ok()).collect::<Vec<u32>>();
        let mask = |key: &str| u64::from_str_radix(&field(key), 16).unwrap_or(u64::MAX);
        out.push(ThreadCreds {
            name: field("Name:"),
            uids: ids("Uid:"),
            gids: ids("Gid:"),
            groups: ids("Groups:"),
            cap_eff: mask("CapEff:"),
            cap_prm: mask("CapPrm:"),
        });
    }
    Ok(out)
}
