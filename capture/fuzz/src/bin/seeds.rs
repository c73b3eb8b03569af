//! Writes the seed corpora of the fuzz targets (run by `scripts/fuzz.sh`; not a fuzz target).
//!
//! Usage: `seeds PCAP_DIR OUT_DIR [GOLDEN.msgpack ...]`. Writes, each file named by a hash of
//! its bytes so reruns are idempotent:
//! - `OUT_DIR/frame`: every frame of every pcap, behind its link selector byte, plus built frames
//!   of every link type;
//! - `OUT_DIR/pairing`: every pcap as scripts of raw frames with their real time steps (in
//!   chunks), plus built scenarios (answered, interleaved, retransmitted, kiss-o'-death, timed
//!   out, flushed, evicted, NTPv1, trailers) for every link type;
//! - `OUT_DIR/wire`: the records the analyzer makes of each pcap and scenario, as encoded
//!   batches, and the committed golden batches;
//! - `OUT_DIR/control`: encoded control requests and replies and status documents.
//!
//! Not here: deciding what the corpus pcaps mean (capture/tests does that).
#![forbid(unsafe_code)]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use ntp_wire::{
    Batch, Record, batch,
    control::{self, ControlErrorKind, ControlRequest, ControlResponse, InterfaceInfo},
    id::Fnv64,
    status::{self, AgentStatus, InterfaceStatus, SinkStatus},
};
use ntpscope_fuzz::{
    LINK_DLTS,
    driver::{self, Fields},
    pcap, scenarios,
    script::{Setup, Step},
    selector,
    synth::{self, Datagram},
};

/// Frames per pairing seed taken from a pcap: small inputs mutate and run faster.
const FRAMES_PER_SCRIPT: usize = 24;
/// Records per wire seed.
const RECORDS_PER_BATCH: usize = 16;

fn main() -> std::io::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [pcaps, out, golden @ ..] = args.as_slice() else {
        eprintln!("usage: seeds PCAP_DIR OUT_DIR [GOLDEN.msgpack ...]");
        std::process::exit(64);
    };
    let mut corpus = Corpus::default();
    // A machine without the shared corpus still gets the built seeds.
    let mut files: Vec<PathBuf> = match std::fs::read_dir(pcaps) {
        Ok(dir) => dir.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => {
            eprintln!("seeds: no pcaps from {}: {e}", pcaps.display());
            Vec::new()
        }
    };
    files.sort();
    for path in &files {
        let frames = pcap::frames(&std::fs::read(path)?);
        let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        pcap_seeds(&mut corpus, &name, &frames);
    }
    scenario_seeds(&mut corpus);
    for g in golden {
        corpus.add("wire", std::fs::read(g)?);
    }
    control_seeds(&mut corpus);
    for (target, seeds) in &corpus.0 {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir)?;
        for seed in seeds {
            write_seed(&dir, seed)?;
        }
        println!("{target}: {} seeds", seeds.len());
    }
    Ok(())
}

/// Seeds per target, deduplicated.
#[derive(Default)]
struct Corpus(BTreeMap<&'static str, std::collections::BTreeSet<Vec<u8>>>);

impl Corpus {
    fn add(&mut self, target: &'static str, seed: Vec<u8>) {
        self.0.entry(target).or_default().insert(seed);
    }

    fn add_batch(&mut self, interface: &str, records: &[Record]) {
        for (i, chunk) in records.chunks(RECORDS_PER_BATCH).enumerate() {
            let mut b = Batch::new("seed-agent", interface, chunk.to_vec());
            b.sent_ns = i64::try_from(i).unwrap_or(0) * 1_000_000_007;
            if let Ok(bytes) = batch::encode(&b) {
                self.add("wire", bytes);
            }
        }
    }
}

fn write_seed(dir: &Path, seed: &[u8]) -> std::io::Result<()> {
    let mut h = Fnv64::default();
    h.bytes(seed);
    std::fs::write(dir.join(format!("seed-{:016x}", h.finish())), seed)
}

fn pcap_seeds(corpus: &mut Corpus, name: &str, frames: &[pcap::Frame]) {
    let Some(sel) = frames.first().and_then(|f| selector(f.dlt)) else { return };
    for f in frames.iter().filter(|f| f.dlt == frames[0].dlt) {
        let mut seed = vec![sel];
        seed.extend_from_slice(&f.data);
        corpus.add("frame", seed);
    }
    let mut records = Vec::new();
    for chunk in frames.chunks(FRAMES_PER_SCRIPT) {
        let mut seed = Vec::new();
        Setup { link: sel, start_ns: chunk[0].time_ns.max(0) as u64, ..Setup::default() }.write(&mut seed);
        let mut prev = chunk[0].time_ns;
        for f in chunk {
            let delta_us = i32::try_from((f.time_ns - prev) / 1_000).unwrap_or(i32::MAX);
            Step::Frame { delta_us, bytes: &f.data }.write(&mut seed);
            prev = f.time_ns;
        }
        records.extend(driver::replay(&seed).0);
        corpus.add("pairing", seed);
    }
    corpus.add_batch(name, &records);
}

fn scenario_seeds(corpus: &mut Corpus) {
    for sel in 0..LINK_DLTS.len() as u8 {
        for (i, (limits, steps)) in scenarios::scenarios().into_iter().enumerate() {
            let mut seed = Vec::new();
            Setup { link: sel, limits, misc: 0, start_ns: 1_700_000_000_000_000_000 + i as u64 }.write(&mut seed);
            for step in &steps {
                step.write(&mut seed);
            }
            corpus.add_batch("built", &driver::replay(&seed).0);
            corpus.add("pairing", seed);
        }
        // Built frames for the frame target: a request of every shape and trailer on this link.
        for (flow, trailer) in [(0u8, 0u8), (0x40, 4 | (2 << 3)), (0x80, 2), (0xe0, 5), (0x20, 6 | (3 << 3)), (0x60, 7 | (18 << 3))] {
            let fields = Fields { first: 0x23, ts: [0, 0, 0, 0xe9f0_0000_1234_5678], ..Fields::default() };
            let (payload, snap_cut) = driver::payload(&fields, trailer);
            let (client, server, shape) = driver::flow(flow, 123);
            let frame = synth::frame(ntpscope_fuzz::link(sel), &Datagram { src: client, dst: server, payload: &payload, shape, snap_cut });
            let mut seed = vec![sel];
            seed.extend_from_slice(&frame);
            corpus.add("frame", seed);
        }
    }
}

fn control_seeds(corpus: &mut Corpus) {
    let requests = [
        ControlRequest::List,
        ControlRequest::Start { interface: "eth0.100".into(), port: 123, timeout: 2.0, bpf: None },
        ControlRequest::Start { interface: "veth-srv".into(), port: 4123, timeout: 0.5, bpf: Some("udp port 4123".into()) },
        ControlRequest::Stop { interface: "eth0".into() },
    ];
    for r in &requests {
        corpus.add("control", control::encode(r).unwrap_or_default());
    }
    let iface = InterfaceInfo {
        name: "eth0".into(),
        description: Some("uplink".into()),
        addresses: vec!["198.18.0.1".into(), "2001:db8::1".into()],
        capturing: true,
        state: "running".into(),
        port: Some(123),
        timeout: Some(2.0),
        bpf: Some("udp port 123".into()),
    };
    let replies = [
        ControlResponse::Ok {
            agent: "agent-1".into(),
            interfaces: vec![iface, InterfaceInfo { name: "lo".into(), ..InterfaceInfo::default() }],
        },
        ControlResponse::Error { agent: "agent-1".into(), kind: ControlErrorKind::Conflict, message: "already capturing".into(), field: None },
    ];
    for r in &replies {
        corpus.add("control", control::encode(r).unwrap_or_default());
    }
    let counters: BTreeMap<String, u64> = [("frames".to_string(), 922), ("answered".to_string(), 400)].into_iter().collect();
    let agent = AgentStatus {
        agent: "agent-1".into(),
        version: "0.1.0".into(),
        started_ns: 1_700_000_000_000_000_000,
        updated_ns: 1_700_000_005_000_000_000,
        interfaces: vec![InterfaceStatus {
            name: "eth0".into(),
            kind: "live".into(),
            counters: counters.clone(),
            ..InterfaceStatus::default()
        }],
        publisher: counters.clone(),
        exited: false,
    };
    corpus.add("control", status::encode(&agent).unwrap_or_default());
    let sink = SinkStatus {
        consumer: "ntpscope-sink".into(),
        updated_ns: 1_700_000_005_000_000_000,
        counters,
        last_commit_ns: 1_700_000_004_000_000_000,
        lag_seconds: 0.25,
        failing: Some("database is locked".into()),
        failing_since_ns: 1_700_000_003_000_000_000,
    };
    corpus.add("control", status::encode(&sink).unwrap_or_default());
}
