//! TLS on the bus: with a CA made in the test, a nats-server that requires mutual TLS carries
//! the whole pipeline (agent → NATS → sink) when agent and sink present the CA and a client
//! certificate, and refuses an agent without its certificate or without TLS, with a clear error.

use std::{path::Path, process::Command, time::Duration};

use netlab::{NatsServer, require_tools};

use crate::harness::{self, agent, assert_same, expected, fixture, lines, open, stored, stored_records, wait_until};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all P-256, valid a day.
fn make_pki(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=ntpscope test CA"]);
    openssl(dir, &ca);
    for (name, cn, ext) in [
        ("server", "127.0.0.1", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
        ("client", "ntpscope-agent", "subjectAltName=DNS:ntpscope-agent\nextendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).expect("ext");
        let (key, csr, pem, extf, subj) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"), format!("/CN={cn}"));
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "1",
                "-extfile",
                &extf,
            ],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_carries_the_pipeline_and_refuses_clients_without_it() {
    require_tools(&["openssl"]).expect("openssl");
    let pki = tempfile::tempdir().expect("tempdir");
    let p = pki.path();
    make_pki(p);
    let path = |f: &str| p.join(f).to_str().expect("path").to_string();
    let nats = NatsServer::start_with(&format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  timeout: 5\n}}\n",
        path("server.pem"),
        path("server.key"),
        path("ca.pem")
    ))
    .expect("nats-server with TLS");
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let tls = ["--nats-tls-ca", &path("ca.pem"), "--nats-tls-cert", &path("client.pem"), "--nats-tls-key", &path("client.key")];

    let dir = tempfile::tempdir().expect("tempdir");
    let db_url = harness::sqlite_url(dir.path());
    let sink = harness::Sink::start(&db_url, &url, &dir.path().join("sink.log"), &tls);
    let file = fixture("leapsecond-ntp.pcap");
    let replay = ["-r", file.to_str().expect("path"), "--agent-id", "tls", "--flush-pending"];
    let truth = lines(&agent(&replay, None));
    let out = Command::new(harness::bin("ntpscope-capture"))
        .args(replay)
        .args(tls)
        .args(["--output", "nats", "--nats-url", &url, "--summary", "json"])
        .env("NTPSCOPE_LOG", "warn")
        .output()
        .expect("agent");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let db = open(&db_url).await;
    let total = truth.len() as i64;
    assert!(wait_until(Duration::from_secs(30), || async { stored_records(&db).await == total }).await, "sink log: {}", sink.log_text());
    assert_same(&expected(&truth), &stored(&db).await);

    // Without the client certificate, and without TLS at all: refused, naming the server.
    for (what, args, target) in [
        ("no client certificate", vec!["--nats-tls-ca", &path("ca.pem")], url.clone()),
        ("no TLS options", vec![], format!("nats://127.0.0.1:{}", nats.port)),
    ] {
        let out = Command::new(harness::bin("ntpscope-capture"))
            .args(replay)
            .args(&args)
            .args(["--output", "nats", "--nats-url", &target, "--nats-connect-timeout", "3"])
            .env("NTPSCOPE_LOG", "warn")
            .output()
            .expect("agent");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: the agent connected");
        assert!(err.contains("cannot connect to NATS at"), "{what}: {err}");
    }
}
