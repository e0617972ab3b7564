//! `wsgate run` against a real kube-apiserver (issue 3's "Done when").
//!
//! A `harness = false` test: `main` re-executes itself through
//! `hack/k8s/in-netns.sh`, so everything runs in a private network namespace with
//! 192.0.2.1–20 on `lo` (EndpointSlices refuse loopback addresses). Inside, it
//! starts etcd + kube-apiserver once, installs the CRD and wsgate's
//! least-privilege identity (the chart's RBAC rules), starts `wsgate run` as that
//! identity, and runs the scenarios in order against fake pods (echo servers in
//! this process that name themselves in every reply). Each scenario prints `ok`
//! or `FAILED <reason>`; the last line is `N passed, M failed`.
//!
//! `cargo test --test k8s -- WORD` runs only scenarios whose name contains WORD
//! (later scenarios do not depend on earlier ones, except that the replica
//! scenario replaces the first wsgate with the second).

#[path = "k8s/auth.rs"]
mod auth;
#[path = "k8s/availability.rs"]
mod availability;
#[path = "k8s/backend.rs"]
mod backend;
#[path = "k8s/backend_tls.rs"]
mod backend_tls;
#[path = "k8s/client.rs"]
mod client;
#[path = "k8s/client_access.rs"]
mod client_access;
#[path = "k8s/cluster.rs"]
mod cluster;
#[path = "k8s/endpoints.rs"]
mod endpoints;
#[path = "k8s/gateway.rs"]
mod gateway;
#[path = "k8s/gateway_api.rs"]
mod gateway_api;
#[path = "k8s/objects.rs"]
mod objects;
#[path = "k8s/rebalance.rs"]
mod rebalance;
#[path = "k8s/routes.rs"]
mod routes;
#[path = "k8s/tenancy.rs"]
mod tenancy;

use std::future::Future;
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use futures_util::FutureExt;

use cluster::Cluster;
use gateway::Gateway;

/// Set in the re-executed child: it already runs inside the network namespace.
const INSIDE: &str = "WSGATE_K8S_TEST_NETNS";
/// A scenario that runs longer than this fails.
const SCENARIO_LIMIT: Duration = Duration::from_secs(240);

/// What scenarios share: the control plane and the wsgate replica they talk to.
pub struct Env {
    /// The replica scenarios send traffic through (the leader, normally). Declared
    /// first so it stops before the control plane does.
    pub gw: Gateway,
    pub cluster: Cluster,
    /// Lines for the final summary (e.g. latency percentiles).
    pub summary: Vec<String>,
}

/// A scenario's future.
pub type Run<'a> = Pin<Box<dyn Future<Output = Result<()>> + 'a>>;
/// A scenario: a name and what it does.
pub type Scenario = (&'static str, for<'a> fn(&'a mut Env) -> Run<'a>);

/// Every scenario, in the order they run.
const ALL: &[Scenario] = &[
    ("1 crd-cel-rules", routes::crd_rules),
    ("2 traffic-and-status", routes::traffic_and_status),
    ("3 apply-to-traffic-latency", routes::apply_latency),
    ("4 endpoint-removed-drains", endpoints::endpoint_drain),
    ("5 route-edit-keeps-tunnels", routes::edit_keeps_tunnels),
    ("6 route-delete-404", routes::delete_gives_404),
    ("7 missing-service-and-secret", endpoints::missing_refs),
    ("8 two-replicas-one-leader", availability::two_replicas),
    ("9 apiserver-outage", availability::apiserver_outage),
    ("10 conflicting-route", routes::conflict),
    (
        "11 metrics-and-quiet-status",
        routes::metrics_and_quiet_status,
    ),
    ("12 auth-jwks-secret", auth::jwks_secret_refs),
    (
        "13 rebalance-by-endpoints",
        rebalance::rebalance_by_endpoints,
    ),
    ("14 backend-tls-refs", backend_tls::missing_backend_tls_refs),
    ("15 poison-pills", tenancy::poison_pills),
    ("16 address-backends-refused", tenancy::address_backends),
    ("17 hostname-ownership", tenancy::hostname_ownership),
    ("18 unrelated-churn-no-rebuild", tenancy::unrelated_churn),
    (
        "19 client-access-from-the-crd",
        client_access::client_access_from_the_crd,
    ),
    ("20 gateway-api", gateway_api::gateway_api),
    ("21 websocket-policy", gateway_api::websocket_policy),
    (
        "22 websocket-policy-behaviour",
        gateway_api::websocket_behaviour,
    ),
];

/// Runs `fut`, failing with `what` when it takes longer than `secs`.
pub async fn within<T>(secs: f64, what: &str, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(Duration::from_secs_f64(secs), fut)
        .await
        .map_err(|_| anyhow!("timed out after {secs}s waiting for {what}"))
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `secs`.
pub async fn eventually<T, F, Fut>(secs: f64, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(anyhow!("timed out after {secs}s waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `fut` and measures it.
pub async fn timed<T>(fut: impl Future<Output = T>) -> (T, Duration) {
    let t = Instant::now();
    let v = fut.await;
    (v, t.elapsed())
}

/// libtest flags that take a value: `cargo test -- ARGS` hands ARGS to every test
/// binary, so `--test-threads 1` must not read as a filter `1`.
const VALUE_FLAGS: &[&str] = &[
    "--test-threads",
    "--color",
    "--format",
    "--logfile",
    "-Z",
    "--shuffle-seed",
];

/// The scenarios the arguments select, like libtest: names containing any filter
/// (or equal to one with `--exact`), minus those containing a `--skip` value.
fn select(args: &[String]) -> Vec<Scenario> {
    let (mut filters, mut skips, mut exact) = (Vec::new(), Vec::new(), false);
    let mut it = args.iter().map(String::as_str);
    while let Some(a) = it.next() {
        match a {
            "--skip" => skips.extend(it.next()),
            "--exact" => exact = true,
            _ if VALUE_FLAGS.contains(&a) => drop(it.next()),
            _ if a.starts_with("--skip=") => skips.push(&a["--skip=".len()..]),
            _ if a.starts_with('-') => {}
            _ => filters.push(a),
        }
    }
    let matches = |name: &str, f: &str| if exact { name == f } else { name.contains(f) };
    ALL.iter()
        .copied()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| matches(name, f)))
        .filter(|(name, _)| !skips.iter().any(|s| name.contains(s)))
        .collect()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let selected = select(&args);
    if args.iter().any(|a| a == "--list") {
        for (name, _) in &selected {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    if selected.is_empty() {
        // `cargo test OTHER_TEST` passes its filter to every test binary.
        println!("0 passed, 0 failed ({} scenarios filtered out)", ALL.len());
        return ExitCode::SUCCESS;
    }
    if std::env::var_os(INSIDE).is_none() {
        return reexec_in_netns(&args);
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(run(selected));
    rt.shutdown_timeout(Duration::from_secs(2));
    code
}

fn reexec_in_netns(args: &[String]) -> ExitCode {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/k8s/in-netns.sh");
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            println!("cannot find this test's executable: {e}\n0 passed, 1 failed");
            return ExitCode::FAILURE;
        }
    };
    let status = std::process::Command::new(&script)
        .arg(exe)
        .args(args)
        .env(INSIDE, "1")
        .status();
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => ExitCode::from(u8::try_from(s.code().unwrap_or(1)).unwrap_or(1).max(1)),
        Err(e) => {
            println!("cannot run {}: {e}\n0 passed, 1 failed", script.display());
            ExitCode::FAILURE
        }
    }
}

async fn run(selected: Vec<Scenario>) -> ExitCode {
    let total = Instant::now();
    let setup = async {
        let cluster = Cluster::start().await?;
        let (gw, t) = timed(Gateway::start(&cluster, "wsgate-a", 0)).await;
        let gw = match gw {
            Ok(gw) => gw,
            Err(e) => {
                let mut cluster = cluster;
                cluster.keep_logs();
                return Err(e);
            }
        };
        println!("harness: wsgate run ready {:.1}s", t.as_secs_f64());
        Ok::<_, anyhow::Error>(Env {
            cluster,
            gw,
            summary: vec![],
        })
    };
    let mut env = match setup.await {
        Ok(env) => env,
        Err(e) => {
            println!("harness setup FAILED {e:#}");
            println!("0 passed, 1 failed");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "harness: setup {:.1}s in all",
        total.elapsed().as_secs_f64()
    );

    let (mut passed, mut failed) = (0, 0);
    for (name, scenario) in selected {
        println!("--- {name}");
        let _ = std::io::stdout().flush();
        let t = Instant::now();
        let outcome = AssertUnwindSafe(tokio::time::timeout(SCENARIO_LIMIT, scenario(&mut env)))
            .catch_unwind()
            .await;
        let secs = t.elapsed().as_secs_f64();
        let failure = match outcome {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(e))) => Some(format!("{e:#}")),
            Ok(Err(_)) => Some(format!(
                "did not finish within {}s",
                SCENARIO_LIMIT.as_secs()
            )),
            Err(panic) => Some(format!(
                "panicked: {}",
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
        };
        match failure {
            None => {
                passed += 1;
                println!("{name}: ok ({secs:.1}s)");
            }
            Some(reason) => {
                failed += 1;
                env.cluster.keep_logs();
                println!("{name}: FAILED {reason} ({secs:.1}s)");
                println!(
                    "    last lines of {}:\n{}",
                    env.gw.log.display(),
                    env.gw.log_tail(15)
                );
            }
        }
    }
    for line in &env.summary {
        println!("{line}");
    }
    let scenarios_secs = total.elapsed().as_secs_f64();
    drop(env);
    println!(
        "k8s: total {:.1}s (scenarios done at {scenarios_secs:.1}s)",
        total.elapsed().as_secs_f64()
    );
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
