//! The `wsgate` command: wiring only.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;

use ipnet::IpNet;
use wsgate::api::Duration;
use wsgate::metrics::Metrics;
use wsgate::proxy::client::Cidrs;
use wsgate::proxy::fleet;
use wsgate::proxy::handshake::forwarded::ForwardedTrust;
use wsgate::proxy::listen::limits::MIN_HEADER_BYTES;
use wsgate::proxy::listen::proxy_protocol::{ProxyProtocol, Untrusted, Versions};
use wsgate::proxy::{self, access_log, AccessLog, HeadLimits, Http2Settings, Listener, Proxy};
use wsgate::{admin, config, controller, telemetry};

/// A WebSocket ingress: upgrade-aware proxy with keepalive pings, per-route metrics
/// and reloads that never drop tunnels.
#[derive(Parser)]
#[command(name = "wsgate", version)]
struct Cli {
    /// Log line format on stderr: `text` (for people) or `json` (for log pipelines).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Standalone mode: routes from YAML files, re-applied when they change.
    Serve {
        /// A route file or a directory of *.yaml route files.
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Controller mode: routes from WebSocketRoute resources in Kubernetes.
    Run {
        /// Kubeconfig file; in-cluster configuration (or $KUBECONFIG) otherwise.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Watch this namespace (repeatable); all namespaces when absent.
        #[arg(long = "namespace")]
        namespaces: Vec<String>,
        /// Serve only routes whose spec.className is this (routes without one are `wsgate`).
        #[arg(long, default_value = "wsgate")]
        class: String,
        /// Namespace of the leader-election Lease (the pod's own namespace in a cluster).
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        lease_namespace: String,
        /// Name of the leader-election Lease; `wsgate-<class>` when absent.
        #[arg(long)]
        lease_name: Option<String>,
        /// This replica's identity in the Lease; the pod name when set, else host name and pid.
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// Allow `address` backends resolving into this block (repeatable); without
        /// it a route's `address` backends are refused (AddressNotAllowed). Loopback,
        /// link-local and wsgate's own listeners are refused whatever is allowed.
        #[arg(long = "allow-address-backends", value_name = "CIDR")]
        allow_address_backends: Vec<controller::Cidr>,
        /// Let routes of any namespace name any hostname (by default a hostname
        /// belongs to the namespace of the oldest route naming it).
        #[arg(long)]
        shared_hostnames: bool,
        /// A namespace whose routes may omit `hostnames` (a catch-all); repeatable.
        /// Routes without hostnames from other namespaces are refused.
        #[arg(long = "catch-all-namespace", value_name = "NAMESPACE")]
        catch_all_namespaces: Vec<String>,
        /// How often the Secrets and ConfigMaps routes name are read again (a
        /// rotated certificate is served within this).
        #[arg(long, default_value = "10s", value_parser = positive_duration)]
        refs_refresh: Duration,
        /// Implement the Gateway API (GatewayClasses whose controllerName is
        /// wsgate.io/gateway-controller) when its CRDs are installed.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        gateway_api: bool,
        /// Type of the Service each Gateway gets (its address): LoadBalancer,
        /// NodePort or ClusterIP.
        #[arg(long, default_value = "LoadBalancer", value_parser = ["LoadBalancer", "NodePort", "ClusterIP"])]
        gateway_service_type: String,
        /// Labels of wsgate's pods, `key=value,...`: the selector of the Gateways'
        /// Services (the chart passes its own).
        #[arg(long, default_value = "app.kubernetes.io/name=wsgate", value_parser = parse_selector)]
        gateway_pod_selector: std::collections::BTreeMap<String, String>,
        /// Data-plane ports handed to Gateway listeners, `FIRST-LAST`; every replica
        /// listens on those in use.
        #[arg(long, default_value = "20000-20999", value_parser = parse_port_range)]
        gateway_ports: std::ops::RangeInclusive<u16>,
        #[command(flatten)]
        common: Common,
    },
    /// Validate route files: exit 0 when valid, 1 with `file:line: field: message` lines.
    Check {
        /// A route file or a directory of *.yaml route files.
        #[arg(long)]
        config: PathBuf,
        /// Validate as for `serve --limits-store`: routes may carry `fleetLimits`
        /// (nothing is connected to).
        #[arg(
            long,
            env = "WSGATE_LIMITS_STORE",
            value_name = "URL",
            hide_env_values = true
        )]
        limits_store: Option<String>,
    },
    /// Print a CustomResourceDefinition: WebSocketRoute, or WebSocketPolicy.
    Crd {
        /// Which one.
        #[arg(long, default_value = "WebSocketRoute", value_parser = ["WebSocketRoute", "WebSocketPolicy"])]
        kind: String,
    },
}

#[derive(Args)]
struct Common {
    /// Plain listener (ws:// and HTTP).
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// TLS listener (wss:// and HTTPS); off unless given.
    #[arg(long)]
    tls_listen: Option<SocketAddr>,
    /// Connections the kernel queues on each proxy listener before wsgate accepts
    /// them (capped by net.core.somaxconn): room for a reconnect storm.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    listen_backlog: u32,
    /// Admin listener: /metrics, /healthz, /readyz, /connections, /backends. Keep it
    /// on loopback: /connections lists every tenant's clients and backends.
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin_listen: SocketAddr,
    /// A second listener serving only /metrics, /healthz and /readyz, for
    /// Prometheus and probes from outside the pod; off unless given.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// On SIGTERM/SIGINT, tunnels are closed spread over this window.
    #[arg(long, default_value = "30s")]
    drain_timeout: Duration,
    /// One JSON line per finished tunnel, refused upgrade and plain HTTP request:
    /// `stdout`, `off` or a file path (appended to).
    #[arg(long, default_value = "stdout", value_name = "stdout|off|PATH")]
    access_log: access_log::Target,
    /// A request's head (request line and headers) must arrive within this, or
    /// the client gets 408 and the connection is closed.
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    header_read_timeout: Duration,
    /// Largest request head in bytes (at least 8192); larger gets 431. Over HTTP/2
    /// it bounds a request's header list (and so CONTINUATION floods).
    #[arg(long, default_value_t = 64 * 1024, value_parser = max_header_bytes)]
    max_header_bytes: usize,
    /// HTTP/2 toward clients: ALPN `h2` on the TLS listener, h2c with prior
    /// knowledge on the plain one, WebSockets as extended CONNECT streams (RFC 8441).
    /// `false`: HTTP/1.1 only on both.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    http2: bool,
    /// Streams (tunnels and requests) at once on one HTTP/2 connection.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    http2_max_concurrent_streams: u32,
    /// Bytes wsgate queues per HTTP/2 stream toward a client that reads slowly (16
    /// KiB to 16 MiB). A client that stops reading pins at most this times
    /// --http2-max-concurrent-streams per connection.
    #[arg(long, default_value_t = 256 * 1024, value_parser = clap::value_parser!(u32).range(16 * 1024..=16 * 1024 * 1024))]
    http2_stream_send_buffer: u32,
    /// PROXY protocol on both proxy listeners: a trusted load balancer names the
    /// client in a header before TLS and HTTP. `off`, `v1`, `v2` or `any`.
    #[arg(long, default_value = "off", value_name = "off|v1|v2|any")]
    proxy_protocol: ProxyProtocolMode,
    /// Peers that must send a PROXY header (CIDR or address; repeatable). Required
    /// when --proxy-protocol is on.
    #[arg(long, value_name = "CIDR", value_parser = cidr)]
    proxy_protocol_trusted: Vec<IpNet>,
    /// Other peers: `reject` closes them before reading a byte; `direct` serves
    /// them as clients of their own and never parses a header they send.
    #[arg(long, default_value = "reject", value_name = "reject|direct")]
    proxy_protocol_untrusted: UntrustedMode,
    /// A trusted peer's whole PROXY header must arrive within this.
    #[arg(long, default_value = "5s", value_parser = positive_duration)]
    proxy_protocol_timeout: Duration,
    /// Proxies whose X-Forwarded-For is believed (CIDR or address; repeatable):
    /// the list is read right to left, skipping these, when the connection's
    /// source is one of them.
    #[arg(long, value_name = "CIDR", value_parser = cidr, conflicts_with = "trusted_hops")]
    trusted_proxies: Vec<IpNet>,
    /// This many proxies stand in front of wsgate and each appends to
    /// X-Forwarded-For: the client is the N-th entry from the right.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    trusted_hops: Option<u16>,
    /// Export OpenTelemetry traces over OTLP to this collector base URL (over
    /// http/protobuf wsgate posts to URL/v1/traces). Off unless given or
    /// OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set.
    #[arg(long, value_name = "URL")]
    otel_endpoint: Option<String>,
    /// OTLP transport: `http/protobuf` (port 4318, the default) or `grpc` (port
    /// 4317, needs a build with the otlp-grpc feature); else OTEL_EXPORTER_OTLP_PROTOCOL.
    #[arg(long, value_name = "http/protobuf|grpc")]
    otel_protocol: Option<telemetry::Protocol>,
    /// Share of new traces recorded, 0 to 1 (parent-based: a trusted client's
    /// sampled traceparent is followed; a route's tracing.samplingRatio wins);
    /// else OTEL_TRACES_SAMPLER_ARG, else 0.05.
    #[arg(long, value_name = "RATIO")]
    otel_sampling_ratio: Option<f64>,
    /// Redis for fleet-wide limits (routes' `fleetLimits`): `redis://` or
    /// `rediss://` (TLS); comma-separated seed nodes in cluster mode, sentinels
    /// (path = master name) in sentinel mode. Off unless given.
    #[arg(
        long,
        env = "WSGATE_LIMITS_STORE",
        value_name = "URL",
        hide_env_values = true
    )]
    limits_store: Option<String>,
    /// How the store is reached: `single`, `sentinel` or `cluster`.
    #[arg(long, default_value = "single", value_name = "single|sentinel|cluster")]
    limits_store_mode: StoreModeArg,
    /// Deadline of one store call on a handshake; past it the fallback applies.
    #[arg(long, default_value = "25ms", value_parser = positive_duration)]
    limits_store_timeout: Duration,
    /// How often each replica rewrites its counts in the store and marks itself live.
    #[arg(long, default_value = "5s", value_parser = positive_duration)]
    limits_heartbeat: Duration,
    /// A replica silent this long no longer counts (its tunnels died with it).
    #[arg(long, default_value = "15s", value_parser = positive_duration)]
    limits_stale_after: Duration,
    /// While the store does not answer: `local-share` (each replica enforces
    /// ceil(limit / live replicas)), `fail-open` (no fleet limit) or
    /// `fail-closed` (503).
    #[arg(
        long,
        default_value = "local-share",
        value_name = "local-share|fail-open|fail-closed"
    )]
    limits_on_store_error: OnStoreErrorArg,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum StoreModeArg {
    Single,
    Sentinel,
    Cluster,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum OnStoreErrorArg {
    LocalShare,
    FailOpen,
    FailClosed,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ProxyProtocolMode {
    Off,
    V1,
    V2,
    Any,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum UntrustedMode {
    Reject,
    Direct,
}

fn cidr(s: &str) -> Result<IpNet, String> {
    proxy::client::parse_cidr(s)
}

impl Common {
    /// The PROXY protocol settings, or why they are incomplete.
    fn proxy_protocol(&self) -> anyhow::Result<Option<Arc<ProxyProtocol>>> {
        let versions = match self.proxy_protocol {
            ProxyProtocolMode::Off => return Ok(None),
            ProxyProtocolMode::V1 => Versions::V1,
            ProxyProtocolMode::V2 => Versions::V2,
            ProxyProtocolMode::Any => Versions::Any,
        };
        if self.proxy_protocol_trusted.is_empty() {
            anyhow::bail!(
                "--proxy-protocol needs --proxy-protocol-trusted CIDR: the load balancers \
                 allowed to name clients (anyone else could forge an address)"
            );
        }
        let trusted: Vec<String> = self
            .proxy_protocol_trusted
            .iter()
            .map(|n| n.to_string())
            .collect();
        Ok(Some(Arc::new(ProxyProtocol {
            versions,
            trusted: Cidrs::parse(&trusted).map_err(anyhow::Error::msg)?,
            untrusted: match self.proxy_protocol_untrusted {
                UntrustedMode::Reject => Untrusted::Reject,
                UntrustedMode::Direct => Untrusted::Direct,
            },
            timeout: self.proxy_protocol_timeout.0,
        })))
    }

    /// Starts fleet-wide limits when `--limits-store` is given: before routes are
    /// compiled, since a route with `fleetLimits` is refused without a store.
    fn start_fleet(&self, metrics: &Metrics) -> anyhow::Result<()> {
        let Some(url) = &self.limits_store else {
            return Ok(());
        };
        let mode = match self.limits_store_mode {
            StoreModeArg::Single => fleet::StoreMode::Single,
            StoreModeArg::Sentinel => fleet::StoreMode::Sentinel,
            StoreModeArg::Cluster => fleet::StoreMode::Cluster,
        };
        fleet::check_url(mode, url).map_err(|e| anyhow::anyhow!("--limits-store: {e}"))?;
        if self.limits_stale_after.0 < self.limits_heartbeat.0 * 2 {
            anyhow::bail!(
                "--limits-stale-after must be at least twice --limits-heartbeat, or a live replica \
                 whose heartbeat is a little late would stop counting"
            );
        }
        let name = std::env::var("POD_NAME").unwrap_or_else(|_| {
            std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "wsgate".into())
        });
        let settings = fleet::Settings {
            url: url.clone(),
            mode,
            timeout: self.limits_store_timeout.0,
            heartbeat: self.limits_heartbeat.0,
            stale_after: self.limits_stale_after.0,
            on_error: match self.limits_on_store_error {
                OnStoreErrorArg::LocalShare => fleet::OnStoreError::LocalShare,
                OnStoreErrorArg::FailOpen => fleet::OnStoreError::FailOpen,
                OnStoreErrorArg::FailClosed => fleet::OnStoreError::FailClosed,
            },
            replica: fleet::replica_id(&name),
        };
        tracing::info!(mode = mode.as_str(), replica = %settings.replica, on_store_error = settings.on_error.as_str(), "fleet-wide limits on");
        fleet::start(
            settings,
            fleet::FleetMetrics {
                errors: metrics.limits_store_errors_total.clone(),
                mode: metrics.limits_store_mode.clone(),
            },
        );
        Ok(())
    }

    /// Whose X-Forwarded-For is believed.
    fn forwarded(&self) -> Arc<ForwardedTrust> {
        let proxies: Vec<String> = self.trusted_proxies.iter().map(|n| n.to_string()).collect();
        Arc::new(ForwardedTrust {
            proxies: Cidrs::parse(&proxies).unwrap_or_default(),
            hops: self.trusted_hops.map_or(0, usize::from),
        })
    }
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    let d: Duration = s.parse()?;
    if d.is_zero() {
        return Err("must be above 0".into());
    }
    Ok(d)
}

fn max_header_bytes(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of bytes"))?;
    if n < MIN_HEADER_BYTES {
        return Err(format!("must be at least {MIN_HEADER_BYTES}"));
    }
    Ok(n)
}

/// How log lines on stderr look.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    /// For people: colour only when stderr is a terminal.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => {
            // `kubectl logs` and files are no terminal: escape codes there are noise.
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(colour).init()
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Check {
            config,
            limits_store,
        } => {
            if limits_store.is_some() {
                fleet::declare_store();
            }
            check(&config)
        }
        Command::Crd { kind } => {
            match kind.as_str() {
                "WebSocketPolicy" => print!("{}", wsgate::policy_crd_yaml()),
                _ => print!("{}", wsgate::crd_yaml()),
            }
            ExitCode::SUCCESS
        }
        Command::Serve { config, common } => block_on(serve(config, common)),
        Command::Run {
            kubeconfig,
            namespaces,
            class,
            lease_namespace,
            lease_name,
            identity,
            allow_address_backends,
            shared_hostnames,
            catch_all_namespaces,
            refs_refresh,
            gateway_api,
            gateway_service_type,
            gateway_pod_selector,
            gateway_ports,
            common,
        } => {
            let identity = identity.unwrap_or_else(|| {
                let host =
                    std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "wsgate".into());
                format!("{}-{}", host.trim(), std::process::id())
            });
            let lease_name = lease_name.unwrap_or_else(|| format!("wsgate-{class}"));
            let mut own_listeners = vec![common.listen, common.admin_listen];
            own_listeners.extend(common.tls_listen);
            own_listeners.extend(common.metrics_listen);
            let opts = controller::Options {
                namespaces,
                class,
                lease_namespace,
                lease_name,
                identity,
                tenancy: controller::Tenancy {
                    allow_address_backends,
                    shared_hostnames,
                    catch_all_namespaces,
                    own_listeners,
                    local_ips: controller::tenancy::local_ips(),
                },
                refs_refresh: refs_refresh.0,
                gateway: None,
            };
            let gateway = gateway_api.then_some(GatewayFlags {
                service_type: gateway_service_type,
                selector: gateway_pod_selector,
                ports: gateway_ports,
            });
            block_on(run(kubeconfig, opts, gateway, common))
        }
    }
}

fn block_on(f: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsgate: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each said once: kube's and std's errors
/// often repeat their source in their own message, and `{:#}` would print it again.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// The Gateway API flags of `wsgate run`.
struct GatewayFlags {
    service_type: String,
    selector: std::collections::BTreeMap<String, String>,
    ports: std::ops::RangeInclusive<u16>,
}

fn parse_selector(s: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    s.split(',')
        .filter(|kv| !kv.trim().is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok((k.trim().to_string(), v.trim().to_string()))
            }
            _ => Err(format!("{kv:?} is not key=value")),
        })
        .collect::<Result<_, _>>()
        .and_then(|m: std::collections::BTreeMap<_, _>| {
            if m.is_empty() {
                Err("at least one key=value is needed".into())
            } else {
                Ok(m)
            }
        })
}

fn parse_port_range(s: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or("expected FIRST-LAST, e.g. 20000-20999")?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?,
        b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?,
    );
    if a == 0 || a > b {
        return Err(format!("{s:?}: FIRST must be 1 or more and not above LAST"));
    }
    Ok(a..=b)
}

async fn run(
    kubeconfig: Option<PathBuf>,
    mut opts: controller::Options,
    gateway: Option<GatewayFlags>,
    common: Common,
) -> anyhow::Result<()> {
    let config = match &kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}: cannot read", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("invalid kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes configuration: run in a cluster, or pass --kubeconfig PATH or set KUBECONFIG",
        )?,
    };
    let client = kube::Client::try_from(config).context("cannot build a Kubernetes client")?;
    let metrics = Metrics::new();
    common.start_fleet(&metrics)?;
    let proxy = Proxy::with_access_log(metrics, open_access_log(&common)?);
    if let Some(g) = gateway {
        let template = proxy::listen::gateway::Template {
            ip: common.listen.ip(),
            backlog: common.listen_backlog,
            limits: HeadLimits {
                read_timeout: common.header_read_timeout.0,
                max_bytes: common.max_header_bytes,
            },
            http2: common.http2.then_some(Http2Settings {
                max_concurrent_streams: common.http2_max_concurrent_streams,
                stream_send_buffer: common.http2_stream_send_buffer as usize,
            }),
            proxy_protocol: common.proxy_protocol()?,
            forwarded: common.forwarded(),
        };
        opts.gateway = Some(controller::gateway::Options {
            namespace: opts.lease_namespace.clone(),
            service_type: g.service_type,
            selector: g.selector,
            ports: g.ports,
            listeners: proxy::listen::gateway::GatewayListeners::new(proxy.clone(), template),
        });
    }
    tokio::spawn(controller::run(client, opts, proxy.clone()));
    run_proxy(proxy, common).await
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(loaded) => {
            println!(
                "{}: {} route(s) valid",
                path.display(),
                loaded.table.routes().len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in errors {
                println!("{e}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

/// A proxy listener with a listen queue of `backlog` connections: a reconnect
/// storm (every client of a restarted pod at once) waits in the queue instead of
/// overflowing it and retrying after a second. The kernel caps the queue at
/// `net.core.somaxconn`, which is said once at start when it is lower.
fn bind_proxy(addr: SocketAddr, backlog: u32, what: &str) -> anyhow::Result<TcpListener> {
    let listen = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As std's bind does: a restart need not wait for TIME_WAIT to pass.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(backlog)
    };
    let listener = listen().with_context(|| format!("cannot listen on {addr} ({what})"))?;
    let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    if let Some(max) = somaxconn.filter(|&max| max < backlog) {
        tracing::warn!(%addr, backlog, somaxconn = max, "the kernel caps this listener's queue at net.core.somaxconn; raise it (sysctl) for reconnect storms");
    }
    Ok(listener)
}

fn open_access_log(common: &Common) -> anyhow::Result<AccessLog> {
    AccessLog::open(&common.access_log).with_context(|| match &common.access_log {
        access_log::Target::File(path) => format!(
            "--access-log {}: cannot open for appending (give a writable path, stdout or off)",
            path.display()
        ),
        _ => "--access-log: cannot start the access log writer".into(),
    })
}

async fn serve(config_path: PathBuf, common: Common) -> anyhow::Result<()> {
    // Say plainly when the path itself is the problem; the loader's messages are
    // about what is inside the files.
    if let Err(e) = std::fs::metadata(&config_path) {
        anyhow::bail!("{}: cannot read route config: {e}", config_path.display());
    }
    let metrics = Metrics::new();
    common.start_fleet(&metrics)?;
    let proxy = Proxy::with_access_log(metrics, open_access_log(&common)?);
    let loaded = config::load(&config_path).map_err(|errors| match errors.as_slice() {
        [one] => anyhow::anyhow!("{one}"),
        many => {
            let lines: Vec<String> = many.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("invalid configuration:\n{}", lines.join("\n"))
        }
    })?;
    let watched: Vec<PathBuf> = loaded
        .files
        .iter()
        .chain(&loaded.tls_files)
        .chain(&loaded.jwks_files)
        .cloned()
        .collect();
    let loaded_from = config::fingerprint(&config_path, &watched);
    let n = loaded.table.routes().len();
    proxy.apply(loaded.table);
    proxy
        .metrics
        .config_reloads_total
        .with_label_values(&["success"])
        .inc();
    tracing::info!(routes = n, config = %config_path.display(), "route table loaded");
    tokio::spawn({
        let proxy = proxy.clone();
        async move {
            if let Err(e) = config::watch(proxy, config_path, watched, loaded_from).await {
                tracing::error!(error = %e, "cannot watch the configuration; changes will not be applied");
            }
        }
    });
    run_proxy(proxy, common).await
}

/// Binds the listeners, serves until SIGTERM/SIGINT, then drains.
async fn run_proxy(proxy: Arc<Proxy>, common: Common) -> anyhow::Result<()> {
    let traces = telemetry::start(
        &telemetry::Settings {
            endpoint: common.otel_endpoint.clone(),
            protocol: common.otel_protocol,
            ratio: common.otel_sampling_ratio,
        },
        proxy.metrics.trace_spans_dropped_total.clone(),
    )?;
    if let Some(t) = &traces {
        proxy.set_tracer(t.tracer.clone());
    }
    let admin_socket = bind(common.admin_listen, "--admin-listen").await?;
    let metrics_socket = match common.metrics_listen {
        Some(addr) => Some(bind(addr, "--metrics-listen").await?),
        None => None,
    };
    let plain = bind_proxy(common.listen, common.listen_backlog, "--listen")?;
    let tls = match common.tls_listen {
        Some(addr) => Some(bind_proxy(addr, common.listen_backlog, "--tls-listen")?),
        None => None,
    };
    tokio::spawn(admin::serve(
        proxy.clone(),
        admin_socket,
        admin::Endpoints::All,
    ));
    if let Some(socket) = metrics_socket {
        tokio::spawn(admin::serve(
            proxy.clone(),
            socket,
            admin::Endpoints::Metrics,
        ));
    }
    tokio::spawn(proxy::trim::after_waves(proxy.clone()));
    tokio::spawn({
        let p = proxy.clone();
        async move { proxy::timers::drive(&p.timers, &p.registry).await }
    });
    let limits = HeadLimits {
        read_timeout: common.header_read_timeout.0,
        max_bytes: common.max_header_bytes,
    };
    let http2 = common.http2.then_some(Http2Settings {
        max_concurrent_streams: common.http2_max_concurrent_streams,
        stream_send_buffer: common.http2_stream_send_buffer as usize,
    });
    let proxy_protocol = common.proxy_protocol()?;
    let forwarded = common.forwarded();
    let mut listeners = vec![tokio::spawn(proxy::serve_listener(
        proxy.clone(),
        Listener {
            socket: plain,
            tls: None,
            limits,
            http2,
            proxy_protocol: proxy_protocol.clone(),
            forwarded: forwarded.clone(),
            gateway_port: None,
        },
    ))];
    if let Some(socket) = tls {
        let cfg = proxy::server_config(proxy.clone(), common.http2);
        listeners.push(tokio::spawn(proxy::serve_listener(
            proxy.clone(),
            Listener {
                socket,
                tls: Some(cfg),
                limits,
                http2,
                proxy_protocol,
                forwarded,
                gateway_port: None,
            },
        )));
    }
    tracing::info!(listen = %common.listen, tls_listen = ?common.tls_listen, admin = %common.admin_listen, metrics = ?common.metrics_listen, http2 = common.http2, "wsgate serving");
    shutdown_signal().await;
    proxy.shutdown(common.drain_timeout.0).await;
    for l in listeners {
        let _ = l.await;
    }
    let access_log = proxy.access_log.clone();
    let _ =
        tokio::task::spawn_blocking(move || access_log.flush(std::time::Duration::from_secs(2)))
            .await;
    // The tunnels are closed, so their spans (reason `shutdown`) are queued:
    // export them before exit.
    if let Some(t) = traces {
        let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
