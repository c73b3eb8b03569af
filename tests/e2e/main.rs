//! ntpscope's end-to-end and whole-workspace test suite (one binary, as vector and
//! rust-analyzer keep theirs: every file under `tests/` would otherwise be a separate link).
//!
//! - [`architecture`]: the dependency invariants of ARCHITECTURE.md, checked on `cargo metadata`.
//! - [`tidy`]: every Rust file starts with a `//!` comment saying what it is for.
//! - [`pipeline`]: agent → NATS → sink → SQLite/PostgreSQL against the agent's JSON lines; crash,
//!   restart and cut-off faults.
//! - [`faults`]: faults under load (sink kills, nats-server restart, a locked and a full database,
//!   an agent cut off) while a replay runs; nothing lost, nothing counted twice, each fault in health.
//! - [`api`]: the API over the real pipeline; remote start/stop of a live capture.
//! - [`bus`]: dead letters, old servers, stream configuration drift.
//! - [`schemathesis`]: the API fuzzed against `openapi.yaml`, the stack in its own namespace.
//! - [`deploy`]: what `deploy/` ships: example configs, NATS accounts, a 3-node cluster losing its
//!   stream leader, systemd units, Debian packages.
//! - [`readme`]: `scripts/run.sh` in a namespace, the README's `curl` examples verbatim, Ctrl-C, resume.
//! - [`tls`]: mutual TLS on the bus with a CA made in the test.
//! - [`live`]: a live capture cut off from NATS (needs root, namespaces, tcpreplay).
//! - [`hostile`]: a million malformed and hostile frames through a live agent: no crash, every
//!   frame counted where it belongs, flat memory (needs root, namespaces, tcpreplay).
//!
//! Every test starts its own nats-server (random port, temporary store) and its own database.

#![allow(clippy::disallowed_methods)] // end-to-end tests wait on real processes in real time

mod api;
mod architecture;
mod bus;
mod deploy;
mod faults;
mod harness;
mod hostile;
mod live;
mod pipeline;
mod readme;
mod schemathesis;
mod tidy;
mod tls;
