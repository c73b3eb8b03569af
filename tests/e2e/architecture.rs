//! The dependency invariants written in ARCHITECTURE.md, checked on the resolved graph, and one
//! invariant of a built binary: the sink defines its own `malloc` (checked with `nm`).
//!
//! Only normal (non-dev) dependencies count: tests may use anything.

use std::{
    collections::{BTreeSet, HashMap},
    process::Command,
};

use serde_json::Value;

struct Graph {
    /// package id → (name, normal dependency ids)
    nodes: HashMap<String, (String, Vec<String>)>,
    by_name: HashMap<String, String>,
}

fn graph() -> Graph {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let names: HashMap<String, String> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().unwrap_or_default().to_string(), p["name"].as_str().unwrap_or_default().to_string()))
        .collect();
    let mut nodes = HashMap::new();
    for n in meta["resolve"]["nodes"].as_array().expect("resolve nodes") {
        let id = n["id"].as_str().unwrap_or_default().to_string();
        let deps = n["deps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["dep_kinds"].as_array().into_iter().flatten().any(|k| k["kind"].is_null()))
            .filter_map(|d| d["pkg"].as_str().map(str::to_string))
            .collect();
        nodes.insert(id.clone(), (names.get(&id).cloned().unwrap_or_default(), deps));
    }
    let by_name = meta["workspace_members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m.as_str())
        .map(|id| (names[id].clone(), id.to_string()))
        .collect();
    Graph { nodes, by_name }
}

impl Graph {
    fn id(&self, crate_name: &str) -> &str {
        self.by_name.get(crate_name).unwrap_or_else(|| panic!("no workspace member {crate_name}"))
    }

    /// Every package reachable through normal dependencies.
    fn closure(&self, crate_name: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![self.id(crate_name).to_string()];
        let mut names = BTreeSet::new();
        while let Some(id) = stack.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            let (name, deps) = &self.nodes[&id];
            names.insert(name.clone());
            stack.extend(deps.iter().cloned());
        }
        names.remove(crate_name);
        names
    }

    fn direct(&self, crate_name: &str) -> BTreeSet<String> {
        self.nodes[self.id(crate_name)].1.iter().map(|d| self.nodes[d].0.clone()).collect()
    }
}

const IO_CRATES: &[&str] = &["tokio", "pcap", "async-nats", "mio", "socket2", "libc", "rand", "getrandom", "sea-orm", "sqlx", "poem"];

#[test]
fn the_pure_crates_do_no_io() {
    let g = graph();
    let allowed: BTreeSet<String> =
        ["etherparse", "thiserror", "hashbrown", "foldhash", "ntp-wire"].iter().map(|s| (*s).to_string()).collect();
    let direct = g.direct("capture-proto");
    assert!(direct.is_subset(&allowed), "capture-proto depends on {direct:?}; allowed: {allowed:?}");
    for krate in ["capture-proto", "ntp-wire"] {
        let closure = g.closure(krate);
        let bad: Vec<&&str> = IO_CRATES.iter().filter(|c| closure.contains(**c)).collect();
        assert!(bad.is_empty(), "{krate} reaches I/O crates {bad:?} (closure {closure:?})");
    }
    let wire: BTreeSet<String> = ["serde", "rmp-serde", "thiserror"].iter().map(|s| (*s).to_string()).collect();
    assert!(g.direct("ntp-wire").is_subset(&wire), "ntp-wire depends on {:?}", g.direct("ntp-wire"));
}

#[test]
fn only_the_capture_agent_links_libpcap() {
    let g = graph();
    for name in g.by_name.keys() {
        let closure = g.closure(name);
        let links = closure.contains("pcap") || closure.contains("pcap-sys");
        assert_eq!(links, name == "ntpscope-capture", "{name} and libpcap");
    }
}

#[test]
fn the_sink_stays_out_of_capture_and_http_and_migrations_out_of_entities() {
    let g = graph();
    let sink = g.closure("ntpscope-sink");
    for forbidden in ["capture-proto", "ntpscope-capture", "pcap", "poem", "poem-openapi"] {
        assert!(!sink.contains(forbidden), "ntpscope-sink reaches {forbidden}");
    }
    assert!(sink.contains("ntp-wire") && sink.contains("migration"), "the sink reads the wire contract and owns migrations");
    assert!(!g.closure("migration").contains("entity"), "migrations must not import entity types");
    let bus = g.closure("ntpscope-bus");
    assert!(!bus.contains("sea-orm") && !bus.contains("pcap"), "the bus crate is NATS only");
}

#[test]
fn the_api_reads_the_contracts_but_not_the_capture_code() {
    let g = graph();
    let api = g.closure("ntpscope-api");
    for forbidden in ["capture-proto", "ntpscope-capture", "ntpscope-sink", "pcap"] {
        assert!(!api.contains(forbidden), "ntpscope-api reaches {forbidden}");
    }
    for needed in ["ntp-wire", "entity", "ntpscope-bus"] {
        assert!(api.contains(needed), "ntpscope-api should share {needed}, not redefine it");
    }
}

/// The sink's allocator covers SQLite too: with mimalloc's `override` feature the binary defines
/// `malloc` itself, and SQLite's statement-journal chunks no longer go through glibc (whose
/// `malloc` and `free` took about a fifth of the sink's CPU, much of it for those chunks;
/// docs/performance.md). Without the feature, or without the `#[global_allocator]` that links
/// mimalloc in, the symbols would come from libc.
#[test]
fn the_sink_binary_brings_its_own_malloc() {
    let sink = crate::harness::bin("ntpscope-sink");
    let out = Command::new("nm").args(["--defined-only", "--extern-only"]).arg(&sink).output().expect("nm (binutils)");
    assert!(out.status.success(), "nm: {}", String::from_utf8_lossy(&out.stderr));
    let symbols = String::from_utf8_lossy(&out.stdout);
    let defines = |name: &str| symbols.lines().any(|l| l.split_whitespace().nth(2) == Some(name) && l.contains(" T "));
    assert!(defines("mi_malloc") && defines("malloc") && defines("free"), "{} does not define mimalloc's malloc and free", sink.display());
}
