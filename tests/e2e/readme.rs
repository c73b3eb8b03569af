//! The README's promises, run for real: `scripts/run.sh` (what `make run` starts after building)
//! brings the whole system up inside a private network namespace, with a live agent on an
//! interface named `eth0` there; the README's `curl` examples then run verbatim against it;
//! Ctrl-C stops everything cleanly; and a second run resumes on the same data.

use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use netlab::require_tools;
use serde_json::Value;

use crate::harness;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The README's example block: the shell text between the two markers, with its comments.
fn readme_examples() -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let start = readme.find("<!-- curl-examples: begin").expect("curl-examples begin marker");
    let end = readme.find("<!-- curl-examples: end -->").expect("curl-examples end marker");
    let block = &readme[start..end];
    let code = block.split("```sh\n").nth(1).and_then(|b| b.split("```").next()).expect("a ```sh block between the markers");
    code.to_string()
}

struct Netns(String);

impl Netns {
    fn new() -> Self {
        let name = format!("ntpscope-readme-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        let ok = |args: &[&str]| {
            let s = Command::new("ip").args(args).status().expect("ip");
            assert!(s.success(), "ip {args:?}");
        };
        ok(&["netns", "add", &name]);
        ok(&["-n", &name, "link", "set", "lo", "up"]);
        ok(&["-n", &name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer"]);
        ok(&["-n", &name, "addr", "add", "198.18.91.1/24", "dev", "eth0"]);
        ok(&["-n", &name, "link", "set", "eth0", "up"]);
        ok(&["-n", &name, "link", "set", "eth0-peer", "up"]);
        Self(name)
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }
}

impl Netns {
    /// Processes running inside the namespace.
    fn pids(&self) -> Vec<String> {
        let out = Command::new("ip").args(["netns", "pids", &self.0]).output().expect("ip netns pids");
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect()
    }
}

impl Drop for Netns {
    /// Nothing the test started outlives it: every process in the namespace is killed.
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = Command::new("kill").args(["-s", "KILL", &pid]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// `scripts/run.sh` in the namespace, its own process group (so that a Ctrl-C reaches it as it
/// would from a terminal), stdout collected.
struct Run {
    child: Child,
    out: Arc<Mutex<String>>,
}

impl Drop for Run {
    /// A failed test leaves nothing running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill").args(["-s", "KILL", "--", &format!("-{}", self.child.id())]).status();
            let _ = self.child.wait();
        }
    }
}

impl Run {
    fn start(ns: &Netns, dir: &Path) -> Self {
        let bin_dir = harness::bin("ntpscope-capture").parent().expect("bin dir").to_path_buf();
        for b in ["ntpscope-sink", "ntpscope-api", "ntpscope-migrate"] {
            harness::bin(b);
        }
        let mut child = ns
            .cmd(root().join("scripts/run.sh").to_str().expect("path"))
            .env("IFACE", "eth0")
            .env("BIN_DIR", bin_dir)
            .env("NTPSCOPE_STATE", dir.join("state"))
            .env("NTPSCOPE_DATA", dir.join("data"))
            .env("NTPSCOPE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(dir.join("run.stderr")).expect("stderr file"))
            .process_group(0)
            .spawn()
            .expect("scripts/run.sh");
        let out = Arc::new(Mutex::new(String::new()));
        let reader = BufReader::new(child.stdout.take().expect("stdout"));
        let sink = out.clone();
        std::thread::spawn(move || {
            for line in reader.lines().map_while(Result::ok) {
                sink.lock().expect("lock").push_str(&(line + "\n"));
            }
        });
        Self { child, out }
    }

    fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.out.lock().expect("lock").contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn text(&self) -> String {
        self.out.lock().expect("lock").clone()
    }

    /// Ctrl-C as a terminal sends it: SIGINT to the whole foreground process group.
    fn ctrl_c(&mut self) -> Option<i32> {
        let pgid = self.child.id();
        let _ = Command::new("kill").args(["-s", "INT", "--", &format!("-{pgid}")]).status();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = Command::new("kill").args(["-s", "KILL", "--", &format!("-{pgid}")]).status();
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn curl_json(ns: &Netns, url: &str) -> Option<Value> {
    let out = ns.cmd("curl").args(["-fsS", url]).output().ok()?;
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

fn poll(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    false
}

#[test]
fn run_sh_serves_the_readme_curl_examples_stops_on_ctrl_c_and_resumes() {
    require_tools(&["ip", "curl", "setsid"]).expect("prerequisites");
    let examples = readme_examples();
    assert!(examples.matches("curl ").count() >= 10, "too few examples: {examples}");
    let ns = Netns::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let api = "http://localhost:8000/api/ntp";

    let mut run = Run::start(&ns, dir.path());
    let stderr = || std::fs::read_to_string(dir.path().join("run.stderr")).unwrap_or_default();
    assert!(run.wait_for("ntpscope is running", Duration::from_secs(180)), "run.sh output:\n{}{}", run.text(), stderr());
    let text = run.text();
    assert!(text.contains("http://127.0.0.1:8000/docs") && text.contains("API token"), "{text}");
    let token = std::fs::read_to_string(dir.path().join("state/api-token")).expect("token");
    assert!(text.contains(token.trim()), "the token is printed");
    // The sample replay reaches the database (the sink commits every 5 s), and the live agent
    // reports, so health is green.
    let stored = poll(Duration::from_secs(60), || curl_json(&ns, &format!("{api}/history/clients/192.168.0.248")).is_some());
    assert!(stored, "sample not stored; {}", std::fs::read_to_string(dir.path().join("state/sink.log")).unwrap_or_default());
    let healthy =
        poll(Duration::from_secs(60), || curl_json(&ns, &format!("{api}/history/health")).is_some_and(|h| h["status"] == "healthy"));
    assert!(healthy, "{:?}", ns.cmd("curl").args(["-sS", &format!("{api}/history/health")]).output().map(|o| o.stdout));

    // Every example, verbatim, in one shell (TOKEN carries over), from a directory whose
    // `state/` is this run's state, as it is for `make run` in the checkout.
    let script = dir.path().join("examples.sh");
    std::fs::write(&script, &examples).expect("write");
    let out = ns.cmd("sh").arg("-ex").arg(&script).current_dir(dir.path()).output().expect("sh");
    let diag = || {
        ["/interfaces", "/history/service/statistics"]
            .map(|p| ns.cmd("curl").args(["-sS", &format!("{api}{p}")]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()))
    };
    assert!(
        out.status.success(),
        "{:?}\nREADME examples failed:\n{}\n(stdout, last 1000 bytes: {})",
        diag(),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout[out.stdout.len().saturating_sub(1000)..])
    );
    let csv = std::fs::read_to_string(dir.path().join("clients.csv")).expect("the export example writes clients.csv");
    assert!(csv.lines().next().is_some_and(|h| h.contains("client_ip")) && csv.lines().count() > 1, "{csv}");
    let total = |ns: &Netns| curl_json(ns, &format!("{api}/history/clients?page_size=1")).and_then(|v| v["total"].as_u64());
    let before = total(&ns).expect("total");

    // Ctrl-C: everything stops, exit 0, no process left behind.
    assert_eq!(run.ctrl_c(), Some(0));
    assert!(poll(Duration::from_secs(10), || ns.pids().is_empty()), "left running: {:?}", ns.pids());

    // A second run resumes on the same data and does not replay the sample again.
    let mut again = Run::start(&ns, dir.path());
    assert!(again.wait_for("ntpscope is running", Duration::from_secs(120)), "{}", again.text());
    assert!(again.text().contains("resuming on"), "{}", again.text());
    assert_eq!(total(&ns), Some(before));
    assert_eq!(again.ctrl_c(), Some(0));
}
