//! Namespaces, veths, a bridge, and the NTP peers that run inside them.

use std::{
    io::{BufRead, BufReader},
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::Duration,
};

use anyhow::{Context, bail};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Checks that the live-lab prerequisites are present.
pub fn require_tools(tools: &[&str]) -> anyhow::Result<()> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned));
    if uid.as_deref() != Some("0") {
        bail!("live network tests need root (network namespaces, raw capture)");
    }
    let missing: Vec<&str> = tools.iter().copied().filter(|t| which(t).is_none()).collect();
    if !missing.is_empty() {
        bail!("live network tests need {missing:?}; install them with scripts/install-deps.sh");
    }
    Ok(())
}

/// Finds a program on PATH or in the sbin directories.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':').chain(["/usr/sbin", "/sbin", "/usr/bin"]).map(|d| Path::new(d).join(tool)).find(|p| p.is_file())
}

fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args)).map(|_| ())
}

/// Two namespaces (server, clients) joined by a bridge; see the crate docs.
#[derive(Debug)]
pub struct Lab {
    tag: u32,
    /// Server namespace name.
    pub server_ns: String,
    /// Client namespace name.
    pub client_ns: String,
    bridge: String,
    /// Root-namespace end of the server's veth: capture here.
    pub server_if: String,
    /// Root-namespace end of the clients' veth.
    pub client_if: String,
    /// The server's IPv4 address.
    pub server_v4: Ipv4Addr,
    /// The server's IPv6 address.
    pub server_v6: Ipv6Addr,
    /// First client IPv4 address (ntpdig).
    pub client_v4: Ipv4Addr,
    /// Second client IPv4 address (the chrony client binds to it).
    pub client2_v4: Ipv4Addr,
    /// Client IPv6 address.
    pub client_v6: Ipv6Addr,
    /// Scratch directory for configs, pid files and captures.
    pub dir: tempfile::TempDir,
    children: Vec<Child>,
}

impl Lab {
    /// Creates the namespaces, links and addresses.
    pub fn new() -> anyhow::Result<Self> {
        for _ in 0..20 {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let tag = (std::process::id().wrapping_mul(7919).wrapping_add(n * 104_729)) % 100_000;
            match Self::create(tag) {
                Ok(lab) => return Ok(lab),
                Err(e) if e.to_string().contains("File exists") => {}
                Err(e) => return Err(e),
            }
        }
        bail!("could not find a free lab name")
    }

    fn create(tag: u32) -> anyhow::Result<Self> {
        let net = (18 + (tag % 2), (tag / 2) % 256);
        let v4 = |host: u8| Ipv4Addr::new(198, net.0 as u8, net.1 as u8, host);
        let v6 = |host: u16| Ipv6Addr::new(0x2001, 0x0db8, (tag % 65_536) as u16, 0, 0, 0, 0, host);
        let lab = Self {
            tag,
            server_ns: format!("ntpscope-s{tag}"),
            client_ns: format!("ntpscope-c{tag}"),
            bridge: format!("ntsb{tag}"),
            server_if: format!("ntss{tag}"),
            client_if: format!("ntsc{tag}"),
            server_v4: v4(1),
            server_v6: v6(1),
            client_v4: v4(2),
            client2_v4: v4(3),
            client_v6: v6(2),
            dir: tempfile::Builder::new().prefix("ntpscope-lab").tempdir()?,
            children: Vec::new(),
        };
        ip(&["link", "add", &lab.bridge, "type", "bridge"])?;
        // From here on, Drop cleans up whatever was created.
        ip(&["netns", "add", &lab.server_ns])?;
        ip(&["netns", "add", &lab.client_ns])?;
        ip(&["link", "set", &lab.bridge, "up"])?;
        for (root_if, ns) in [(&lab.server_if, &lab.server_ns), (&lab.client_if, &lab.client_ns)] {
            ip(&["link", "add", root_if, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
            ip(&["link", "set", root_if, "master", &lab.bridge, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        let (s4, c4, c24, s6, c6) = (
            format!("{}/24", lab.server_v4),
            format!("{}/24", lab.client_v4),
            format!("{}/24", lab.client2_v4),
            format!("{}/64", lab.server_v6),
            format!("{}/64", lab.client_v6),
        );
        ip(&["-n", &lab.server_ns, "addr", "add", &s4, "dev", "eth0"])?;
        ip(&["-n", &lab.server_ns, "addr", "add", &s6, "dev", "eth0", "nodad"])?;
        ip(&["-n", &lab.client_ns, "addr", "add", &c4, "dev", "eth0"])?;
        ip(&["-n", &lab.client_ns, "addr", "add", &c24, "dev", "eth0"])?;
        ip(&["-n", &lab.client_ns, "addr", "add", &c6, "dev", "eth0", "nodad"])?;
        Ok(lab)
    }

    /// A command run inside a namespace.
    pub fn in_ns(ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }

    /// Starts `chronyd` as an NTP server in the server namespace (no clock control, stratum 10).
    pub fn start_chrony_server(&mut self) -> anyhow::Result<()> {
        let conf = self.dir.path().join("chrony-server.conf");
        std::fs::write(
            &conf,
            format!(
                "local stratum 10\nallow all\nbindaddress {}\nbindaddress {}\ncmdport 0\npidfile {}\n",
                self.server_v4,
                self.server_v6,
                self.dir.path().join("chronyd-server.pid").display()
            ),
        )?;
        let log = std::fs::File::create(self.dir.path().join("chronyd-server.log"))?;
        let child = Self::in_ns(&self.server_ns, "chronyd")
            .args(["-x", "-d", "-u", "root", "-f"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting chronyd")?;
        self.children.push(child);
        // chronyd binds its sockets right after start; give it a moment and check it is alive.
        std::thread::sleep(Duration::from_millis(500));
        if let Some(c) = self.children.last_mut()
            && let Some(status) = c.try_wait()?
        {
            let log = std::fs::read_to_string(self.dir.path().join("chronyd-server.log")).unwrap_or_default();
            bail!("chronyd server exited with {status}: {log}");
        }
        Ok(())
    }

    /// Stops the server started by [`Lab::start_chrony_server`].
    pub fn stop_chrony_server(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }

    /// One `ntpdig` query from the client namespace.
    pub fn ntpdig(&self, server: &str, timeout_s: u32) -> anyhow::Result<Output> {
        Self::in_ns(&self.client_ns, "ntpdig").args(["-t", &timeout_s.to_string(), server]).output().context("running ntpdig")
    }

    /// `chronyd -Q` (measure, never set the clock) with `iburst` from the second client address.
    pub fn chrony_client(&self, server: &str) -> anyhow::Result<Output> {
        Self::in_ns(&self.client_ns, "chronyd")
            .args(["-Q", "-u", "root", "-t", "15"])
            .arg(format!("server {server} iburst"))
            .arg(format!("bindacqaddress {}", self.client2_v4))
            .arg(format!("pidfile {}", self.dir.path().join("chronyd-client.pid").display()))
            .output()
            .context("running chronyd -Q")
    }

    /// Starts `tcpdump` on a root-namespace interface as an independent witness; returns once it
    /// is listening.
    pub fn witness(&self, iface: &str, file: &Path) -> anyhow::Result<Witness> {
        let mut child = Command::new("tcpdump")
            .args(["-i", iface, "-n", "-U", "-w"])
            .arg(file)
            .arg("udp port 123")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tcpdump")?;
        let stderr = child.stderr.take().context("tcpdump stderr")?;
        wait_for_line(stderr, "listening on", Duration::from_secs(10)).context("tcpdump did not start")?;
        Ok(Witness { child, file: file.to_path_buf() })
    }

    /// The lab's tag (unique per lab in this process).
    pub fn tag(&self) -> u32 {
        self.tag
    }
}

/// Waits until a line containing `needle` appears on `reader` (read on a helper thread).
pub fn wait_for_line(reader: impl std::io::Read + Send + 'static, needle: &str, timeout: Duration) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel();
    let needle = needle.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if line.contains(&needle) {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(timeout).map_err(|_| anyhow::anyhow!("timed out waiting for a line containing the marker"))
}

/// A running `tcpdump` writing a capture file.
#[derive(Debug)]
pub struct Witness {
    child: Child,
    file: PathBuf,
}

impl Witness {
    /// Stops tcpdump (SIGINT, so it flushes) and returns `tcpdump -nr` lines of what it saw.
    pub fn finish(mut self) -> anyhow::Result<Vec<String>> {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        let out = run(Command::new("tcpdump").args(["-n", "-r"]).arg(&self.file))?;
        Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect())
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_chrony_server();
        // Deleting a namespace deletes the veth pairs that have an end in it.
        let _ = Command::new("ip").args(["netns", "del", &self.server_ns]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.client_ns]).status();
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
    }
}
