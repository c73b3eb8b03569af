//! libpcap sources: opening interfaces and files with clear errors, and the capture loop.
//!
//! Each source runs on its own OS thread (a file reads flat out; a live interface waits for
//! packets in `poll`) and owns its [`Analyzer`], so
//! parsing and pairing happen right next to the packet buffer without a per-packet hand-off.
//! Records leave in batches through a bounded channel. A file source waits when the channel is
//! full (nothing is lost, the file just reads slower); a live source never waits: it drops the
//! batch and counts it, so the kernel buffer keeps draining.

use std::{
    io::IsTerminal,
    os::fd::{AsFd, OwnedFd},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use capture_proto::{Analyzer, AnalyzerConfig, frame::LinkType, stats::Counters};
use ntp_wire::Record;
use pcap::{Activated, Capture, Precision};
use tokio::sync::mpsc;

use crate::{
    clock,
    config::{LiveConfig, SourceSpec},
};

/// How often an idle live capture wakes up to expire requests and check for shutdown.
const TICK: Duration = Duration::from_millis(200);

/// Records from one source, handed to the output.
#[derive(Debug)]
pub struct Batch {
    /// Interface name recorded for the source.
    pub interface: Arc<str>,
    /// The records, in capture order.
    pub records: Vec<Record>,
}

/// Kernel-side packet counters of a live capture (cumulative, from `pcap_stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PcapStats {
    /// Packets the filter accepted.
    pub received: u64,
    /// Packets dropped because the capture buffer was full (`ps_drop`).
    pub dropped: u64,
    /// Packets dropped by the interface or driver (`ps_ifdrop`).
    pub if_dropped: u64,
}

/// State of a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceState {
    /// Capturing.
    Running,
    /// Stopped on request or at the end of the file.
    Finished,
    /// Stopped by an error.
    Failed(String),
}

/// What a source has done so far; shared with whoever reports status.
#[derive(Debug, Clone)]
pub struct SourceStatus {
    /// Interface name recorded for this source.
    pub interface: String,
    /// `live` or `file`.
    pub kind: &'static str,
    /// Link type in use.
    pub link: Option<LinkType>,
    /// Core counters.
    pub counters: Counters,
    /// Kernel counters (live only).
    pub pcap: PcapStats,
    /// Records dropped because the output could not keep up (live only).
    pub records_dropped: u64,
    /// Bytes of memory held by the pairing table.
    pub pairing_bytes: u64,
    /// Current state.
    pub state: SourceState,
}

/// Why a source could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The interface does not exist.
    #[error("interface {name:?} not found (available: {available})")]
    NoSuchInterface {
        /// Requested name.
        name: String,
        /// Interfaces libpcap can see.
        available: String,
    },
    /// The process may not capture.
    #[error(
        "no permission to capture on {name:?}: live capture needs CAP_NET_RAW (run as root, or \
         `setcap cap_net_raw,cap_net_admin=eip` on the binary): {detail}"
    )]
    Permission {
        /// Interface.
        name: String,
        /// libpcap's message.
        detail: String,
    },
    /// The file cannot be read.
    #[error("cannot read {path}: {detail}")]
    Unreadable {
        /// File.
        path: String,
        /// The OS error.
        detail: String,
    },
    /// The file is not pcap or pcapng.
    #[error("{path} is not a pcap or pcapng capture: {detail}")]
    NotACapture {
        /// File.
        path: String,
        /// libpcap's message.
        detail: String,
    },
    /// The link type cannot be decoded.
    #[error("{name}: link type {dlt} is not supported (Ethernet, Linux SLL/SLL2, raw IP, loopback are)")]
    UnsupportedLink {
        /// Source.
        name: String,
        /// The DLT number.
        dlt: i32,
    },
    /// The BPF filter does not compile.
    #[error("BPF filter {expr:?} rejected on {name}: {detail}")]
    Filter {
        /// Interface.
        name: String,
        /// Expression.
        expr: String,
        /// libpcap's message.
        detail: String,
    },
    /// Anything else libpcap reports.
    #[error("cannot open {name}: {detail}")]
    Other {
        /// Source.
        name: String,
        /// libpcap's message.
        detail: String,
    },
}

/// An opened libpcap handle.
pub enum Handle {
    /// A live interface.
    Live(Capture<pcap::Active>),
    /// A capture file and its size in bytes.
    File(Capture<pcap::Offline>, u64),
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Live(_) => f.write_str("Handle::Live"),
            Self::File(_, len) => write!(f, "Handle::File({len} bytes)"),
        }
    }
}

/// Opens a source, mapping libpcap's errors to ones an operator can act on. Live interfaces are
/// opened by the opener thread once the agent has dropped root ([`crate::privileges`]).
pub fn open(spec: &SourceSpec, live: &LiveConfig) -> Result<(Handle, LinkType), OpenError> {
    match spec {
        SourceSpec::Live { interface } => crate::privileges::open_live(interface, live),
        SourceSpec::File { path, .. } => open_file(path),
    }
}

/// Opens a live interface on the calling thread, which needs `CAP_NET_RAW`.
pub(crate) fn open_live_here(name: &str, cfg: &LiveConfig) -> Result<(Handle, LinkType), OpenError> {
    let other = |e: pcap::Error| OpenError::Other { name: name.to_string(), detail: e.to_string() };
    let inactive = pcap::Capture::from_device(name).map_err(other)?;
    let cap = inactive
        .promisc(cfg.promisc)
        .snaplen(cfg.snaplen)
        .buffer_size(cfg.buffer_bytes)
        .immediate_mode(true)
        .timeout(100)
        .precision(Precision::Nano)
        .open();
    let mut cap = match cap {
        Ok(c) => c,
        Err(e) => {
            let detail = e.to_string();
            let lower = detail.to_lowercase();
            if lower.contains("permission") || lower.contains("not permitted") {
                return Err(OpenError::Permission { name: name.to_string(), detail });
            }
            if lower.contains("no such device") || lower.contains("doesn't exist") {
                let available =
                    pcap::Device::list().map(|l| l.into_iter().map(|d| d.name).collect::<Vec<_>>().join(", ")).unwrap_or_default();
                return Err(OpenError::NoSuchInterface { name: name.to_string(), available });
            }
            return Err(OpenError::Other { name: name.to_string(), detail });
        }
    };
    let dlt = cap.get_datalink().0;
    let link = LinkType::from_dlt(dlt).ok_or(OpenError::UnsupportedLink { name: name.to_string(), dlt })?;
    cap.filter(&cfg.bpf, true).map_err(|e| OpenError::Filter { name: name.to_string(), expr: cfg.bpf.clone(), detail: e.to_string() })?;
    Ok((Handle::Live(cap), link))
}

fn open_file(path: &Path) -> Result<(Handle, LinkType), OpenError> {
    let shown = path.display().to_string();
    // Ask the OS first: libpcap's messages for missing or unreadable files are vague.
    let meta = std::fs::metadata(path).map_err(|e| OpenError::Unreadable { path: shown.clone(), detail: e.to_string() })?;
    if meta.is_dir() {
        return Err(OpenError::Unreadable { path: shown, detail: "is a directory".into() });
    }
    std::fs::File::open(path).map_err(|e| OpenError::Unreadable { path: shown.clone(), detail: e.to_string() })?;
    let cap = Capture::from_file_with_precision(path, Precision::Nano)
        .map_err(|e| OpenError::NotACapture { path: shown.clone(), detail: e.to_string() })?;
    let dlt = cap.get_datalink().0;
    let link = LinkType::from_dlt(dlt).ok_or(OpenError::UnsupportedLink { name: shown, dlt })?;
    Ok((Handle::File(cap, meta.len()), link))
}

/// Everything a capture thread needs besides its handle.
#[derive(Debug)]
pub struct LoopContext {
    /// Interface name recorded for this source.
    pub interface: Arc<str>,
    /// Core configuration.
    pub analyzer: AnalyzerConfig,
    /// Set to stop this source.
    pub stop: Arc<AtomicBool>,
    /// Set to stop every source (agent shutdown).
    pub shutdown: Arc<AtomicBool>,
    /// Where batches go.
    pub tx: mpsc::Sender<Batch>,
    /// Records per batch.
    pub batch_records: usize,
    /// Longest a partial batch is held.
    pub batch_interval: Duration,
    /// Report pending requests as unanswered at the end.
    pub flush_pending: bool,
    /// Shared status.
    pub status: Arc<Mutex<SourceStatus>>,
    /// Draw a progress bar for big files on a terminal.
    pub progress: bool,
    /// Files: replay at the capture's own pace times this factor (`None`: flat out).
    pub replay_speed: Option<f64>,
}

impl LoopContext {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.shutdown.load(Ordering::Relaxed)
    }
}

/// Runs a source until it ends, fails, or `stop` is set.
pub fn run(handle: Handle, link: LinkType, ctx: &LoopContext) {
    let res = match handle {
        Handle::Live(cap) => {
            // libpcap 1.10 on Linux keeps polling inside a blocking pcap_next_ex until a packet
            // arrives: its read timeout never returns control. Waking it with pcap_breakloop
            // loses a packet now and then: libpcap's ring readers check for a break *after*
            // handing a packet over, so a break that lands while pcap_next_ex reads one makes it
            // return PCAP_ERROR_BREAK and the packet is counted nowhere (once in CI, the live test
            // with real chrony traffic missed a response on an idle link).
            // So the handle reads without blocking, and when its ring is empty the loop waits on
            // its descriptor, a tick at most: nothing ever interrupts a read, and an idle link
            // still expires requests and sees the stop flag every tick. The loop waits on a copy
            // of the descriptor (each read borrows the handle).
            let fd = cap.as_fd().try_clone_to_owned();
            match (fd, cap.setnonblock()) {
                (Ok(fd), Ok(cap)) => capture_loop(cap, link, ctx, Some(&fd), None),
                (Err(e), _) => Err(format!("cannot copy the capture's descriptor: {e}")),
                (_, Err(e)) => Err(format!("cannot read the capture without blocking: {e}")),
            }
        }
        Handle::File(cap, len) => {
            let bar = (ctx.progress && len > 64 << 20 && std::io::stderr().is_terminal()).then(|| {
                let bar = indicatif::ProgressBar::new(len);
                if let Ok(style) = indicatif::ProgressStyle::with_template("{bytes}/{total_bytes} {wide_bar} {bytes_per_sec} eta {eta}") {
                    bar.set_style(style);
                }
                bar
            });
            let res = capture_loop(cap, link, ctx, None, bar.as_ref());
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            res
        }
    };
    let mut st = ctx.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    st.state = match res {
        Ok(()) => SourceState::Finished,
        Err(e) => SourceState::Failed(e),
    };
}

/// Waits until `fd` has a packet to read, `timeout` at most; whether it may have one (an
/// interrupted wait says yes: the next read tells). A failed wait sleeps out the timeout, so an
/// error that lasts cannot make the loop spin.
fn wait_readable(fd: &OwnedFd, timeout: Duration) -> bool {
    use nix::{
        errno::Errno,
        poll::{PollFd, PollFlags, PollTimeout, poll},
    };
    let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    match poll(&mut [PollFd::new(fd.as_fd(), PollFlags::POLLIN)], ms) {
        Ok(0) => false,
        Ok(_) | Err(Errno::EINTR) => true,
        Err(_) => {
            std::thread::sleep(timeout);
            false
        }
    }
}

fn capture_loop<T: Activated + ?Sized>(
    mut cap: Capture<T>,
    link: LinkType,
    ctx: &LoopContext,
    fd: Option<&OwnedFd>,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<(), String> {
    // Live sources have a descriptor to wait on (their handle does not block); files have none.
    let live = fd.is_some();
    let mut analyzer = Analyzer::new(link, ctx.analyzer);
    let mut out: Vec<Record> = Vec::with_capacity(ctx.batch_records * 2);
    let mut last_send = clock::monotonic();
    let mut last_status = clock::monotonic();
    let mut n: u64 = 0;
    let mut bytes_read: u64 = 24;
    let mut dropped: u64 = 0;
    let mut pace = ctx.replay_speed.filter(|_| !live).map(Pace::new);
    let result = 'read: loop {
        match cap.next_packet() {
            Ok(pkt) => {
                let ts = pkt.header.ts;
                let time_ns = ts.tv_sec * 1_000_000_000 + ts.tv_usec;
                if let Some(pace) = pace.as_mut() {
                    while let Some(left) = pace.left(time_ns) {
                        if ctx.stopping() {
                            break 'read Ok(());
                        }
                        // Before a long wait, let the replay's time move on (requests unanswered by
                        // then are reported) and hand over what is in hand, as a live capture would.
                        analyzer.advance(pace.now_ns(), &mut out);
                        if !out.is_empty() && left >= ctx.batch_interval {
                            if !send(ctx, &mut out, live, &mut dropped) {
                                break 'read Ok(());
                            }
                            last_send = clock::monotonic();
                        }
                        // Short naps, so a stop request is seen within 100 ms even in a slow replay.
                        std::thread::sleep(left.min(Duration::from_millis(100)));
                    }
                }
                analyzer.handle_frame(time_ns, pkt.data, &mut out);
                n += 1;
                bytes_read += 16 + u64::from(pkt.header.caplen);
                if out.len() >= ctx.batch_records && !send(ctx, &mut out, live, &mut dropped) {
                    break Ok(());
                }
                // Files read flat out look at the clock and the stop flag every 4096 packets; a
                // paced file, like a live source, after every packet.
                if !live && pace.is_none() && !n.is_multiple_of(4096) {
                    continue;
                }
                if let Some(bar) = bar {
                    bar.set_position(bytes_read.min(bar.length().unwrap_or(u64::MAX)));
                }
            }
            Err(pcap::Error::TimeoutExpired | pcap::Error::NoMorePackets) if live => {
                // The ring is empty. Wait for the next packet, a tick at most; a link idle for
                // the whole tick lets time move on so unanswered requests are reported. Packets
                // stamped before `now - 0.5 s` have all been delivered in immediate mode.
                if let Some(fd) = fd
                    && !wait_readable(fd, TICK)
                {
                    analyzer.advance(clock::wall_ns() - 500_000_000, &mut out);
                }
            }
            Err(pcap::Error::NoMorePackets) => break Ok(()),
            Err(e) => break Err(format!("capture failed: {e}")),
        }
        if ctx.stopping() {
            break Ok(());
        }
        if !out.is_empty() && last_send.elapsed() >= ctx.batch_interval {
            if !send(ctx, &mut out, live, &mut dropped) {
                break Ok(());
            }
            last_send = clock::monotonic();
        }
        if last_status.elapsed() >= Duration::from_secs(1) {
            publish_status(ctx, &analyzer, &mut cap, live, dropped);
            last_status = clock::monotonic();
        }
    };
    if ctx.flush_pending {
        analyzer.flush(&mut out);
    }
    if !out.is_empty() {
        send(ctx, &mut out, live && !ctx.stopping(), &mut dropped);
    }
    publish_status(ctx, &analyzer, &mut cap, live, dropped);
    result
}

/// Replaying a file at its capture pace (times a factor): the instant the first packet was read
/// anchors the file's first timestamp, and each packet waits until its own time has come (one
/// look at the monotonic clock per packet, only when pacing). Packets stamped before the first
/// one are read on without waiting, and so is a packet due within [`PACE_SLACK`].
struct Pace {
    speed: f64,
    /// The first packet's capture time and the monotonic instant it was read.
    start: Option<(i64, std::time::Instant)>,
}

impl Pace {
    fn new(speed: f64) -> Self {
        Self { speed, start: None }
    }

    /// How long the packet captured at `time_ns` must still wait; `None` when it is due, or due
    /// within [`PACE_SLACK`].
    fn left(&mut self, time_ns: i64) -> Option<Duration> {
        let (t0, at) = *self.start.get_or_insert_with(|| (time_ns, clock::monotonic()));
        let offset_s = time_ns.saturating_sub(t0).max(0) as f64 / 1e9;
        let due = Duration::try_from_secs_f64(offset_s / self.speed).unwrap_or(Duration::MAX);
        due.checked_sub(at.elapsed()).filter(|d| *d >= PACE_SLACK)
    }

    /// The capture time the replay has reached: every packet stamped before it has been read
    /// (the one waiting is stamped later).
    fn now_ns(&self) -> i64 {
        self.start.map_or(i64::MIN, |(t0, at)| t0.saturating_add((at.elapsed().as_secs_f64() * self.speed * 1e9) as i64))
    }
}

/// How early a paced replay may read a packet. At 100 k sessions/s a packet is due every 5 µs,
/// and a nap that short costs a system call and a wake-up each (and lasts the kernel's timer
/// slack, 50 µs, anyway); reading what is due within a millisecond at once sleeps at most a
/// thousand times a second, as a live capture's buffer hands over packets in bursts.
const PACE_SLACK: Duration = Duration::from_millis(1);

/// Hands the batch over; returns false when the output has gone away.
fn send(ctx: &LoopContext, out: &mut Vec<Record>, live: bool, dropped: &mut u64) -> bool {
    let records = std::mem::replace(out, Vec::with_capacity(ctx.batch_records * 2));
    let batch = Batch { interface: ctx.interface.clone(), records };
    if live {
        match ctx.tx.try_send(batch) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(b)) => {
                *dropped += b.records.len() as u64;
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    } else {
        ctx.tx.blocking_send(batch).is_ok()
    }
}

fn publish_status<T: Activated + ?Sized>(ctx: &LoopContext, analyzer: &Analyzer, cap: &mut Capture<T>, live: bool, dropped: u64) {
    let pcap_stats = if live {
        cap.stats()
            .map(|s| PcapStats { received: u64::from(s.received), dropped: u64::from(s.dropped), if_dropped: u64::from(s.if_dropped) })
            .unwrap_or_default()
    } else {
        PcapStats::default()
    };
    let mut st = ctx.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    st.counters = analyzer.counters();
    st.pcap = pcap_stats;
    st.records_dropped = dropped;
    st.pairing_bytes = analyzer.pairer().heap_bytes() as u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first packet anchors the replay; a later one due within the slack is read at once,
    /// one due later waits for its time (scaled by the factor).
    #[test]
    fn a_paced_replay_reads_what_is_due_within_the_slack_at_once() {
        let mut pace = Pace::new(10.0);
        let t0 = 1_000_000_000_000;
        assert_eq!(pace.left(t0), None, "the first packet is due");
        // 5 ms of capture time at 10×: due 0.5 ms after the first, within the slack.
        assert_eq!(pace.left(t0 + 5_000_000), None);
        // 100 s of capture time at 10×: due 10 s after the first (a wide margin for a busy test
        // machine between the calls).
        let left = pace.left(t0 + 100_000_000_000).expect("waits");
        assert!(left > Duration::from_secs(9) && left <= Duration::from_secs(10), "{left:?}");
        // Stamped before the first packet: read on without waiting.
        assert_eq!(pace.left(t0 - 1_000_000_000), None);
    }
}
