#!/usr/bin/env bash
# tests/e2e-node/run.sh — wsgate as users run it: the image built here, `helm
# install` onto a real node (containerd + runc + kubelet, hack/k8s/node.sh) in
# the test control plane, real pods, real clients, a real Prometheus.
#
# Prints one line per scenario (ok/FAIL), then "N passed, M failed"; exits 1 on
# any failure. Everything runs as root in a private network and mount namespace
# (hack/k8s/in-netns.sh); pods get 198.51.100.0/24 on a bridge there and reach
# the apiserver on 192.0.2.1. The state dir is removed unless something failed
# (or KEEP_STATE=1).
#
# Env: CARGO_TARGET_DIR, WSGATE_CACHE, HELM, KEEP_STATE=1, E2E_ONLY="name ..."
#      (run only these scenarios; install always runs).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="${ROOT}/tests/e2e-node"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/wsgate/target}"
export WSGATE_CACHE="${WSGATE_CACHE:-/var/cache/wsgate}"

if [[ "${WSGATE_E2E_NODE_INSIDE:-}" != 1 ]]; then
  # Builds and registries out here; the namespace below has no network.
  t0=${SECONDS}
  [[ ${EUID} -eq 0 ]] || { echo "e2e-node: needs root (containerd, kubelet)" >&2; exit 2; }
  for c in containerd runc; do
    command -v "${c}" >/dev/null || { echo "e2e-node: ${c} missing; tests/setup.sh installs it" >&2; exit 2; }
  done
  HELM="${HELM:-$("${ROOT}/hack/k8s/helm.sh" | tail -n1)}" || { echo "e2e-node: hack/k8s/helm.sh failed" >&2; exit 2; }
  WSGATE_K8S_NODE=1 WSGATE_K8S_KUBE_PROXY=1 "${ROOT}/hack/k8s/assets.sh" >/dev/null || { echo "e2e-node: hack/k8s/assets.sh failed" >&2; exit 2; }
  # The Gateway API CRDs (standard channel, v1.6.3): the cluster has them, as most do.
  GWAPI_CRDS="$("${ROOT}/hack/k8s/conformance.sh" --crds | tail -n1)/crds/standard" || { echo "e2e-node: Gateway API CRDs not fetched" >&2; exit 2; }
  PROM_DIR="${PROM_DIR:-$("${ROOT}/hack/k8s/prometheus.sh" | tail -n1)}" || { echo "e2e-node: hack/k8s/prometheus.sh failed" >&2; exit 2; }
  IMAGES="$("${ROOT}/hack/image/build.sh" | tail -n1)" || { echo "e2e-node: hack/image/build.sh failed" >&2; exit 2; }
  # Jaeger v2 as a pod (the tracing scenario): its binary from hack/jaeger.sh,
  # packed once as an image next to it.
  JAEGER_DIR="$("${ROOT}/hack/jaeger.sh" | tail -n1)" || { echo "e2e-node: hack/jaeger.sh failed" >&2; exit 2; }
  if [[ ! -s "${JAEGER_DIR}/jaeger.oci.tar" ]]; then
    jroot="$(mktemp -d)"; cp "${JAEGER_DIR}/jaeger" "${jroot}/jaeger"
    jq -n '{User: "65532:65532", Entrypoint: ["/jaeger"]}' >"${jroot}.json"
    "${ROOT}/hack/image/oci.sh" "${jroot}" "${jroot}.json" localhost/jaeger:e2e "${JAEGER_DIR}/jaeger.oci.tar.new" &&
      mv "${JAEGER_DIR}/jaeger.oci.tar.new" "${JAEGER_DIR}/jaeger.oci.tar"
    rm -rf "${jroot}" "${jroot}.json"
  fi
  export JAEGER_DIR
  # The gateway-api scenario's chat back end (Node and Socket.IO) as an image.
  CHAT_IMAGE="$("${HERE}/chat-app/image.sh" "${WSGATE_CACHE}/peers-node/chat.oci.tar" | tail -n1)" ||
    { echo "e2e-node: the chat image failed" >&2; exit 2; }
  export GWAPI_CRDS CHAT_IMAGE
  echo "e2e-node: tools and images ready in $((SECONDS - t0))s"
  export HELM PROM_DIR IMAGES
  WSGATE_E2E_NODE_INSIDE=1 WSGATE_NETNS_MOUNT=1 exec "${ROOT}/hack/k8s/in-netns.sh" "${BASH_SOURCE[0]}" "$@"
fi

CP="${ROOT}/hack/k8s/control-plane.sh"
NODE="${ROOT}/hack/k8s/node.sh"
PY="${WSGATE_CACHE}/venv/bin/python"
WEBSOCAT="${WSGATE_CACHE}/tools/bin/websocat"
PROBE=("${PY}" "${HERE}/wsprobe.py")
NS=wsgate-system
APP=e2e
STATE="$(mktemp -d /tmp/wsgate-e2e-node.XXXXXX)"
passed=0 failed=0
failures=()
bg_pids=()

log() { echo "    $*"; }
cleanup() {
  local p
  for p in "${bg_pids[@]}"; do kill "${p}" 2>/dev/null; done
  "${NODE}" stop "${STATE}" 2>&1 | sed 's/^/  /' || true
  "${CP}" stop "${STATE}" >/dev/null 2>&1 || true
  if [[ ${failed} -eq 0 && "${KEEP_STATE:-}" != 1 ]]; then rm -rf "${STATE}"; else echo "state kept in ${STATE}"; fi
}
trap cleanup EXIT

# ---- the cluster ------------------------------------------------------------
t0=${SECONDS}
APISERVER_BIND_ADDRESS=0.0.0.0 "${CP}" start "${STATE}" 2>"${STATE}/cp-start.log" ||
  { cat "${STATE}/cp-start.log"; echo "0 passed, 1 failed (control plane)"; exit 1; }
# shellcheck disable=SC1091
source "${STATE}/env"
APISERVER_PORT="${APISERVER_URL##*:}"
"${NODE}" start "${STATE}" "${IMAGES}/pause.oci.tar" "${IMAGES}/wsgate.oci.tar" "${IMAGES}/echo.oci.tar" "${JAEGER_DIR}/jaeger.oci.tar" "${CHAT_IMAGE}" 2>"${STATE}/node-start.log" ||
  { tail -n 30 "${STATE}/node-start.log"; tail -n 30 "${STATE}/node/kubelet.log"; echo "0 passed, 1 failed (node)"; exit 1; }
echo "cluster with a node ready in $((SECONDS - t0))s"
K=("${KUBECTL}" --kubeconfig "${KUBECONFIG}")
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "${ROOT}/Cargo.toml" | head -n1)"

# ---- scenario bookkeeping -------------------------------------------------
# run NAME DESCRIPTION: runs scenario_NAME in a subshell (set -eu there), which
# ends at the first `no REASON`; background clients it started are stopped.
run() {
  local name="$1" desc="$2" s=${SECONDS} why
  if [[ -n "${E2E_ONLY:-}" && " ${E2E_ONLY} " != *" ${name} "* && "${name}" != install ]]; then return; fi
  rm -f "${STATE}/why"
  if (
    set -eu
    bg_pids=()
    trap 'for p in "${bg_pids[@]}"; do kill "${p}" 2>/dev/null || true; done' EXIT
    "scenario_${name//-/_}"
  ) >"${STATE}/${name}.out" 2>&1; then
    echo "ok   - ${name}: ${desc} ($((SECONDS - s))s)"
    passed=$((passed + 1))
  else
    why="$(cat "${STATE}/why" 2>/dev/null)"
    echo "FAIL - ${name}: ${desc} ($((SECONDS - s))s): ${why:-see below}"
    sed 's/^/    /' "${STATE}/${name}.out" | tail -n 25
    failed=$((failed + 1))
    failures+=("${name}")
  fi
}
no() { echo "$*" >"${STATE}/why"; echo "reason: $*"; exit 1; }

# Pod IPs / names of the wsgate Deployment's ready pods.
wsgate_pods() { "${K[@]}" -n "${NS}" get pods -l app.kubernetes.io/name=wsgate,app.kubernetes.io/instance=wsgate \
  --field-selector=status.phase=Running -o json | jq -r '.items[] | select(.metadata.deletionTimestamp == null)
  | select(any(.status.conditions[]?; .type == "Ready" and .status == "True")) | "\(.metadata.name) \(.status.podIP)"'; }

# The host pid of a pod's container (kubelet -> containerd -> runc; no shell in the image).
container_pid() { # NAMESPACE POD CONTAINER
  local id
  id="$("${K[@]}" -n "$1" get pod "$2" -o json | jq -r --arg c "$3" '.status.containerStatuses[] | select(.name == $c) | .containerID')"
  id="${id#containerd://}"
  ctr -a "${STATE}/node/containerd/containerd.sock" -n k8s.io task ls | awk -v id="${id}" '$1 == id {print $2}'
}

wait_until() { # SECONDS CMD...: retries CMD until it succeeds or SECONDS have passed
  local end=$((SECONDS + $1)); shift
  while ((SECONDS < end)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}

# ---- scenarios ----------------------------------------------------------------
source "${HERE}/scenarios.sh"
source "${HERE}/monitoring.sh"
source "${HERE}/gateway.sh"

run image "the image keeps the Dockerfile's runtime contract; its binary is stripped, symbols kept beside it"
run install "helm install: pods Ready through the chart's probes, as UID 65532, read-only root, no capabilities, seccomp"
[[ " ${failures[*]} " == *" install "* ]] && { echo; echo "${passed} passed, ${failed} failed"; exit 1; }
run echo "an echo backend and a WebSocketRoute: websocat and Python websockets echo text and binary through each pod"
run keepalive "an idle client sees the proxy's keepalive pings and its tunnel stays usable"
run lease "two replicas: one holds the Lease and the route's status is written"
run backend-gone "a backend pod deleted: its tunnels get Close 1001 after the route's grace period, the others stay"
run sidecar "sidecar mode (examples/sidecar) next to an application container: serves it"
run prometheus "Prometheus scrapes with the ServiceMonitor/PodMonitor settings: every dashboard query has data and its labels"
run poison-pill "a route no wsgate can read stored, then a wsgate pod deleted: its replacement Ready within 10 s and serving; the route Accepted=False naming the field"
run rollout "kubectl rollout restart: open clients get Close 1001 spread over the drain window before the pod goes; new pods serve"
run pdb "the PodDisruptionBudget: one eviction allowed, the next refused while a replica is down"
run alerts "promtool test rules: every alert of the PrometheusRule fires when it should and stays quiet otherwise"
run tracing "helm upgrade with tracing.endpoint: a tunnel's spans reach a Jaeger pod, parented by the client's traceparent, with the pod and node as resource"
run gateway-api "a Gateway at its LoadBalancer address, HTTPRoutes and WebSocketPolicies: RefNotPermitted 500 until a ReferenceGrant, Socket.IO (polling, upgrade) from Node and Chromium across two replicas with cookie affinity, a browser WebSocket, keepalive pings, JWT 401 and 1008 at exp on one named rule (a policy by sectionName), Close 1001 when a backend goes, examples/gateway-api"

echo
echo "${passed} passed, ${failed} failed"
[[ ${failed} -eq 0 ]]
