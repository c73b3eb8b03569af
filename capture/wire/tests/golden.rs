//! Golden MessagePack files: the wire contract in committed bytes.
//!
//! Every `*.msgpack` here is bytes some version of the agent wrote, listed in [`GOLDEN`] with the
//! batch it must decode to, forever. **Never overwrite or regenerate a golden file.** When the
//! encoding changes on purpose, add a new file (`batch_v<schema>_<what changed>.msgpack`), point
//! [`CURRENT`] at it and keep the old ones: `UPDATE_EXPECT=1` only creates files that do not
//! exist yet. The first three files were written by earlier commits (recovered from git after
//! `batch_v1.msgpack` had been overwritten in place); `batch_v1_long_keys_all_fields.msgpack` was
//! written by the long-key encoder of commit 7180ff3 with every field set, so a forgotten alias
//! cannot hide behind a default.

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

/// The request and response of [`full_batch`]'s session: every header field set.
fn full_packets() -> (PacketSummary, PacketSummary) {
    let request = PacketSummary {
        length: 120,
        leap: 3,
        version: 4,
        mode: 3,
        stratum: 16,
        poll: 10,
        precision: -29,
        root_delay: 0x0001_8000,
        root_dispersion: 0x0002_4000,
        reference_id: u32::from_be_bytes(*b"INIT"),
        reference_ts: 0xe09a_b500_0000_0001,
        origin_ts: 0xe09a_b500_0000_0002,
        receive_ts: 0xe09a_b500_0000_0003,
        transmit_ts: 0x1234_5678_9abc_def0,
        extensions: vec![Extension { field_type: 0x0104, length: 36 }, Extension { field_type: 0x0204, length: 104 }],
        mac: Some(Mac { key_id: 0xdead_beef, digest_len: 16 }),
        bad_trailer: true,
    };
    let response = PacketSummary {
        length: 228,
        leap: 1,
        mode: 4,
        stratum: 1,
        poll: 4,
        precision: -24,
        reference_id: u32::from_be_bytes(*b"GPS\0"),
        origin_ts: 0x1234_5678_9abc_def0,
        receive_ts: 0xe09a_b596_0c62_5ccb,
        transmit_ts: 0xe09a_b596_0c64_646b,
        extensions: vec![Extension { field_type: 0x0404, length: 72 }],
        mac: Some(Mac { key_id: 0, digest_len: 0 }),
        bad_trailer: false,
        ..request.clone()
    };
    (request, response)
}

/// A batch in which every field of every record type has a non-default value, so that decoding
/// it proves each old key is still accepted (a forgotten alias would silently read a default).
fn full_batch() -> Batch {
    let (request, response) = full_packets();
    let session = Session {
        id: 0xfedc_ba98_7654_3210,
        outcome: SessionOutcome::Answered,
        client_ip: "2001:db8::7".parse().expect("ip"),
        client_port: 4242,
        server_ip: "2001:db8::1".parse().expect("ip"),
        server_port: 10123,
        vlan_id: Some(100),
        inner_vlan_id: Some(4001),
        request_time_ns: 1_559_246_614_027_454_001,
        response_time_ns: Some(1_559_246_614_027_474_002),
        request,
        response: Some(response.clone()),
        retransmits: 3,
        t1_randomized: true,
        interleaved: true,
        client_to_server_latency_s: Some(-0.125),
        server_processing_time_s: Some(0.000_007_5),
        total_process_time_s: Some(0.000_020_001),
    };
    let symmetric = Observation {
        id: 0x0102_0304_0506_0708,
        time_ns: 1_559_246_616_000_000_009,
        client_ip: "198.18.0.5".parse().expect("ip"),
        client_port: 123,
        server_ip: "198.18.0.1".parse().expect("ip"),
        server_port: 123,
        from_client: true,
        vlan_id: Some(7),
        inner_vlan_id: Some(8),
        length: 228,
        leap: 2,
        version: 3,
        mode: 1,
        header: Some(PacketSummary { mode: 1, version: 3, ..response }),
        control: None,
        private: None,
    };
    let control = Observation {
        id: 9,
        mode: 6,
        from_client: false,
        header: None,
        control: Some(Control {
            response: true,
            error: true,
            more: true,
            opcode: 10,
            sequence: 513,
            status: 0x0615,
            association_id: 31337,
            offset: 468,
            count: 12,
        }),
        ..symmetric.clone()
    };
    let private = Observation {
        id: 10,
        mode: 7,
        header: None,
        private: Some(Private {
            response: true,
            more: true,
            auth: true,
            sequence: 127,
            implementation: 3,
            request_code: 42,
            error: 5,
            items: 6,
            item_size: 72,
        }),
        ..symmetric.clone()
    };
    let mut batch = Batch::new(
        "agent-7.example.net",
        "bond0.100",
        vec![Record::Session(session), Record::Observation(symmetric), Record::Observation(control), Record::Observation(private)],
    );
    batch.sent_ns = 1_559_246_617_123_456_789;
    batch
}

/// Builds the batch a golden file must decode to.
type Make = fn() -> Batch;

/// The files this version writes, with the batches they encode.
const CURRENT: [(&str, Make); 2] = [("batch_v1.msgpack", fixed_batch), ("batch_v1_all_fields.msgpack", full_batch)];

/// Every golden file, with the commit that wrote it and the batch it must decode to.
const GOLDEN: [(&str, &str, Make); 5] = [
    ("batch_v1_long_keys.msgpack", "284daae: Rust field names as keys, records tagged `kind`", fixed_batch),
    ("batch_v1_long_keys_sent_ns.msgpack", "7180ff3: long keys plus `sent_ns`", fixed_batch),
    ("batch_v1_long_keys_all_fields.msgpack", "7180ff3's encoder, every field set", full_batch),
    ("batch_v1.msgpack", "9071636: compact keys, zero values left out", fixed_batch),
    ("batch_v1_all_fields.msgpack", "compact keys, every field set", full_batch),
];

#[test]
fn current_encoding_is_stable() {
    for (name, make) in CURRENT {
        let path = golden_dir().join(name);
        let bytes = batch::encode(&make()).expect("encode");
        if std::env::var_os("UPDATE_EXPECT").is_some() && !path.exists() {
            std::fs::write(&path, &bytes).expect("write golden");
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            bytes == committed,
            "{name}: the encoding changed. Golden files are never overwritten: add a new file, point CURRENT at it, \
             list it in GOLDEN and keep this one (see the module docs)"
        );
    }
    assert_eq!(fixed_batch().message_id(), "79b14622bec8d025e4f3a3ece13f0d72");
}

#[test]
fn every_golden_file_decodes_to_its_batch() {
    for (name, origin, make) in GOLDEN {
        let bytes = std::fs::read(golden_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = batch::decode(&bytes).unwrap_or_else(|e| panic!("{name} ({origin}) no longer decodes: {e}"));
        assert_eq!(got, make(), "{name} ({origin})");
    }
    // Nothing in the directory escapes the table (an unlisted file would only be checked for
    // decoding, not for what it decodes to).
    for entry in std::fs::read_dir(golden_dir()).expect("golden dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        assert!(GOLDEN.iter().any(|(g, _, _)| *g == name), "{name} is not listed in GOLDEN");
    }
}

#[test]
fn old_and_new_keys_mix_and_bad_old_records_are_refused() {
    // Keys are read one by one, so a compact message with some old keys still decodes.
    let mut value = serde_json::to_value(full_batch()).expect("to value");
    let first = value["records"][0].as_object_mut().expect("object");
    let ci = first.remove("ci").expect("ci");
    first.insert("client_ip".into(), ci);
    first.insert("o".into(), serde_json::json!("answered"));
    let mixed = rmp_serde::to_vec_named(&value).expect("encode");
    assert_eq!(batch::decode(&mixed).expect("decodes"), full_batch());
    // An old-shape record (`kind` tag) with a bad value is refused, not half read.
    let mut value = serde_json::to_value(fixed_batch()).expect("to value");
    let first = value["records"][0].as_object_mut().expect("object");
    first.remove("k");
    first.insert("kind".into(), serde_json::json!("session"));
    first.insert("ci".into(), serde_json::json!("not an address"));
    let err = batch::decode(&rmp_serde::to_vec_named(&value).expect("encode")).expect_err("bad address");
    assert!(matches!(err, WireError::Decode(_)), "{err}");
}

#[test]
fn records_decode_wherever_their_tag_is() {
    // The encoder writes the tag first, which the fast path requires.
    let fast = batch::encode(&full_batch()).expect("encode");
    assert_eq!(rmp_serde::from_slice::<Batch>(&fast).expect("fast path"), full_batch());
    // serde_json's map sorts its keys, so `k` comes after `ci`, `cp`, …: the fast path refuses
    // the record and the slow path reads it, to the same batch.
    let value = serde_json::to_value(full_batch()).expect("to value");
    for record in value["records"].as_array().expect("records") {
        assert_ne!(record.as_object().expect("object").keys().next().map(String::as_str), Some("k"));
    }
    let late = rmp_serde::to_vec_named(&value).expect("encode");
    assert!(rmp_serde::from_slice::<Batch>(&late).is_err(), "the fast path needs the tag first");
    assert_eq!(batch::decode(&late).expect("slow path"), full_batch());
    // The first agents' tag key, `kind`, later in the record: the third shape.
    let mut value = value;
    for record in value["records"].as_array_mut().expect("records") {
        let record = record.as_object_mut().expect("object");
        let tag = record.remove("k").expect("tag");
        record.insert("kind".into(), tag);
        assert_ne!(record.keys().next().map(String::as_str), Some("kind"));
    }
    let late_kind = rmp_serde::to_vec_named(&value).expect("encode");
    assert_eq!(batch::decode(&late_kind).expect("slowest path"), full_batch());
    // A late tag is not the defect reported when a record has a real one.
    value["records"][0]["ci"] = serde_json::json!("not an address");
    let err = batch::decode(&rmp_serde::to_vec_named(&value).expect("encode")).expect_err("bad address");
    assert!(err.to_string().contains("invalid IP address"), "{err}");
    value["records"][0].as_object_mut().expect("object").remove("kind");
    value["records"][0]["k"] = serde_json::json!("s");
    let err = batch::decode(&rmp_serde::to_vec_named(&value).expect("encode")).expect_err("bad address");
    assert!(err.to_string().contains("invalid IP address"), "{err}");
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
