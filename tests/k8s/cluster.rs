//! A real control plane for the test: `hack/k8s/control-plane.sh` (etcd +
//! kube-apiserver) in the test's network namespace, the WebSocketRoute CRD, and
//! wsgate's least-privilege identity (the chart's RBAC rules bound to a
//! ServiceAccount) with a token kubeconfig for it.
//!
//! The test talks to the API as an admin (`system:masters`) through kube's client
//! and, where a user would, through `kubectl`; wsgate only ever gets the
//! ServiceAccount kubeconfig, so a rule missing from the chart fails a scenario.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{json, Value};

use crate::{timed, within};

/// The namespace and ServiceAccount wsgate runs as.
pub const WSGATE_NS: &str = "wsgate-system";
/// The ServiceAccount wsgate runs as.
pub const WSGATE_SA: &str = "wsgate";
/// Field manager of everything the test applies.
const TEST_MANAGER: &str = "wsgate-k8s-test";

/// What `kubectl` printed.
pub struct Output {
    /// Exit status was zero.
    pub ok: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// The control plane's processes and state dir: stopped (and the dir removed
/// unless logs are kept) when dropped, also when a later setup step fails.
struct ControlPlane {
    state: PathBuf,
    keep: bool,
}

/// A running control plane with the CRD and wsgate's identity installed.
pub struct Cluster {
    control_plane: ControlPlane,
    /// The control plane's state dir (logs, kubeconfigs, wsgate logs).
    pub state: PathBuf,
    /// A kubectl matching the server.
    kubectl: PathBuf,
    /// Admin kubeconfig (`system:masters`).
    admin_kubeconfig: PathBuf,
    /// The ServiceAccount kubeconfig wsgate runs with.
    pub wsgate_kubeconfig: PathBuf,
    /// Admin client.
    pub client: kube::Client,
}

fn hack_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/k8s")
}

/// Runs a harness script, bounded; returns its stdout.
async fn script(name: &str, args: &[&str], secs: u64) -> Result<String> {
    let path = hack_dir().join(name);
    let child = tokio::process::Command::new(&path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {}", path.display()))?;
    let out = within(
        secs as f64,
        &format!("{name} {}", args.join(" ")),
        child.wait_with_output(),
    )
    .await??;
    if !out.status.success() {
        bail!(
            "{name} {} failed ({}):\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Reads `export K='V'` lines of the control plane's `env` file.
fn env_var(state: &Path, key: &str) -> Result<String> {
    let text = std::fs::read_to_string(state.join("env"))
        .context("reading the control plane's env file")?;
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.trim_matches('\'').to_owned())
        .ok_or_else(|| anyhow!("{key} missing from {}/env", state.display()))
}

/// The API resource of the few kinds the test writes.
fn resource(api_version: &str, kind: &str) -> Result<(ApiResource, bool)> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let (plural, namespaced) = match kind {
        "Namespace" => ("namespaces", false),
        "Service" => ("services", true),
        "Secret" => ("secrets", true),
        "ConfigMap" => ("configmaps", true),
        "EndpointSlice" => ("endpointslices", true),
        "WebSocketRoute" => ("websocketroutes", true),
        "ClusterRole" => ("clusterroles", false),
        "ClusterRoleBinding" => ("clusterrolebindings", false),
        "Role" => ("roles", true),
        "RoleBinding" => ("rolebindings", true),
        "Lease" => ("leases", true),
        "GatewayClass" => ("gatewayclasses", false),
        "Gateway" => ("gateways", true),
        "HTTPRoute" => ("httproutes", true),
        "ReferenceGrant" => ("referencegrants", true),
        "WebSocketPolicy" => ("websocketpolicies", true),
        other => bail!("the test does not know kind {other}"),
    };
    let gvk = GroupVersionKind::gvk(group, version, kind);
    Ok((ApiResource::from_gvk_with_plural(&gvk, plural), namespaced))
}

fn dynamic(
    client: &kube::Client,
    api_version: &str,
    kind: &str,
    ns: Option<&str>,
) -> Result<Api<DynamicObject>> {
    let (ar, namespaced) = resource(api_version, kind)?;
    Ok(match (namespaced, ns) {
        (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
        (true, None) => bail!("{kind} is namespaced: give a namespace"),
        (false, _) => Api::all_with(client.clone(), &ar),
    })
}

impl Cluster {
    /// Builds or finds the binaries, starts the control plane, installs the CRD and
    /// wsgate's identity. Prints how long each step took.
    pub async fn start() -> Result<Cluster> {
        let (assets, t) = timed(script("assets.sh", &[], 3600)).await;
        let assets = assets?;
        println!(
            "harness: assets.sh {:.1}s ({})",
            t.as_secs_f64(),
            assets.lines().last().unwrap_or("").trim()
        );
        let state = tempfile::Builder::new()
            .prefix("wsgate-k8s-test.")
            .tempdir()?
            .keep();
        let state_s = state.to_str().context("utf-8 temp dir")?.to_owned();
        let control_plane = ControlPlane {
            state: state.clone(),
            // Until setup has succeeded: its logs say why it did not.
            keep: true,
        };
        let (started, t) = timed(script("control-plane.sh", &["start", &state_s], 300)).await;
        started?;
        println!("harness: control plane start {:.1}s", t.as_secs_f64());
        let t0 = Instant::now();
        let admin_kubeconfig = state.join("admin.kubeconfig");
        let kc = kube::config::Kubeconfig::read_from(&admin_kubeconfig)?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        let mut cluster = Cluster {
            kubectl: PathBuf::from(env_var(&state, "KUBECTL")?),
            admin_kubeconfig,
            wsgate_kubeconfig: state.join("wsgate.kubeconfig"),
            client: kube::Client::try_from(cfg)?,
            state,
            control_plane,
        };
        cluster.install().await?;
        cluster.control_plane.keep = std::env::var_os("WSGATE_K8S_KEEP").is_some();
        println!(
            "harness: CRD + wsgate identity {:.1}s",
            t0.elapsed().as_secs_f64()
        );
        Ok(cluster)
    }

    async fn install(&self) -> Result<()> {
        for file in ["crds/websocketroute.yaml", "crds/websocketpolicy.yaml"] {
            let crd = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            let crd = crd.to_str().context("utf-8 path")?;
            let out = self.kubectl(&["apply", "-f", crd], None).await?;
            if !out.ok {
                bail!("kubectl apply of {file} failed: {}", out.stderr);
            }
        }
        let out = self
            .kubectl(
                &[
                    "wait",
                    "--for=condition=Established",
                    "crd/websocketroutes.wsgate.io",
                    "crd/websocketpolicies.wsgate.io",
                    "--timeout=60s",
                ],
                None,
            )
            .await?;
        if !out.ok {
            bail!("CRD not Established: {}", out.stderr);
        }
        // The Gateway API's standard channel, as a cluster that has it (issue 17).
        let dir = script("conformance.sh", &["--crds"], 300).await?;
        let crds = Path::new(dir.trim()).join("crds/standard");
        let crds = crds.to_str().context("utf-8 path")?;
        let out = self
            .kubectl(&["apply", "--server-side", "-f", crds], None)
            .await?;
        if !out.ok {
            bail!(
                "kubectl apply of the Gateway API CRDs failed: {}",
                out.stderr
            );
        }
        let out = self
            .kubectl(
                &[
                    "wait",
                    "--for=condition=Established",
                    "crd/gateways.gateway.networking.k8s.io",
                    "crd/httproutes.gateway.networking.k8s.io",
                    "--timeout=60s",
                ],
                None,
            )
            .await?;
        if !out.ok {
            bail!("Gateway API CRDs not Established: {}", out.stderr);
        }
        // Namespace, ServiceAccount and a 2 h token kubeconfig.
        let state = self.state.to_str().context("utf-8")?;
        let kc = self.wsgate_kubeconfig.to_str().context("utf-8")?;
        script(
            "control-plane.sh",
            &["token", state, WSGATE_NS, WSGATE_SA, kc],
            120,
        )
        .await?;
        let rules = |file: &str| -> Result<Value> {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("charts/wsgate/files")
                .join(file);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let v: Value = serde_yaml::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
            if !v.is_array() {
                bail!("{} is not a list of rules", path.display());
            }
            Ok(v)
        };
        let subject =
            json!([{"kind": "ServiceAccount", "name": WSGATE_SA, "namespace": WSGATE_NS}]);
        let rbac = "rbac.authorization.k8s.io/v1";
        self.apply(
            json!({"apiVersion": rbac, "kind": "ClusterRole", "metadata": {"name": "wsgate"},
            "rules": rules("rbac-rules.yaml")?}),
        )
        .await?;
        self.apply(json!({"apiVersion": rbac, "kind": "ClusterRoleBinding", "metadata": {"name": "wsgate"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "wsgate"},
            "subjects": subject}))
            .await?;
        self.apply(
            json!({"apiVersion": rbac, "kind": "ClusterRole", "metadata": {"name": "wsgate-gateway-api"},
            "rules": rules("gateway-api-rules.yaml")?}),
        )
        .await?;
        self.apply(json!({"apiVersion": rbac, "kind": "ClusterRoleBinding", "metadata": {"name": "wsgate-gateway-api"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "wsgate-gateway-api"},
            "subjects": subject}))
            .await?;
        self.apply(json!({"apiVersion": rbac, "kind": "Role",
            "metadata": {"name": "wsgate-gateway-services", "namespace": WSGATE_NS},
            "rules": rules("gateway-service-rules.yaml")?}))
            .await?;
        self.apply(json!({"apiVersion": rbac, "kind": "RoleBinding",
            "metadata": {"name": "wsgate-gateway-services", "namespace": WSGATE_NS},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "wsgate-gateway-services"},
            "subjects": subject}))
            .await?;
        self.apply(json!({"apiVersion": rbac, "kind": "Role",
            "metadata": {"name": "wsgate-leader-election", "namespace": WSGATE_NS},
            "rules": rules("leader-election-rules.yaml")?}))
            .await?;
        self.apply(json!({"apiVersion": rbac, "kind": "RoleBinding",
            "metadata": {"name": "wsgate-leader-election", "namespace": WSGATE_NS},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "wsgate-leader-election"},
            "subjects": subject}))
            .await?;
        // The identity really is least-privilege: Secrets and ConfigMaps by name
        // only, never listed or watched (H2).
        for (verb, what, ns) in [
            ("list", "secrets", "kube-system"),
            ("watch", "secrets", WSGATE_NS),
            ("list", "configmaps", "kube-system"),
            ("watch", "configmaps", WSGATE_NS),
        ] {
            let out = self
                .kubectl(
                    &["--kubeconfig", kc, "auth", "can-i", verb, what, "-n", ns],
                    None,
                )
                .await?;
            if out.stdout.trim() != "no" {
                bail!(
                    "the wsgate ServiceAccount may {verb} {what} in {ns}: {}{}",
                    out.stdout,
                    out.stderr
                );
            }
        }
        Ok(())
    }

    /// Runs kubectl with the admin kubeconfig (60 s bound).
    pub async fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut cmd = tokio::process::Command::new(&self.kubectl);
        if !args.contains(&"--kubeconfig") {
            cmd.arg("--kubeconfig").arg(&self.admin_kubeconfig);
        }
        let mut child = cmd
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot run kubectl")?;
        if let Some(input) = stdin {
            use tokio::io::AsyncWriteExt;
            let mut pipe = child.stdin.take().context("kubectl stdin")?;
            pipe.write_all(input.as_bytes()).await?;
        }
        let out = within(
            60.0,
            &format!("kubectl {}", args.join(" ")),
            child.wait_with_output(),
        )
        .await??;
        Ok(Output {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Server-side applies one object as the admin (whole object: fields the test
    /// applied before and leaves out now are removed).
    pub async fn apply(&self, obj: Value) -> Result<Value> {
        let api_version = obj["apiVersion"].as_str().context("apiVersion")?;
        let kind = obj["kind"].as_str().context("kind")?;
        let name = obj["metadata"]["name"].as_str().context("metadata.name")?;
        let api = dynamic(
            &self.client,
            api_version,
            kind,
            obj["metadata"]["namespace"].as_str(),
        )?;
        let what = format!("apply {kind} {name}");
        let pp = PatchParams::apply(TEST_MANAGER).force();
        let out = within(30.0, &what, api.patch(name, &pp, &Patch::Apply(&obj)))
            .await?
            .with_context(|| what.clone())?;
        Ok(serde_json::to_value(out)?)
    }

    /// Gets an object (None when it does not exist).
    pub async fn get(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>> {
        let api = dynamic(&self.client, api_version, kind, ns)?;
        let what = format!("get {kind} {name}");
        let got = within(30.0, &what, api.get_opt(name))
            .await?
            .with_context(|| what.clone())?;
        Ok(got.map(serde_json::to_value).transpose()?)
    }

    /// Deletes an object.
    pub async fn delete(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Result<()> {
        let api = dynamic(&self.client, api_version, kind, ns)?;
        let what = format!("delete {kind} {name}");
        within(30.0, &what, api.delete(name, &DeleteParams::default()))
            .await?
            .with_context(|| what.clone())?;
        Ok(())
    }

    /// Stops kube-apiserver only (etcd keeps the data).
    pub async fn stop_apiserver(&self) -> Result<()> {
        script(
            "control-plane.sh",
            &["stop-apiserver", self.state_str()],
            60,
        )
        .await
        .map(drop)
    }

    /// Starts kube-apiserver again and waits for `/readyz`.
    pub async fn start_apiserver(&self) -> Result<()> {
        script(
            "control-plane.sh",
            &["start-apiserver", self.state_str()],
            180,
        )
        .await
        .map(drop)
    }

    fn state_str(&self) -> &str {
        self.state.to_str().unwrap_or_default()
    }
}

impl Cluster {
    /// The API server's URL (`https://127.0.0.1:PORT`).
    pub fn apiserver_url(&self) -> Result<String> {
        env_var(&self.state, "APISERVER_URL")
    }

    /// Keeps the state dir (control plane and wsgate logs) after the run.
    pub fn keep_logs(&mut self) {
        self.control_plane.keep = true;
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let t = Instant::now();
        let status = std::process::Command::new(hack_dir().join("control-plane.sh"))
            .arg("stop")
            .arg(&self.state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!(
                "control-plane.sh stop {} failed: {status:?}",
                self.state.display()
            );
        }
        if self.keep {
            println!("harness: logs kept in {}", self.state.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.state);
        }
        println!(
            "harness: control plane stop {:.1}s",
            t.elapsed().as_secs_f64()
        );
    }
}
