//! One `sitegrid` node as a real process.
//!
//! Each node gets its own directory (config file, data dir, log), free loopback ports
//! chosen before it starts (so peers can be told about them), and is killed when the
//! [`NodeProcess`] is dropped or the test process dies (`PR_SET_PDEATHSIG`), so no test
//! leaves a process behind.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sitegrid_proto::v1;
use sitegrid_proto::v1::admin_client::AdminClient;

use crate::ports::free_loopback_addr;

/// How long a node may take to report ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Path of the node program built with this crate (in the profile directory of the
/// running test or program), or `SITEGRID_NODE_BIN` to test another build (e.g. a
/// release `sitegrid`).
pub fn node_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SITEGRID_NODE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the running executable's path");
    // target/<profile>/deps/<test> or target/<profile>/<program>
    let mut profile_dir = exe.parent().expect("an executable is in a directory");
    if profile_dir.file_name().is_some_and(|name| name == "deps") {
        profile_dir = profile_dir
            .parent()
            .expect("deps is in the profile directory");
    }
    profile_dir.join(format!("sitegrid-node{}", std::env::consts::EXE_SUFFIX))
}

/// Path of `sitegridctl` of this build (the client crate builds it into the same profile
/// directory when the workspace's tests are built).
pub fn ctl_binary() -> PathBuf {
    let ctl = node_binary().with_file_name(format!("sitegridctl{}", std::env::consts::EXE_SUFFIX));
    assert!(
        ctl.exists(),
        "{} is missing: build it with `cargo build -p sitegrid-client`",
        ctl.display()
    );
    ctl
}

/// What a node is and how it is configured.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Node name.
    pub name: String,
    /// Site name.
    pub site: String,
    /// Site id.
    pub site_id: u8,
    /// More TOML appended to the generated config (sections other than `[node]`).
    pub extra_toml: String,
    /// Start without a config file, passing the node's addresses through `SITEGRID_*`
    /// variables instead (the no-config default path).
    pub without_config_file: bool,
    /// The program to run; `None` = [`node_binary`].
    pub binary: Option<PathBuf>,
    /// `RUST_LOG` of the node; `None` = `SITEGRID_TEST_LOG` or `info`.
    pub log_filter: Option<String>,
    /// Gossip addresses (`IP:PORT` or `NAME:PORT`) of the site's other nodes.
    pub seeds: Vec<String>,
    /// Test-only faults switched on in the node (`sitegrid_server::faults`).
    pub faults: Vec<String>,
    /// How far the node's clock is shifted from the machine's (`node.clock_offset_ms`).
    pub clock_offset_ms: i64,
    /// `node.worker_threads`; `None` = the default (one per core).
    pub worker_threads: Option<usize>,
    /// The `[security]` section (with its subsections): anonymous access unless a test
    /// sets it with [`NodeSpec::with_security`].
    pub security: String,
}

/// The `[security]` of test nodes that don't test security.
pub const ANONYMOUS: &str = "[security]\nauth = \"none\"\n";

/// The addresses a node listens on, chosen before it starts so peers can be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeAddrs {
    /// gRPC.
    pub grpc: SocketAddr,
    /// HTTP.
    pub http: SocketAddr,
    /// Gossip (UDP).
    pub gossip: SocketAddr,
}

impl NodeAddrs {
    /// Free loopback addresses.
    pub fn free() -> NodeAddrs {
        NodeAddrs {
            grpc: free_loopback_addr(),
            http: free_loopback_addr(),
            gossip: free_loopback_addr(),
        }
    }
}

impl NodeSpec {
    /// A node `name` of site `site1`.
    pub fn new(name: &str) -> NodeSpec {
        NodeSpec {
            name: name.to_string(),
            site: "site1".to_string(),
            site_id: 1,
            extra_toml: String::new(),
            without_config_file: false,
            binary: None,
            log_filter: None,
            seeds: Vec::new(),
            faults: Vec::new(),
            clock_offset_ms: 0,
            worker_threads: None,
            security: ANONYMOUS.to_string(),
        }
    }

    /// Replaces the node's `[security]` section (TOML starting with `[security]`).
    pub fn with_security(mut self, toml: &str) -> NodeSpec {
        self.security = toml.to_string();
        self
    }

    /// Switches a test-only fault on in the node (see `sitegrid_server::faults`).
    pub fn with_fault(mut self, fault: &str) -> NodeSpec {
        self.faults.push(fault.to_string());
        self
    }

    /// Appends TOML to the node's config.
    pub fn with_toml(mut self, toml: &str) -> NodeSpec {
        self.extra_toml.push_str(toml);
        self.extra_toml.push('\n');
        self
    }
}

/// A running (or stopped) node process.
#[derive(Debug)]
pub struct NodeProcess {
    spec: NodeSpec,
    dir: tempfile::TempDir,
    grpc: SocketAddr,
    http: SocketAddr,
    gossip: SocketAddr,
    child: Option<Child>,
}

impl NodeProcess {
    /// Starts a node on free ports and waits until it reports ready.
    pub async fn start(spec: NodeSpec) -> anyhow::Result<NodeProcess> {
        let mut node = NodeProcess::launch_at(spec, NodeAddrs::free())?;
        node.wait_ready().await?;
        Ok(node)
    }

    /// Starts a node on `addrs` without waiting for it to be ready.
    pub fn launch_at(spec: NodeSpec, addrs: NodeAddrs) -> anyhow::Result<NodeProcess> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("sitegrid-{}-", spec.name))
            .tempdir()?;
        let mut node = NodeProcess {
            spec,
            dir,
            grpc: addrs.grpc,
            http: addrs.http,
            gossip: addrs.gossip,
            child: None,
        };
        node.launch()?;
        Ok(node)
    }

    /// The node's directory (config, data, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }

    /// HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// Its addresses.
    pub fn addrs(&self) -> NodeAddrs {
        NodeAddrs {
            grpc: self.grpc,
            http: self.http,
            gossip: self.gossip,
        }
    }

    /// Its spec.
    pub fn spec(&self) -> &NodeSpec {
        &self.spec
    }

    /// Whether `/ready` answers 200 now.
    pub async fn is_ready(&self) -> bool {
        matches!(crate::http::get(self.http, "/ready").await, Ok((200, _)))
    }

    /// Replaces this node's data with an empty directory (for "a brand-new node" tests;
    /// the node must be stopped).
    pub fn wipe_data(&mut self) -> anyhow::Result<()> {
        let data = self.data_dir();
        if data.exists() {
            std::fs::remove_dir_all(&data)?;
        }
        Ok(())
    }

    /// gRPC endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// A gRPC channel to the node.
    pub async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        Ok(tonic::transport::Endpoint::from_shared(self.endpoint())?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("sitegrid.toml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("node.log")
    }

    /// What the node has logged so far (all its runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let spec = &self.spec;
        let seeds: Vec<String> = spec.seeds.iter().map(|s| format!("\"{s}\"")).collect();
        let config = format!(
            "[node]\nname = {name:?}\nsite = {site:?}\nsite_id = {site_id}\nlisten = \"{grpc}\"\n\
             http = \"{http}\"\ngossip = \"{gossip}\"\ndata_dir = {data:?}\nseeds = [{seeds}]\n\
             clock_offset_ms = {offset}\n{threads}\n{extra}\n{security}",
            name = spec.name,
            site = spec.site,
            site_id = spec.site_id,
            grpc = self.grpc,
            http = self.http,
            gossip = self.gossip,
            data = self.data_dir().display().to_string(),
            seeds = seeds.join(", "),
            offset = spec.clock_offset_ms,
            threads = spec
                .worker_threads
                .map(|threads| format!("worker_threads = {threads}\n"))
                .unwrap_or_default(),
            extra = spec.extra_toml,
            security = spec.security,
        );
        std::fs::write(self.config_path(), config)?;
        Ok(())
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let binary = self.spec.binary.clone().unwrap_or_else(node_binary);
        let log_filter = self
            .spec
            .log_filter
            .clone()
            .or_else(|| std::env::var("SITEGRID_TEST_LOG").ok())
            .unwrap_or_else(|| "info".into());
        let mut command = Command::new(&binary);
        command
            .current_dir(self.dir.path())
            .env_remove("SITEGRID_CONFIG")
            .env("RUST_LOG", log_filter)
            .env("SITEGRID_FAULTS", self.spec.faults.join(","))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if self.spec.without_config_file {
            command
                .env("SITEGRID_NODE_NAME", &self.spec.name)
                .env("SITEGRID_LISTEN", self.grpc.to_string())
                .env("SITEGRID_HTTP", self.http.to_string())
                .env("SITEGRID_GOSSIP", self.gossip.to_string());
        } else {
            self.write_config()?;
            command.arg("--config").arg(self.config_path());
        }
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until `/ready` answers 200; fails early if the process exits.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        self.wait_until("ready", |addrs| async move {
            matches!(crate::http::get(addrs.http, "/ready").await, Ok((200, _)))
        })
        .await
    }

    /// Waits until the node serves requests (started and caught up with its site), as
    /// `cluster status` says; unlike [`NodeProcess::wait_ready`] this holds in a fenced
    /// site too. Fails early if the process exits.
    pub async fn wait_serving(&mut self) -> anyhow::Result<()> {
        self.wait_until("serving", |addrs| serving(addrs.grpc))
            .await
    }

    /// Waits up to [`START_TIMEOUT`] until `condition` holds of the node's addresses
    /// (being `what`), failing early, with the node's log, if the process exits.
    async fn wait_until<Fut>(
        &mut self,
        what: &str,
        condition: impl Fn(NodeAddrs) -> Fut,
    ) -> anyhow::Result<()>
    where
        Fut: Future<Output = bool>,
    {
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.try_exit_status()? {
                bail!(
                    "node {} exited with {status} before {what}; log:\n{}",
                    self.spec.name,
                    self.log()
                );
            }
            if condition(self.addrs()).await {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                bail!(
                    "node {} not {what} after {START_TIMEOUT:?}; log:\n{}",
                    self.spec.name,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn try_exit_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match &mut self.child {
            Some(child) => Ok(child.try_wait()?),
            None => bail!("node {} is not running", self.spec.name),
        }
    }

    /// Shifts the node's clock by `offset_ms` from its next start on.
    pub fn set_clock_offset(&mut self, offset_ms: i64) {
        self.spec.clock_offset_ms = offset_ms;
    }

    /// Replaces the test-only faults switched on in the node from its next start on.
    pub fn set_faults(&mut self, faults: Vec<String>) {
        self.spec.faults = faults;
    }

    /// Replaces the TOML appended to the node's config from its next start on.
    pub fn set_extra_toml(&mut self, toml: String) {
        self.spec.extra_toml = toml;
    }

    /// Whether the process was started and not killed or stopped since (it may have
    /// exited by itself).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id, while running.
    pub fn pid(&self) -> anyhow::Result<Pid> {
        let child = self.child.as_ref().context("node is not running")?;
        Ok(Pid::from_raw(i32::try_from(child.id())?))
    }

    /// SIGKILLs the node and reaps it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            // SIGKILL also ends a paused (SIGSTOPped) process.
            child.kill().ok();
            child.wait()?;
        }
        Ok(())
    }

    /// Asks the node to stop (SIGTERM) and waits for it; returns its exit status.
    pub async fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let pid = self.pid()?;
        kill(pid, Signal::SIGTERM)?;
        let mut child = self.child.take().expect("pid implies a child");
        let status = tokio::task::spawn_blocking(move || child.wait()).await??;
        Ok(status)
    }

    /// Starts the node again with the same config, ports and data, and waits for ready.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.restart_without_waiting()?;
        self.wait_ready().await
    }

    /// Starts the node again (killing it first if it runs) without waiting for ready:
    /// for restarting several nodes that need each other.
    pub fn restart_without_waiting(&mut self) -> anyhow::Result<()> {
        self.kill()?;
        self.launch()
    }

    /// Freezes the node (SIGSTOP).
    pub fn pause(&self) -> anyhow::Result<()> {
        kill(self.pid()?, Signal::SIGSTOP)?;
        Ok(())
    }

    /// Sends the node `signal` (SIGHUP to reload its TLS files, say).
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        kill(self.pid()?, signal)?;
        Ok(())
    }

    /// Thaws a frozen node (SIGCONT).
    pub fn resume(&self) -> anyhow::Result<()> {
        kill(self.pid()?, Signal::SIGCONT)?;
        Ok(())
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Whether the node at `grpc` says it serves requests now.
async fn serving(grpc: SocketAddr) -> bool {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{grpc}")) else {
        return false;
    };
    let Ok(channel) = endpoint
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
    else {
        return false;
    };
    AdminClient::new(channel)
        .cluster_status(v1::ClusterStatusRequest {})
        .await
        .is_ok_and(|status| status.into_inner().ready)
}

/// Makes the child die with the thread that spawned it, so a crashed or killed test run
/// leaves no node behind.
pub(crate) fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only calls prctl, which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}

/// Runs the node program with `args` and `env` until it exits; returns its status and
/// its output (stdout and stderr).
pub fn run_to_exit(
    args: &[&str],
    env: &[(&str, &str)],
    cwd: &Path,
) -> anyhow::Result<(ExitStatus, String)> {
    let mut command = Command::new(node_binary());
    command
        .args(args)
        .current_dir(cwd)
        .env_remove("SITEGRID_CONFIG")
        .stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    die_with_parent(&mut command);
    let output = command.output()?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Ok((output.status, text))
}
