//! The `wsgate` command: wiring only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;

use wsgate::api::Duration;
use wsgate::metrics::Metrics;
use wsgate::proxy::{self, Listener, Proxy};
use wsgate::{admin, config, controller};

/// A WebSocket ingress: upgrade-aware proxy with keepalive pings, per-route metrics
/// and reloads that never drop tunnels.
#[derive(Parser)]
#[command(name = "wsgate", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

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
        #[command(flatten)]
        common: Common,
    },
    /// Validate route files: exit 0 when valid, 1 with `file:line: field: message` lines.
    Check {
        /// A route file or a directory of *.yaml route files.
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the WebSocketRoute CustomResourceDefinition.
    Crd,
}

#[derive(Args)]
struct Common {
    /// Plain listener (ws:// and HTTP).
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// TLS listener (wss:// and HTTPS); off unless given.
    #[arg(long)]
    tls_listen: Option<SocketAddr>,
    /// Admin listener: /metrics, /healthz, /readyz, /connections.
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin_listen: SocketAddr,
    /// On SIGTERM/SIGINT, tunnels are closed spread over this window.
    #[arg(long, default_value = "30s")]
    drain_timeout: Duration,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Crd => {
            print!("{}", wsgate::crd_yaml());
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
            common,
        } => {
            let identity = identity.unwrap_or_else(|| {
                let host =
                    std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "wsgate".into());
                format!("{}-{}", host.trim(), std::process::id())
            });
            let lease_name = lease_name.unwrap_or_else(|| format!("wsgate-{class}"));
            let opts = controller::Options {
                namespaces,
                class,
                lease_namespace,
                lease_name,
                identity,
            };
            block_on(run(kubeconfig, opts, common))
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
            eprintln!("wsgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    kubeconfig: Option<PathBuf>,
    opts: controller::Options,
    common: Common,
) -> anyhow::Result<()> {
    let config = match &kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("invalid kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no in-cluster configuration or kubeconfig found")?,
    };
    let client = kube::Client::try_from(config).context("cannot build a Kubernetes client")?;
    let proxy = Proxy::new(Metrics::new());
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

async fn serve(config_path: PathBuf, common: Common) -> anyhow::Result<()> {
    let proxy = Proxy::new(Metrics::new());
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
            if let Err(e) = config::watch(proxy, config_path, watched).await {
                tracing::error!(error = %e, "cannot watch the configuration; changes will not be applied");
            }
        }
    });
    run_proxy(proxy, common).await
}

/// Binds the listeners, serves until SIGTERM/SIGINT, then drains.
async fn run_proxy(proxy: Arc<Proxy>, common: Common) -> anyhow::Result<()> {
    let admin_socket = bind(common.admin_listen, "--admin-listen").await?;
    let plain = bind(common.listen, "--listen").await?;
    let tls = match common.tls_listen {
        Some(addr) => Some(bind(addr, "--tls-listen").await?),
        None => None,
    };
    tokio::spawn(admin::serve(proxy.clone(), admin_socket));
    let mut listeners = vec![tokio::spawn(proxy::serve_listener(
        proxy.clone(),
        Listener {
            socket: plain,
            tls: None,
        },
    ))];
    if let Some(socket) = tls {
        let cfg = proxy::server_config(proxy.clone());
        listeners.push(tokio::spawn(proxy::serve_listener(
            proxy.clone(),
            Listener {
                socket,
                tls: Some(cfg),
            },
        )));
    }
    tracing::info!(listen = %common.listen, tls_listen = ?common.tls_listen, admin = %common.admin_listen, "wsgate serving");
    shutdown_signal().await;
    proxy.shutdown(common.drain_timeout.0).await;
    for l in listeners {
        let _ = l.await;
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
