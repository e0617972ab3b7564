//! One `wsgate run` replica: the real binary, running as the least-privilege
//! ServiceAccount, its stderr in the control plane's state dir, killed on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cluster::{Cluster, WSGATE_NS};
use crate::within;

/// The binary under test.
const WSGATE: &str = env!("CARGO_BIN_EXE_wsgate");
/// The Lease every replica of the test competes for.
pub const LEASE: &str = "wsgate-test";

/// A running replica.
pub struct Gateway {
    child: Child,
    /// `--identity`.
    pub identity: String,
    /// `--listen` (ws://).
    pub listen: SocketAddr,
    /// `--tls-listen` (wss://).
    pub tls: SocketAddr,
    /// `--admin-listen`.
    pub admin: SocketAddr,
    /// Its stderr.
    pub log: PathBuf,
}

impl Gateway {
    /// Starts replica number `n` (ports 8080+n, 8443+n, 9090+n on 127.0.0.1: the
    /// namespace is the test's own, and the control plane's ports are above 20000)
    /// and waits until `/readyz` answers 200.
    pub async fn start(cluster: &Cluster, identity: &str, n: u16) -> Result<Gateway> {
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port + n));
        let (listen, tls, admin) = (addr(8080), addr(8443), addr(9090));
        let log = cluster.state.join(format!("wsgate-{identity}.log"));
        let stderr = std::fs::File::create(&log)?;
        let child = Command::new(WSGATE)
            .arg("run")
            .arg("--kubeconfig")
            .arg(&cluster.wsgate_kubeconfig)
            .args([
                "--lease-namespace",
                WSGATE_NS,
                "--lease-name",
                LEASE,
                "--identity",
                identity,
            ])
            .args([
                "--listen",
                &listen.to_string(),
                "--tls-listen",
                &tls.to_string(),
            ])
            .args([
                "--admin-listen",
                &admin.to_string(),
                "--drain-timeout",
                "1s",
            ])
            // The fake pods' block (scenarios 10 and 13 route to `address`es there);
            // loopback, where wsgate's own listeners are, stays refused.
            .args(["--allow-address-backends", "192.0.2.0/24"])
            // Rotated Secrets within the scenarios' bounds (read by name, polled).
            .args(["--refs-refresh", "1s"])
            // Gateway API data-plane ports below the control plane's (above 20000).
            .args(["--gateway-ports", "7000-7099"])
            .args(["--gateway-pod-selector", "app=wsgate-test"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("cannot start wsgate run")?;
        let mut gw = Gateway {
            child,
            identity: identity.to_owned(),
            listen,
            tls,
            admin,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = gw.child.try_wait() {
                bail!("wsgate {identity} exited: {status}\n{}", gw.log_tail(20));
            }
            if let Ok((200, _)) = gw.get("/readyz").await {
                return Ok(gw);
            }
            if Instant::now() > deadline {
                bail!(
                    "wsgate {identity}: /readyz not 200 within 30s\n{}",
                    gw.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET path` on the admin listener: status and body (5 s bound).
    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        within(5.0, &format!("GET {path} from the admin listener"), async {
            let mut tcp = tokio::net::TcpStream::connect(self.admin).await?;
            let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
            tcp.write_all(req.as_bytes()).await?;
            let mut buf = Vec::new();
            tcp.read_to_end(&mut buf).await?;
            let text = String::from_utf8_lossy(&buf).into_owned();
            let status = text
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .context("no HTTP status line")?;
            let body = text
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_owned())
                .unwrap_or_default();
            Ok((status, body))
        })
        .await?
    }

    /// The sum of every sample of `name` whose labels include all of `labels`
    /// (`key="value"` pairs); None when the metric has no such sample.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> Result<Option<f64>> {
        let (status, body) = self.get("/metrics").await?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(sum_samples(&body, name, labels))
    }

    /// The last lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Its whole log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, like a crashed pod: no lease release, no drain.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sums the samples of `name` carrying all `labels` in Prometheus text.
pub fn sum_samples(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, series_labels) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let have: Vec<&str> = series_labels.split(',').collect();
        if labels.iter().all(|l| have.contains(l)) {
            if let Ok(v) = value.parse::<f64>() {
                *found.get_or_insert(0.0) += v;
            }
        }
    }
    found
}
