//! Least privilege: when started as root, the agent switches to an unprivileged user once its
//! capture handles are open and it is connected to NATS.
//!
//! After the switch every thread runs as that user with no capability at all, except one: the
//! *opener* thread, which keeps `CAP_NET_RAW` (and nothing else) so that a daemon can still open
//! interfaces when the API asks it to start a capture. Every later live open goes through it
//! ([`open_live`]); the capture threads receive finished handles.
//!
//! Linux capabilities belong to threads, not processes. glibc's `setuid` changes the user of
//! every thread, and a thread whose "keep capabilities" flag is unset loses all its capabilities
//! in that change; only the opener sets the flag, so only it keeps any, and it then narrows its
//! own sets to `CAP_NET_RAW` (its bounding set too, before the switch, while it still may).
//!
//! Started by a non-root user (the systemd unit runs the agent as `ntpscope` with only
//! `CAP_NET_RAW`), none of this happens: there is nothing to drop.

use std::{
    sync::{OnceLock, mpsc},
    thread,
};

use caps::{CapSet, Capability, CapsHashSet};
use capture_proto::frame::LinkType;
use nix::unistd::{Gid, Uid, User};

use crate::{
    config::LiveConfig,
    source::{self, Handle, OpenError},
};

/// The user the agent switches to when none is configured: `ntpscope` (what the Debian package
/// creates) if it exists, else `nobody`.
pub const DEFAULT_USERS: [&str; 2] = ["ntpscope", "nobody"];

/// Why privileges could not be dropped. The agent refuses to run on, as root, after any of these.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// The configured user does not exist.
    #[error("cannot drop privileges: there is no user {0:?} (set --user to an existing unprivileged user, or --user root to stay root)")]
    NoSuchUser(String),
    /// A system call failed.
    #[error("cannot drop privileges to {user}: {step} failed: {detail}")]
    Failed {
        /// Target user.
        user: String,
        /// What was attempted.
        step: &'static str,
        /// The OS error.
        detail: String,
    },
}

/// Whom to run as after start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    /// The built-in choice ([`DEFAULT_USERS`]) when started as root.
    Default,
    /// This user (`root` keeps root).
    User(String),
}

/// What [`drop_privileges`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dropped {
    /// Not started as root: nothing to drop.
    NotRoot,
    /// `--user root`: stays root, as asked.
    StayedRoot,
    /// Switched to this user; the opener thread kept `CAP_NET_RAW` when `opener` is true.
    To {
        /// User name.
        user: String,
        /// Its uid.
        uid: u32,
        /// Its primary gid.
        gid: u32,
        /// Whether an opener thread keeps `CAP_NET_RAW` for later captures.
        opener: bool,
    },
}

/// Whether the process runs as root (effective uid 0).
pub fn is_root() -> bool {
    Uid::effective().is_root()
}

fn resolve(run_as: &RunAs) -> Result<Option<User>, PrivilegeError> {
    let lookup = |name: &str| User::from_name(name).ok().flatten();
    match run_as {
        RunAs::User(name) if name == "root" => Ok(None),
        RunAs::User(name) => lookup(name).map(Some).ok_or_else(|| PrivilegeError::NoSuchUser(name.clone())),
        RunAs::Default => DEFAULT_USERS.iter().find_map(|n| lookup(n)).map(Some).ok_or_else(|| PrivilegeError::NoSuchUser("nobody".into())),
    }
}

type OpenRequest = (String, LiveConfig, mpsc::SyncSender<Result<(Handle, LinkType), OpenError>>);

/// The opener thread's mailbox, set once privileges are dropped with an opener.
static OPENER: OnceLock<mpsc::Sender<OpenRequest>> = OnceLock::new();

/// Opens a live interface: through the opener thread once privileges are dropped, else here.
pub fn open_live(name: &str, cfg: &LiveConfig) -> Result<(Handle, LinkType), OpenError> {
    let Some(opener) = OPENER.get() else { return source::open_live_here(name, cfg) };
    let (tx, rx) = mpsc::sync_channel(1);
    let gone = || OpenError::Other { name: name.to_string(), detail: "the agent's opener thread has stopped".into() };
    opener.send((name.to_string(), cfg.clone(), tx)).map_err(|_| gone())?;
    rx.recv().map_err(|_| gone())?
}

/// Switches the whole process to the configured user (see the module docs). With `keep_opener`
/// (a daemon that may start captures later), one thread keeps `CAP_NET_RAW` for [`open_live`].
///
/// Call after the start-up sources are open and the bus is connected; reading files that only
/// root may read (keys, credentials) after this fails.
pub fn drop_privileges(run_as: &RunAs, keep_opener: bool) -> Result<Dropped, PrivilegeError> {
    if !is_root() {
        return Ok(Dropped::NotRoot);
    }
    let Some(user) = resolve(run_as)? else { return Ok(Dropped::StayedRoot) };
    let name = user.name.clone();
    let fail = |step: &'static str, detail: String| PrivilegeError::Failed { user: name.clone(), step, detail };
    // The opener prepares while still root: bounding set narrowed, keep-caps set, so the
    // process-wide user switch leaves it its permitted set and nothing more can be regained.
    let opener = if keep_opener { Some(spawn_opener().map_err(|e| fail("preparing the opener thread", e))?) } else { None };
    nix::unistd::setgroups(&[user.gid]).map_err(|e| fail("setgroups", e.to_string()))?;
    nix::unistd::setgid(user.gid).map_err(|e| fail("setgid", e.to_string()))?;
    nix::unistd::setuid(user.uid).map_err(|e| fail("setuid", e.to_string()))?;
    // As tcpdump does: prove the switch cannot be undone.
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() || Uid::current() != user.uid || Gid::current() != user.gid {
        return Err(fail("verifying the switch", "root could be regained".into()));
    }
    if let Some((requests, ready)) = opener {
        ready.send(()).map_err(|_| fail("narrowing the opener thread", "thread gone".into()))?;
        match ready_ack(&requests) {
            Ok(tx) => {
                let _ = OPENER.set(tx);
            }
            Err(e) => return Err(fail("narrowing the opener thread", e)),
        }
    }
    Ok(Dropped::To { user: user.name, uid: user.uid.as_raw(), gid: user.gid.as_raw(), opener: keep_opener })
}

/// The channels of an opener thread being set up: its request sender (handed over once it has
/// narrowed itself), and the signal that the user switch is done.
type OpenerSetup = (mpsc::Receiver<Result<mpsc::Sender<OpenRequest>, String>>, mpsc::Sender<()>);

fn ready_ack(rx: &mpsc::Receiver<Result<mpsc::Sender<OpenRequest>, String>>) -> Result<mpsc::Sender<OpenRequest>, String> {
    rx.recv().map_err(|_| "thread gone".to_string())?
}

fn spawn_opener() -> Result<OpenerSetup, String> {
    let (ack_tx, ack_rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (prepared_tx, prepared_rx) = mpsc::channel::<Result<(), String>>();
    thread::Builder::new()
        .name("pcap-opener".into())
        .spawn(move || {
            let only_net_raw: CapsHashSet = std::iter::once(Capability::CAP_NET_RAW).collect();
            let prepare = || -> Result<(), caps::errors::CapsError> {
                for cap in caps::all().into_iter().filter(|c| *c != Capability::CAP_NET_RAW) {
                    caps::drop(None, CapSet::Bounding, cap)?;
                }
                caps::securebits::set_keepcaps(true)
            };
            let prepared = prepare().map_err(|e| e.to_string());
            let ok = prepared.is_ok();
            let _ = prepared_tx.send(prepared);
            if !ok || ready_rx.recv().is_err() {
                return;
            }
            // Now running as the unprivileged user, with root's permitted set kept: narrow it.
            let narrowed = (|| -> Result<(), caps::errors::CapsError> {
                caps::set(None, CapSet::Inheritable, &CapsHashSet::new())?;
                caps::set(None, CapSet::Effective, &only_net_raw)?;
                caps::set(None, CapSet::Permitted, &only_net_raw)?;
                caps::securebits::set_keepcaps(false)
            })();
            if let Err(e) = narrowed {
                let _ = ack_tx.send(Err(e.to_string()));
                return;
            }
            let (req_tx, req_rx) = mpsc::channel::<OpenRequest>();
            if ack_tx.send(Ok(req_tx)).is_err() {
                return;
            }
            for (name, cfg, reply) in req_rx {
                let _ = reply.send(source::open_live_here(&name, &cfg));
            }
        })
        .map_err(|e| e.to_string())?;
    prepared_rx.recv().map_err(|_| "thread gone".to_string())??;
    Ok((ack_rx, ready_tx))
}
