//! Agent → JetStream publishing throughput, beside a bare async-nats publish loop on the same
//! server (a private nats-server 2.15 with a file store, as in production).
//!
//! ```text
//! cargo bench -p ntpscope-capture --bench publish
//! ```
//!
//! 1. encode only: records/s of MessagePack encoding (named fields) into 1000-record messages;
//!    then decode only: the same messages through the sink's `batch::decode`;
//! 2. agent publisher: 2 M session records handed over in capture batches of 1000, through the
//!    agent's publisher (encode, `Nats-Msg-Id`, 256 acks in flight) until every ack is in;
//! 3. bare loop: the same number of pre-encoded messages of the same size published with
//!    async-nats and 256 acks in flight, nothing else.
#![allow(clippy::disallowed_methods)] // a benchmark measures wall time

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream::FuturesUnordered};
use ntp_wire::{Batch, PacketSummary, Record, Session, SessionOutcome, batch};
use ntpscope_capture::{publish, source};

const RECORDS: u32 = 2_000_000;
const PER_BATCH: u32 = 1_000;

fn record(i: u32) -> Record {
    let t = 1_767_225_600_000_000_000 + i64::from(i) * 1_000;
    let req = PacketSummary { mode: 3, version: 4, length: 48, transmit_ts: u64::from(i) << 8, ..PacketSummary::default() };
    Record::Session(Session {
        id: u64::from(i),
        outcome: SessionOutcome::Answered,
        client_ip: std::net::Ipv4Addr::from(0xc612_0000 + (i % 200_000)).into(),
        client_port: 1024 + (i % 60_000) as u16,
        server_ip: "198.19.255.1".parse().expect("ip"),
        server_port: 123,
        vlan_id: None,
        inner_vlan_id: None,
        request_time_ns: t,
        response_time_ns: Some(t + 20_000),
        request: req.clone(),
        response: Some(PacketSummary { mode: 4, stratum: 2, origin_ts: u64::from(i) << 8, receive_ts: 7, transmit_ts: 9, ..req }),
        retransmits: 0,
        t1_randomized: false,
        interleaved: false,
        client_to_server_latency_s: Some(0.001),
        server_processing_time_s: Some(1e-5),
        total_process_time_s: Some(2e-5),
    })
}

fn batches() -> Vec<Vec<Record>> {
    (0..RECORDS / PER_BATCH).map(|b| (0..PER_BATCH).map(|j| record(b * PER_BATCH + j)).collect()).collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let nats = netlab::NatsServer::start().expect("nats-server");
    let data = batches();
    println!("# publish benchmark: {RECORDS} records in messages of {PER_BATCH}");

    // 1. Encoding alone.
    let start = Instant::now();
    let mut sizes = 0usize;
    for recs in &data {
        sizes += batch::encode(&Batch::new("bench", "eth0", recs.clone())).expect("encode").len();
    }
    let enc = start.elapsed().as_secs_f64();
    let msg_bytes = sizes / data.len();
    println!(
        "encode only (rmp-serde named, clone included): {:.2} s = {:.2} M records/s; {} bytes per message ({} per record)",
        enc,
        f64::from(RECORDS) / enc / 1e6,
        msg_bytes,
        msg_bytes / PER_BATCH as usize
    );

    // 1b. Decoding, as the sink does it (`batch::decode`: MessagePack, checks).
    let encoded: Vec<Vec<u8>> =
        data.iter().map(|recs| batch::encode(&Batch::new("bench", "eth0", recs.clone())).expect("encode")).collect();
    let start = Instant::now();
    let mut decoded = 0usize;
    for bytes in &encoded {
        decoded += batch::decode(bytes).expect("decode").records.len();
    }
    let dec = start.elapsed().as_secs_f64();
    assert_eq!(decoded, RECORDS as usize);
    println!("decode only (the sink's batch::decode): {:.2} s = {:.2} M records/s", dec, f64::from(RECORDS) / dec / 1e6);
    drop(encoded);

    // 2. The agent's publisher.
    let client = ntpscope_bus::connect(&ntpscope_bus::NatsConfig { url: nats.url.clone(), ..Default::default() }).await.expect("connect");
    let js = async_nats::jetstream::ContextBuilder::new().timeout(Duration::from_secs(10)).max_ack_inflight(1024).build(client.clone());
    ntpscope_bus::ensure_stream(&js, &ntpscope_bus::StreamSettings { max_bytes: -1, ..Default::default() }).await.expect("stream");
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let stats = Arc::new(publish::PublisherStats::default());
    let cfg = publish::PublishConfig {
        agent: "bench".into(),
        max_inflight: 256,
        buffer_bytes: 256 << 20,
        max_records: PER_BATCH as usize,
        max_message_bytes: 900 * 1024,
        drain_timeout: Duration::from_secs(60),
    };
    let feed = data.clone();
    let iface: Arc<str> = Arc::from("eth0");
    let start = Instant::now();
    let producer = std::thread::spawn(move || {
        for records in feed {
            if tx.blocking_send(source::Batch { interface: iface.clone(), records }).is_err() {
                break;
            }
        }
    });
    let (_no_signal, stop) = tokio::sync::watch::channel(false);
    publish::run(js.clone(), cfg, rx, stats.clone(), stop).await;
    let _ = producer.join();
    let secs = start.elapsed().as_secs_f64();
    let acked = stats.records_acked.load(Ordering::Relaxed);
    assert_eq!(acked, u64::from(RECORDS), "every record acknowledged");
    println!(
        "agent publisher (encode + publish + ack, 256 in flight): {:.2} s = {:.2} M records/s = {:.0} messages/s",
        secs,
        f64::from(RECORDS) / secs / 1e6,
        f64::from(RECORDS / PER_BATCH) / secs
    );

    // 3. A bare async-nats loop with pre-encoded payloads of the same size.
    js.delete_stream(ntp_wire::subject::STREAM).await.expect("reset stream");
    ntpscope_bus::ensure_stream(&js, &ntpscope_bus::StreamSettings { max_bytes: -1, ..Default::default() }).await.expect("stream");
    let payload = bytes::Bytes::from(vec![0x5au8; msg_bytes]);
    let messages = RECORDS / PER_BATCH;
    let start = Instant::now();
    let mut inflight = FuturesUnordered::new();
    for i in 0..messages {
        while inflight.len() >= 256 {
            let ack: Result<_, async_nats::jetstream::context::PublishError> = inflight.next().await.expect("ack future");
            ack.expect("ack");
        }
        let fut = js.publish(format!("ntp.v1.sessions.bench.eth{}", i % 4), payload.clone()).await.expect("publish");
        inflight.push(std::future::IntoFuture::into_future(fut));
    }
    while let Some(r) = inflight.next().await {
        let ack: Result<_, async_nats::jetstream::context::PublishError> = r;
        ack.expect("ack");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "bare async-nats loop ({msg_bytes}-byte messages, 256 in flight): {:.2} s = {:.0} messages/s = {:.0} MB/s (= {:.2} M records/s at {PER_BATCH} per message)",
        secs,
        f64::from(messages) / secs,
        f64::from(messages) * msg_bytes as f64 / secs / 1e6,
        f64::from(RECORDS) / secs / 1e6
    );
}
