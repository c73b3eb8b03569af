//! Golden MessagePack files: the wire contract in committed bytes.
//!
//! `batch_v1.msgpack` is what schema 1 writes for a fixed batch. Encoding the same batch must give
//! the same bytes (or the change is deliberate: regenerate with `UPDATE_EXPECT=1` and keep the old
//! file under a new name so it is still decoded). Every `*.msgpack` here must decode forever.

use std::path::{Path, PathBuf};

use ntp_wire::{Batch, Control, Extension, Mac, Observation, PacketSummary, Private, Record, Session, SessionOutcome, WireError, batch};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn packet(mode: u8) -> PacketSummary {
    PacketSummary {
        length: 48,
        leap: 0,
        version: 4,
        mode,
        stratum: if mode == 4 { 2 } else { 0 },
        poll: 6,
        precision: -23,
        root_delay: 0x0000_0bd9,
        root_dispersion: 0x0000_0630,
        reference_id: 0xc612_ff01,
        reference_ts: 0xe09a_b55c_12dc_c914,
        origin_ts: if mode == 4 { 0xe09a_b596_0705_0baa } else { 0 },
        receive_ts: if mode == 4 { 0xe09a_b596_0c62_5ccb } else { 0 },
        transmit_ts: if mode == 4 { 0xe09a_b596_0c64_646b } else { 0xe09a_b596_0705_0baa },
        extensions: Vec::new(),
        mac: None,
        bad_trailer: false,
    }
}

/// The fixed batch behind `batch_v1.msgpack`.
fn fixed_batch() -> Batch {
    let answered = Session {
        id: 0x0123_4567_89ab_cdef,
        outcome: SessionOutcome::Answered,
        client_ip: "198.18.0.2".parse().expect("ip"),
        client_port: 40000,
        server_ip: "198.18.0.1".parse().expect("ip"),
        server_port: 123,
        vlan_id: Some(100),
        inner_vlan_id: None,
        request_time_ns: 1_559_246_614_027_454_000,
        response_time_ns: Some(1_559_246_614_027_474_000),
        request: PacketSummary {
            length: 104,
            extensions: vec![Extension { field_type: 0x0104, length: 36 }],
            mac: Some(Mac { key_id: 8, digest_len: 20 }),
            ..packet(3)
        },
        response: Some(packet(4)),
        retransmits: 1,
        t1_randomized: false,
        interleaved: false,
        client_to_server_latency_s: Some(0.000_25),
        server_processing_time_s: Some(0.000_012),
        total_process_time_s: Some(0.000_02),
    };
    let unanswered = Session {
        id: 42,
        outcome: SessionOutcome::Unanswered,
        client_ip: "2001:db8::2".parse().expect("ip"),
        client_port: 123,
        server_ip: "2001:db8::1".parse().expect("ip"),
        server_port: 123,
        vlan_id: None,
        inner_vlan_id: None,
        request_time_ns: 1_559_246_615_000_000_000,
        response_time_ns: None,
        request: packet(3),
        response: None,
        retransmits: 0,
        t1_randomized: true,
        interleaved: false,
        client_to_server_latency_s: None,
        server_processing_time_s: None,
        total_process_time_s: None,
    };
    let control = Observation {
        id: 7,
        time_ns: 1_559_246_616_000_000_000,
        client_ip: "198.18.0.3".parse().expect("ip"),
        client_port: 50000,
        server_ip: "198.18.0.1".parse().expect("ip"),
        server_port: 123,
        from_client: true,
        vlan_id: None,
        inner_vlan_id: None,
        length: 12,
        leap: 0,
        version: 2,
        mode: 6,
        header: None,
        control: Some(Control {
            response: false,
            error: false,
            more: false,
            opcode: 2,
            sequence: 1,
            status: 0,
            association_id: 0,
            offset: 0,
            count: 0,
        }),
        private: None,
    };
    let monlist = Observation {
        id: 8,
        mode: 7,
        length: 192,
        control: None,
        private: Some(Private {
            response: false,
            more: false,
            auth: false,
            sequence: 0,
            implementation: 3,
            request_code: 42,
            error: 0,
            items: 0,
            item_size: 0,
        }),
        ..control.clone()
    };
    Batch::new(
        "ntp1.example.com",
        "eth0.100",
        vec![Record::Session(answered), Record::Session(unanswered), Record::Observation(control), Record::Observation(monlist)],
    )
}

#[test]
fn schema_1_bytes_are_stable() {
    let path = golden_dir().join("batch_v1.msgpack");
    let bytes = batch::encode(&fixed_batch()).expect("encode");
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&path, &bytes).expect("write golden");
    }
    let committed = std::fs::read(&path).expect("committed golden file");
    assert_eq!(bytes, committed, "schema 1 encoding changed; see the module docs");
    assert_eq!(fixed_batch().message_id(), "79b14622bec8d025e4f3a3ece13f0d72");
}

#[test]
fn every_golden_file_still_decodes() {
    let mut n = 0;
    for entry in std::fs::read_dir(golden_dir()).expect("golden dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "msgpack") {
            let batch = batch::decode(&std::fs::read(&path).expect("read")).expect("decodes");
            assert!(!batch.records.is_empty(), "{}", path.display());
            n += 1;
        }
    }
    assert!(n >= 1);
    let v1 = batch::decode(&std::fs::read(golden_dir().join("batch_v1.msgpack")).expect("read")).expect("decode");
    assert_eq!(v1, fixed_batch());
}

#[test]
fn named_fields_let_schemas_evolve_both_ways() {
    // A newer agent adds fields: an old reader ignores them.
    let mut value = serde_json::to_value(fixed_batch()).expect("to value");
    value["shiny_new_field"] = serde_json::json!({"x": 1});
    value["records"][0]["new_metric"] = serde_json::json!(3.5);
    let newer = rmp_serde::to_vec_named(&value).expect("encode");
    assert_eq!(batch::decode(&newer).expect("decodes"), fixed_batch());
    // An older agent lacks optional fields: defaults fill them.
    let mut value = serde_json::to_value(fixed_batch()).expect("to value");
    let first = value["records"][0].as_object_mut().expect("object");
    // Wire keys: vl = vlan_id, rt = retransmits, t1r = t1_randomized, il = interleaved,
    // lat = client_to_server_latency_s.
    for optional in ["vl", "rt", "t1r", "il", "lat"] {
        first.remove(optional);
    }
    let older = rmp_serde::to_vec_named(&value).expect("encode");
    let Record::Session(s) = &batch::decode(&older).expect("decodes").records[0] else { panic!("not a session") };
    assert_eq!((s.vlan_id, s.retransmits, s.client_to_server_latency_s), (None, 0, None));
}

#[test]
fn garbage_and_future_schemas_are_refused() {
    assert!(matches!(batch::decode(b"\x00\x01garbage"), Err(WireError::Decode(_))));
    assert!(matches!(batch::decode(&[]), Err(WireError::Decode(_))));
    let mut future = fixed_batch();
    future.schema = 99;
    let bytes = batch::encode(&future).expect("encode");
    assert_eq!(batch::decode(&bytes), Err(WireError::UnsupportedSchema(99)));
}

#[test]
fn message_ids_follow_content() {
    let a = fixed_batch();
    let mut b = fixed_batch();
    assert_eq!(a.message_id(), b.message_id());
    b.records.pop();
    assert_ne!(a.message_id(), b.message_id());
    let mut c = fixed_batch();
    c.interface = "eth1".into();
    assert_ne!(a.message_id(), c.message_id());
}
