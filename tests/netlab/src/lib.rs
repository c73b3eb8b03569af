//! `netlab`: disposable network labs and real NTP peers for ntpscope's tests.
//!
//! A [`Lab`] is two network namespaces (an NTP server and its clients) joined through a bridge in
//! the root namespace. The root-side veth of the server is where the capture agent listens, so
//! the agent sees exactly what the server sends and receives. Addresses come only from
//! 198.18.0.0/15 and 2001:db8::/32. Everything is removed on drop, including the processes the
//! lab started; nothing it did not start is touched.
//!
//! [`pcapgen`] writes synthetic NTP captures for benchmarks and end-to-end tests.
//!
//! [`procfs`] reads the user and capabilities of each thread of a process.
//!
//! [`NatsServer`] is a private nats-server per test (random port, temporary store).
//!
//! Live labs need root and `ip`, `chronyd`, `ntpdig`, `tcpdump`; a missing piece is an error that
//! says what to install, never a silently skipped test.

#![allow(clippy::disallowed_methods)] // a test harness waits on real time (processes starting)

pub mod bench;
pub mod lab;
pub mod nats;
pub mod pcapgen;
pub mod procfs;

pub use lab::{Lab, require_tools};
pub use nats::{NatsServer, free_port};
