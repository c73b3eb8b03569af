//! Shared code of the ntpscope fuzz targets (cargo-fuzz, libFuzzer): input formats, the frame
//! builder, the invariant checks and the seed corpus reader.
//!
//! The targets drive `capture-proto` and `ntp-wire` through the same public entry points the
//! capture agent and the sink use ([`capture_proto::Analyzer::handle_frame`], `advance`, `flush`,
//! [`ntp_wire::batch::decode`]); nothing here reimplements them. A check that fails panics, which
//! is what libFuzzer reports as a crash.
//!
//! # Layout
//! - [`script`]: the `pairing` target's input format (a header, then frames, built requests and
//!   responses, ticks and flushes) and its encoder, which the seed generator uses.
//! - [`driver`]: script steps → frames and analyzer calls, as the agent's capture loop makes them.
//! - [`scenarios`]: built scripts that reach each pairing path (seeds, and tests that they do).
//! - [`synth`]: link-layer, IP and UDP framing of built NTP packets, for every supported link type.
//! - [`check`]: invariants over counters, records, parses and the wire round trip.
//! - [`pcap`]: a minimal pcap/pcapng reader, only for turning the shared corpus into seeds.
//!
//! Not here: anything the agent's I/O shell does (libpcap, NATS); this crate is not a member of
//! the root workspace and is built only by `scripts/fuzz.sh` (cargo-fuzz, nightly or
//! `RUSTC_BOOTSTRAP=1`).
#![forbid(unsafe_code)]

pub mod check;
pub mod driver;
pub mod pcap;
pub mod scenarios;
pub mod script;
pub mod synth;

use capture_proto::frame::LinkType;

/// The pcap link-type numbers the agent decodes, in the order a selector byte picks them.
pub const LINK_DLTS: [i32; 10] = [1, 113, 276, 101, 0, 108, 228, 229, 12, 14];

/// The link type a selector byte picks (the byte modulo [`LINK_DLTS`]), mapped as the agent maps
/// a capture's DLT.
pub fn link(selector: u8) -> LinkType {
    let dlt = LINK_DLTS[usize::from(selector) % LINK_DLTS.len()];
    LinkType::from_dlt(dlt).unwrap_or(LinkType::Ethernet)
}

/// The selector byte of a pcap link-type number, if the agent decodes it.
pub fn selector(dlt: i32) -> Option<u8> {
    LINK_DLTS.iter().position(|d| *d == dlt).map(|i| i as u8)
}
