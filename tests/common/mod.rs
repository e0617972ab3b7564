//! Harness for wsgate's black-box tests: starts the real `wsgate` binary on free
//! loopback ports with a route file in a temporary directory, reads its admin
//! endpoints over plain TCP, and spawns the real peers (Node `ws`, Python
//! `websockets`, wscat, websocat) that `tests/setup.sh` installs.
//!
//! Every wait is bounded: helpers take a limit in seconds and panic with what they
//! were waiting for when it runs out.
#![allow(dead_code)]

pub mod edge;
pub mod frames;
pub mod http;
pub mod jaeger;
pub mod metrics;
pub mod peers;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use edge::*;
#[allow(unused_imports)]
pub use frames::*;
#[allow(unused_imports)]
pub use http::*;
#[allow(unused_imports)]
pub use metrics::*;
#[allow(unused_imports)]
pub use peers::*;

/// The binary under test.
pub const WSGATE: &str = env!("CARGO_BIN_EXE_wsgate");

/// Runs `fut`, panicking with `what` when it takes longer than `secs`.
pub async fn within<T>(secs: f64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs_f64(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs}s waiting for {what}"),
    }
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `secs`.
pub async fn eventually<T, F, Fut>(secs: f64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where `tests/setup.sh` installs the peers.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("WSGATE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/wsgate"))
}

fn installed(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run tests/setup.sh (it installs the test peers)",
        path.display()
    );
    path
}

/// `node_modules` holding ws, wscat, socket.io, sockjs (the NODE_PATH for peers).
pub fn node_modules() -> PathBuf {
    installed(cache_dir().join("peers-node/node_modules"))
}
/// The virtualenv's Python, with `websockets`.
pub fn python() -> PathBuf {
    installed(cache_dir().join("venv/bin/python"))
}
/// The `wscat` command.
pub fn wscat() -> PathBuf {
    installed(cache_dir().join("peers-node/node_modules/.bin/wscat"))
}
/// The `websocat` command.
pub fn websocat() -> PathBuf {
    installed(cache_dir().join("tools/bin/websocat"))
}
/// `tests/peers`, the peer programs' sources.
pub fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers")
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A `WebSocketRoute` document for standalone mode.
#[derive(Clone, Debug)]
pub struct Route {
    name: String,
    namespace: Option<String>,
    hostnames: Vec<String>,
    path: (String, String),
    backends: Vec<(String, u32)>,
    fields: Vec<(String, String)>,
}

impl Route {
    /// A route for every host and path (`PathPrefix /`) with no backend yet.
    pub fn new(name: &str) -> Self {
        Route {
            name: name.into(),
            namespace: None,
            hostnames: vec![],
            path: ("PathPrefix".into(), "/".into()),
            backends: vec![],
            fields: vec![],
        }
    }
    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = Some(ns.into());
        self
    }
    pub fn host(mut self, host: &str) -> Self {
        self.hostnames.push(host.into());
        self
    }
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.path = ("PathPrefix".into(), prefix.into());
        self
    }
    pub fn exact(mut self, path: &str) -> Self {
        self.path = ("Exact".into(), path.into());
        self
    }
    pub fn backend(self, addr: impl ToString) -> Self {
        self.weighted(addr, 1)
    }
    pub fn weighted(mut self, addr: impl ToString, weight: u32) -> Self {
        self.backends.push((addr.to_string(), weight));
        self
    }
    /// Sets a `spec` field to a YAML value written in flow style, e.g.
    /// `.set("keepalive", "{interval: 1s, timeout: 500ms}")`.
    pub fn set(mut self, field: &str, flow_yaml: &str) -> Self {
        self.fields.retain(|(f, _)| f != field);
        self.fields.push((field.into(), flow_yaml.into()));
        self
    }
    /// Keepalive off on both legs, so the proxy adds no frame of its own.
    pub fn no_keepalive(self) -> Self {
        self.set(
            "keepalive",
            "{interval: 0s, timeout: 0s, backend: {interval: 0s, timeout: 0s}}",
        )
    }

    pub fn yaml(&self) -> String {
        let mut y = String::from("apiVersion: wsgate.io/v1alpha1\nkind: WebSocketRoute\n");
        match &self.namespace {
            Some(ns) => y += &format!("metadata: {{name: {}, namespace: {ns}}}\n", self.name),
            None => y += &format!("metadata: {{name: {}}}\n", self.name),
        }
        y += "spec:\n";
        if !self.hostnames.is_empty() {
            y += &format!("  hostnames: [{}]\n", quoted(&self.hostnames));
        }
        y += &format!(
            "  path: {{type: {}, value: \"{}\"}}\n",
            self.path.0, self.path.1
        );
        y += "  backends:\n";
        for (addr, weight) in &self.backends {
            y += &format!("    - address: \"{addr}\"\n      weight: {weight}\n");
        }
        for (field, value) in &self.fields {
            y += &format!("  {field}: {value}\n");
        }
        y
    }
}

fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Several routes as one multi-document YAML file.
pub fn routes_yaml(routes: &[Route]) -> String {
    routes
        .iter()
        .map(|r| format!("---\n{}", r.yaml()))
        .collect()
}

/// How to start wsgate.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Also listen for TLS (`--tls-listen`).
    pub tls: bool,
    /// `--drain-timeout`, e.g. "2s".
    pub drain_timeout: Option<String>,
    /// Pass the directory holding `routes.yaml` as `--config` instead of the file.
    pub config_dir: bool,
    /// More command-line arguments, e.g. `["--header-read-timeout", "1s"]`.
    pub args: Vec<String>,
    /// More environment variables, e.g. `SSL_CERT_FILE` for a test CA.
    pub env: Vec<(String, String)>,
    /// Bind the plain listener to `[::]` (dual-stack: IPv4 clients arrive as
    /// IPv4-mapped IPv6 addresses); `listen` stays 127.0.0.1 for connecting.
    pub dual_stack: bool,
}

/// A running `wsgate serve`, killed when dropped (its log is printed when the
/// test failed).
pub struct Wsgate {
    child: Option<Child>,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub tls: Option<SocketAddr>,
    /// The directory holding `routes.yaml` (and the log).
    pub routes_dir: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Wsgate {
    /// Starts wsgate with `routes` as its route file and waits for `/readyz` = 200.
    pub async fn start(routes: &str) -> Wsgate {
        Wsgate::start_with(Options::default(), routes).await
    }

    pub async fn start_with(opts: Options, routes: &str) -> Wsgate {
        // A port picked by binding :0 can be taken by a parallel test before wsgate
        // binds it: start again on fresh ports when that happens.
        for attempt in 0..3 {
            let dir = tempfile::tempdir().expect("tempdir");
            let routes_dir = dir.path().join("routes");
            std::fs::create_dir(&routes_dir).unwrap();
            let file = routes_dir.join("routes.yaml");
            std::fs::write(&file, routes).unwrap();
            let config = if opts.config_dir {
                routes_dir.clone()
            } else {
                file
            };
            let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let tls: Option<SocketAddr> = opts
                .tls
                .then(|| format!("127.0.0.1:{}", free_port()).parse().unwrap());
            let log = dir.path().join("wsgate.log");
            let log_file = std::fs::File::create(&log).unwrap();
            let mut cmd = Command::new(WSGATE);
            cmd.arg("serve")
                .arg("--config")
                .arg(&config)
                .arg("--listen")
                .arg(if opts.dual_stack {
                    format!("[::]:{}", listen.port())
                } else {
                    listen.to_string()
                })
                .arg("--admin-listen")
                .arg(admin.to_string());
            if let Some(tls) = tls {
                cmd.arg("--tls-listen").arg(tls.to_string());
            }
            if let Some(d) = &opts.drain_timeout {
                cmd.arg("--drain-timeout").arg(d);
            }
            cmd.args(&opts.args);
            cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
            cmd.env(
                "RUST_LOG",
                std::env::var("WSGATE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
            let child = cmd.spawn().expect("spawn wsgate");
            let mut gate = Wsgate {
                child: Some(child),
                listen,
                admin,
                tls,
                routes_dir,
                log,
                _dir: dir,
            };
            match gate.wait_ready(15.0).await {
                Ok(()) => return gate,
                Err(exited) => {
                    let log = gate.log_text();
                    if attempt < 2 && log.to_lowercase().contains("in use") {
                        continue;
                    }
                    panic!("wsgate did not become ready ({exited}); its log:\n{log}");
                }
            }
        }
        unreachable!()
    }

    async fn wait_ready(&mut self, secs: f64) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Err(format!("exited with {status}"));
            }
            // A 200 proves little alone: a parallel test's wsgate may have taken
            // the admin port this one failed to bind. The proxy port must answer
            // too, and this wsgate must still be running.
            if let Ok(r) = http_get(self.admin, "/readyz").await {
                if r.status == 200
                    && tokio::net::TcpStream::connect(self.listen).await.is_ok()
                    && self.child.as_mut().unwrap().try_wait().unwrap().is_none()
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("no 200 from /readyz within {secs}s"));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `ws://127.0.0.1:PORT{path}`
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.listen, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("wsgate running").id()
    }

    /// Everything wsgate logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Scrapes `/metrics`.
    pub async fn metrics(&self) -> Metrics {
        let r = within(5.0, "GET /metrics", http_get(self.admin, "/metrics"))
            .await
            .expect("GET /metrics");
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        Metrics::parse(&r.text())
    }

    /// Polls `/metrics` until `name{labels}` satisfies `ok`; returns the value.
    pub async fn wait_metric(
        &self,
        secs: f64,
        name: &str,
        labels: &[(&str, &str)],
        ok: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        loop {
            let v = self.metrics().await.get(name, labels);
            if ok(v) {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {secs}s waiting for metric {name}{labels:?}; last value {v}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `/connections` as parsed JSON (an array).
    pub async fn connections(&self) -> Vec<serde_json::Value> {
        let r = within(
            5.0,
            "GET /connections",
            http_get(self.admin, "/connections"),
        )
        .await
        .expect("GET /connections");
        assert_eq!(r.status, 200, "GET /connections: {}", r.text());
        match serde_json::from_slice(&r.body) {
            Ok(serde_json::Value::Array(a)) => a,
            other => panic!("/connections is not a JSON array: {other:?}: {}", r.text()),
        }
    }

    /// Replaces a file in the routes directory the way editors and ConfigMap
    /// updates do: write a temporary file next to it, then rename it into place.
    pub fn write_routes(&self, file: &str, content: &str) {
        let tmp = self.routes_dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, self.routes_dir.join(file)).unwrap();
    }

    /// Replaces `routes.yaml` and waits until wsgate reports the reload with
    /// `result` ("success" or "error").
    pub async fn reload(&self, content: &str, result: &str) {
        let before = self
            .metrics()
            .await
            .get("wsgate_config_reloads_total", &[("result", result)]);
        self.write_routes("routes.yaml", content);
        self.wait_metric(
            10.0,
            "wsgate_config_reloads_total",
            &[("result", result)],
            |v| v > before,
        )
        .await;
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, secs: f64) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "wsgate did not exit within {secs}s; log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A field of /proc/PID/status in KiB (VmRSS, VmHWM).
    pub fn proc_status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/PID/status"))
    }

    /// Resets the peak RSS (VmHWM) to the current RSS (proc(5), clear_refs "5").
    pub fn reset_peak_rss(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").expect("clear_refs");
    }
}

impl Drop for Wsgate {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(200).collect();
            eprintln!("---- wsgate log (last {} lines) ----", tail.len());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
            eprintln!("---- end of wsgate log ----");
        }
    }
}

/// Runs `wsgate ARGS...` to completion (for `check`), for at most 20 s; returns
/// (exit code, stdout and stderr).
pub fn wsgate_cmd(args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(WSGATE)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("run wsgate");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`wsgate {}` did not finish within 20s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    (status.code().unwrap_or(-1), text)
}
