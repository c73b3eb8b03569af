//! The set of running capture sources: started at launch from the command line, and at run time
//! by control requests (start and stop capture on an interface).
//!
//! Each source is an OS thread with its own stop flag; all of them feed the same bounded channel
//! towards the output. The supervisor keeps a sender of that channel while it accepts new
//! sources; dropping it ([`Supervisor::close`]) lets the output end when the last source ends.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use capture_proto::{AnalyzerConfig, stats::Counters};
use ntp_wire::control::{ControlErrorKind, InterfaceInfo};
use tokio::sync::mpsc;

use crate::{
    config::{LiveConfig, SourceSpec},
    source::{self, Batch, LoopContext, OpenError, PcapStats, SourceState, SourceStatus},
};

/// How long a stop request waits for its capture thread.
const STOP_WAIT: Duration = Duration::from_secs(3);

/// Live capture is for network interfaces (and `any`): libpcap's other devices (nfqueue, nflog,
/// usbmon, bluetooth, dbus) are not NTP traffic, and the capture loop's non-blocking reads and
/// `poll` on the handle's descriptor are made for network interfaces.
fn is_network_interface(name: &str) -> bool {
    name == "any"
        || (!name.is_empty()
            && name != "."
            && name != ".."
            && !name.contains(['/', '\0'])
            && std::path::Path::new("/sys/class/net").join(name).exists())
}

/// Shared status of one source.
pub type SharedStatus = Arc<Mutex<SourceStatus>>;

/// Settings every source shares.
#[derive(Debug, Clone)]
pub struct SourceDefaults {
    /// Records per hand-over.
    pub batch_records: usize,
    /// Longest a partial batch is held.
    pub batch_interval: Duration,
    /// Report pending requests as unanswered when a source stops.
    pub flush_pending: bool,
    /// Progress bars for big files.
    pub progress: bool,
    /// Pace files at their capture timing times this factor.
    pub replay_speed: Option<f64>,
}

/// Parameters a running capture was started with.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureParams {
    /// Server port.
    pub port: u16,
    /// Timeout, seconds.
    pub timeout: f64,
    /// BPF filter (live only).
    pub bpf: Option<String>,
}

struct Running {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    status: SharedStatus,
    params: CaptureParams,
}

/// A control or start-up failure, with the category the API maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StartError {
    /// Category.
    pub kind: ControlErrorKind,
    /// Reason.
    pub message: String,
    /// The request's field at fault, for an invalid request (the API names it in its 400).
    pub field: Option<&'static str>,
}

impl StartError {
    /// A failure not tied to one field of the request.
    pub fn new(kind: ControlErrorKind, message: String) -> Self {
        Self { kind, message, field: None }
    }

    /// An invalid request, `field` being at fault.
    pub fn invalid(field: &'static str, message: String) -> Self {
        Self { kind: ControlErrorKind::Invalid, message, field: Some(field) }
    }
}

impl From<OpenError> for StartError {
    fn from(e: OpenError) -> Self {
        let (kind, field) = match e {
            OpenError::NoSuchInterface { .. } => (ControlErrorKind::NotFound, None),
            // A filter libpcap does not compile.
            OpenError::Filter { .. } => (ControlErrorKind::Invalid, Some("bpf")),
            // An interface whose link type ntpscope cannot decode.
            OpenError::UnsupportedLink { .. } => (ControlErrorKind::Invalid, Some("name")),
            // The device exists but cannot be captured now (down, busy).
            OpenError::Other { .. } => (ControlErrorKind::Conflict, None),
            OpenError::Permission { .. } | OpenError::Unreadable { .. } | OpenError::NotACapture { .. } => (ControlErrorKind::Failed, None),
        };
        Self { kind, message: e.to_string(), field }
    }
}

/// The running sources.
pub struct Supervisor {
    tx: Mutex<Option<mpsc::Sender<Batch>>>,
    shutdown: Arc<AtomicBool>,
    defaults: SourceDefaults,
    running: Mutex<BTreeMap<String, Running>>,
    seed: u64,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").field("sources", &self.lock().keys().collect::<Vec<_>>()).finish_non_exhaustive()
    }
}

impl Supervisor {
    /// A supervisor feeding `tx`.
    pub fn new(tx: mpsc::Sender<Batch>, defaults: SourceDefaults) -> Self {
        use std::hash::{BuildHasher, RandomState};
        Self {
            tx: Mutex::new(Some(tx)),
            shutdown: Arc::new(AtomicBool::new(false)),
            defaults,
            running: Mutex::new(BTreeMap::new()),
            // One OS draw per process; each source mixes in its name.
            seed: RandomState::new().hash_one(0x6e74_7073u32),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Running>> {
        self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens and starts a source. Fails if its interface name is already capturing.
    pub fn start(&self, spec: &SourceSpec, mut analyzer: AnalyzerConfig, live: &LiveConfig) -> Result<(), StartError> {
        let name = spec.interface().to_string();
        if matches!(spec, SourceSpec::Live { .. }) && !is_network_interface(&name) {
            let mut available: Vec<String> = std::fs::read_dir("/sys/class/net")
                .map(|d| d.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned())).collect())
                .unwrap_or_default();
            available.sort();
            available.push("any".into());
            return Err(OpenError::NoSuchInterface { name, available: available.join(", ") }.into());
        }
        if self.lock().get(&name).is_some_and(|r| r.thread.as_ref().is_some_and(|t| !t.is_finished())) {
            return Err(StartError::new(ControlErrorKind::Conflict, format!("already capturing on {name}")));
        }
        let Some(tx) = self.tx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone() else {
            return Err(StartError::new(ControlErrorKind::Failed, "the agent is shutting down".into()));
        };
        let (handle, link) = source::open(spec, live)?;
        let status = Arc::new(Mutex::new(SourceStatus {
            interface: name.clone(),
            kind: match spec {
                SourceSpec::Live { .. } => "live",
                SourceSpec::File { .. } => "file",
            },
            link: Some(link),
            counters: Counters::default(),
            pcap: PcapStats::default(),
            records_dropped: 0,
            pairing_bytes: 0,
            state: SourceState::Running,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        analyzer.pairing.hash_seed = self.seed ^ ntp_wire::id::stable_hash(&[name.len() as u64, name.bytes().map(u64::from).sum()]);
        let ctx = LoopContext {
            interface: Arc::from(name.as_str()),
            analyzer,
            stop: stop.clone(),
            shutdown: self.shutdown.clone(),
            tx,
            batch_records: self.defaults.batch_records,
            batch_interval: self.defaults.batch_interval,
            flush_pending: self.defaults.flush_pending,
            status: status.clone(),
            progress: self.defaults.progress,
            replay_speed: self.defaults.replay_speed,
        };
        let thread = std::thread::Builder::new()
            .name(format!("capture-{name}"))
            .spawn(move || source::run(handle, link, &ctx))
            .map_err(|e| StartError::new(ControlErrorKind::Failed, format!("cannot start a thread: {e}")))?;
        let params = CaptureParams {
            port: analyzer.server_port,
            timeout: analyzer.pairing.timeout_ns as f64 / 1e9,
            bpf: matches!(spec, SourceSpec::Live { .. }).then(|| live.bpf.clone()),
        };
        self.lock().insert(name, Running { stop, thread: Some(thread), status, params });
        Ok(())
    }

    /// Stops a running source and waits up to [`STOP_WAIT`] for its thread (blocking; call from a
    /// blocking context). A thread that does not end in time keeps stopping in the background.
    /// Stopping an interface that is not capturing is a conflict; one the host does not have (and
    /// never captured on) is not found.
    pub fn stop(&self, name: &str) -> Result<(), StartError> {
        let (stop, thread) = {
            let mut map = self.lock();
            let known = map.contains_key(name);
            let Some(r) = map.get_mut(name).filter(|r| r.thread.as_ref().is_some_and(|t| !t.is_finished())) else {
                drop(map);
                if !known && !is_network_interface(name) {
                    return Err(StartError::new(ControlErrorKind::NotFound, format!("no interface {name} on this host")));
                }
                return Err(StartError::new(ControlErrorKind::Conflict, format!("not capturing on {name}")));
            };
            if r.stop.load(Ordering::Relaxed) {
                return Err(StartError::new(ControlErrorKind::Conflict, format!("{name} is already stopping")));
            }
            (r.stop.clone(), r.thread.take())
        };
        stop.store(true, Ordering::Relaxed);
        let Some(thread) = thread else { return Ok(()) };
        let deadline = crate::clock::monotonic() + STOP_WAIT;
        while !thread.is_finished() && crate::clock::monotonic() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if thread.is_finished() {
            let _ = thread.join();
            Ok(())
        } else {
            if let Some(r) = self.lock().get_mut(name) {
                r.thread = Some(thread);
            }
            Err(StartError::new(ControlErrorKind::Conflict, format!("{name} is still stopping; ask again shortly")))
        }
    }

    /// Stops every source (on shutdown) and stops accepting new ones.
    pub fn shutdown(&self) {
        self.shutdown.store(true, Ordering::Relaxed);
        self.close();
    }

    /// Stops accepting new sources: once the running ones end, the output sees the channel close.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    }

    /// Waits for every source thread (blocking).
    pub fn join_all(&self) {
        let threads: Vec<JoinHandle<()>> = self.lock().values_mut().filter_map(|r| r.thread.take()).collect();
        for t in threads {
            let _ = t.join();
        }
    }

    /// Statuses of every source started so far, by name.
    pub fn statuses(&self) -> Vec<SharedStatus> {
        self.lock().values().map(|r| r.status.clone()).collect()
    }

    /// Snapshot of every source's status.
    pub fn snapshot(&self) -> Vec<SourceStatus> {
        self.statuses().iter().map(|s| s.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()).collect()
    }

    /// The host's interfaces and the capture state on each (plus files and interfaces that have
    /// gone away but were captured).
    pub fn interfaces(&self) -> Vec<InterfaceInfo> {
        let mut out: BTreeMap<String, InterfaceInfo> = BTreeMap::new();
        if let Ok(devices) = pcap::Device::list() {
            for d in devices.into_iter().filter(|d| is_network_interface(&d.name)) {
                out.insert(
                    d.name.clone(),
                    InterfaceInfo {
                        name: d.name,
                        description: d.desc,
                        addresses: d.addresses.iter().map(|a| a.addr.to_string()).collect(),
                        capturing: false,
                        state: "idle".into(),
                        ..InterfaceInfo::default()
                    },
                );
            }
        }
        for (name, r) in self.lock().iter() {
            let capturing = r.thread.as_ref().is_some_and(|t| !t.is_finished());
            let status = r.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let entry = out.entry(name.clone()).or_insert_with(|| InterfaceInfo { name: name.clone(), ..InterfaceInfo::default() });
            entry.capturing = capturing;
            entry.state = match (&status.state, capturing) {
                (SourceState::Failed(e), _) => format!("failed: {e}"),
                (_, true) => "running".into(),
                (SourceState::Finished | SourceState::Running, false) => "stopped".into(),
            };
            if capturing {
                entry.port = Some(r.params.port);
                entry.timeout = Some(r.params.timeout);
                entry.bpf.clone_from(&r.params.bpf);
            }
        }
        out.into_values().collect()
    }
}
