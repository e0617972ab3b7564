//! The load balancers and proxies in front of wsgate in `tests/client_address.rs`:
//! HAProxy 2.6 (`haproxy -db`) and NGINX with its stream module (`daemon off`),
//! installed by `tests/setup.sh` from Debian, each run from a configuration written
//! to a temporary directory and killed when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn installed(cmd: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(cmd);
        if p.exists() {
            return p;
        }
    }
    panic!("{cmd} is missing: run tests/setup.sh (it installs HAProxy and NGINX)");
}

/// A running HAProxy or NGINX.
pub struct EdgeProxy {
    child: Child,
    pub dir: tempfile::TempDir,
    log: PathBuf,
}

impl Drop for EdgeProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.log.display(), self.log_text());
        }
    }
}

impl EdgeProxy {
    /// HAProxy with `body` (frontends and backends) after a `global`/`defaults`
    /// section that has a stats socket at `<dir>/haproxy.sock`. `{dir}` in `body`
    /// is replaced by the directory. Waits until every port in `ports` accepts.
    pub async fn haproxy(body: &str, ports: &[u16]) -> EdgeProxy {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let cfg = format!(
            "global\n  stats socket {d}/haproxy.sock mode 600 level admin\n\n\
             defaults\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\n{}",
            body.replace("{dir}", &d)
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let log = dir.path().join("haproxy.log");
        let child = Command::new(installed("haproxy"))
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("haproxy.err")).unwrap())
            .spawn()
            .expect("spawn haproxy");
        let p = EdgeProxy { child, dir, log };
        p.wait_ports(ports).await;
        p
    }

    /// NGINX with a `stream { ... }` block `body` (`{dir}` replaced as above).
    pub async fn nginx_stream(body: &str, ports: &[u16]) -> EdgeProxy {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let cfg = format!(
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
             pid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             stream {{\n{}\n}}\n",
            body.replace("{dir}", &d)
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, cfg).unwrap();
        let log = dir.path().join("error.log");
        let child = Command::new(installed("nginx"))
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .arg("-g")
            .arg("daemon off; master_process off;")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("nginx.err")).unwrap())
            .spawn()
            .expect("spawn nginx");
        let p = EdgeProxy { child, dir, log };
        p.wait_ports(ports).await;
        p
    }

    async fn wait_ports(&self, ports: &[u16]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in ports {
            let addr = SocketAddr::from(([127, 0, 0, 1], *port));
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                if Instant::now() > deadline {
                    panic!(
                        "nothing listens on {addr} after 10s; stderr:\n{}",
                        self.stderr_text()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    fn stderr_text(&self) -> String {
        ["haproxy.err", "nginx.err", "error.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default() + &self.stderr_text()
    }

    /// Sends a command to HAProxy's stats socket and returns its answer.
    pub async fn haproxy_command(&self, command: &str) -> String {
        let mut s = tokio::net::UnixStream::connect(self.dir.path().join("haproxy.sock"))
            .await
            .expect("connect to the haproxy stats socket");
        s.write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }
}
