//! Fuzz target `control`: arbitrary bytes as the other MessagePack documents on the bus.
//!
//! The agent decodes `ControlRequest`s from the API, the API decodes `ControlResponse`s from
//! agents and `AgentStatus`/`SinkStatus` documents from the KV bucket. Each of the four decodes
//! the same bytes; whatever decodes must encode and decode back to itself (compared through
//! `Debug` when a float is NaN) with stable bytes.
#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use ntp_wire::{
    WireError,
    control::{self, ControlRequest, ControlResponse},
    status::{self, AgentStatus, SinkStatus},
};
use serde::{Serialize, de::DeserializeOwned};

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(
    data: &[u8],
    decode: fn(&[u8]) -> Result<T, WireError>,
    encode: fn(&T) -> Result<Vec<u8>, WireError>,
) {
    let Ok(v) = decode(data) else { return };
    let bytes = encode(&v).expect("a decoded document encodes");
    let back = decode(&bytes).expect("an encoded document decodes");
    if back != v {
        assert_eq!(format!("{back:?}"), format!("{v:?}"), "the round trip changed the document");
    }
    assert_eq!(encode(&back).expect("encodes again"), bytes, "encoding is stable");
}

fuzz_target!(|data: &[u8]| {
    round_trip::<ControlRequest>(data, |b| control::decode(b), control::encode);
    round_trip::<ControlResponse>(data, |b| control::decode(b), control::encode);
    round_trip::<AgentStatus>(data, |b| status::decode(b), status::encode);
    round_trip::<SinkStatus>(data, |b| status::decode(b), status::encode);
});
