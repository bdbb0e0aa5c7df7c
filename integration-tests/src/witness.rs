//! The witness (`sitegrid --witness`) as a real process, for sites that need a grant to
//! take a peer offline.

use std::fs::File;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use sitegrid_proto::v1;
use sitegrid_proto::v1::witness_client::WitnessClient;

use crate::node::{die_with_parent, node_binary};
use crate::ports::free_loopback_addr;
use crate::wait::eventually;

/// A running witness; killed when dropped.
#[derive(Debug)]
pub struct WitnessProcess {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    lease: Duration,
    /// The `[security]` section of its config (TLS), if any.
    security: String,
    child: Option<Child>,
}

impl WitnessProcess {
    /// Starts a witness on a free loopback port whose grants last `lease`, and waits
    /// until it answers.
    pub async fn start(lease: Duration) -> anyhow::Result<WitnessProcess> {
        WitnessProcess::start_secured(lease, "").await
    }

    /// Starts a witness with `security` (a `[security]` section with TLS; empty for
    /// none) and waits until it listens.
    pub async fn start_secured(lease: Duration, security: &str) -> anyhow::Result<WitnessProcess> {
        let mut witness = WitnessProcess {
            dir: tempfile::Builder::new()
                .prefix("sitegrid-witness-")
                .tempdir()?,
            addr: free_loopback_addr(),
            lease,
            security: security.to_string(),
            child: None,
        };
        witness.launch().await?;
        Ok(witness)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `[witness]` TOML for a site node that uses this witness.
    pub fn site_toml(&self) -> String {
        format!("[witness]\nendpoint = \"{}\"\n", self.addr)
    }

    /// What the witness logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("witness.log")).unwrap_or_default()
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let config = self.dir.path().join("witness.toml");
        std::fs::write(
            &config,
            format!(
                "[witness]\nlisten = \"{}\"\nlease = \"{}ms\"\n{}",
                self.addr,
                self.lease.as_millis(),
                self.security
            ),
        )?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("witness.log"))?;
        let mut command = Command::new(node_binary());
        command
            .arg("--witness")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        die_with_parent(&mut command);
        self.child = Some(command.spawn().context("cannot start the witness")?);
        eventually("the witness to answer", Duration::from_secs(30), || async {
            if self.security.is_empty() {
                self.grants().await.is_ok()
            } else {
                self.log().contains("witness serving")
            }
        })
        .await
    }

    /// The grants the witness holds: (holder, peer site).
    pub async fn grants(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut client = WitnessClient::connect(format!("http://{}", self.addr)).await?;
        let grants = client
            .grants(v1::GrantsRequest {})
            .await?
            .into_inner()
            .grants;
        Ok(grants
            .into_iter()
            .map(|g| (g.holder, g.peer_site))
            .collect())
    }

    /// Kills the witness (SIGKILL): it forgets every grant.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.launch().await
    }
}

impl Drop for WitnessProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
