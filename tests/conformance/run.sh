#!/usr/bin/env bash
# tests/conformance/run.sh — `make conformance`: the official Gateway API
# conformance suite (sigs.k8s.io/gateway-api/conformance v1.6.3, GATEWAY-HTTP
# profile) against wsgate installed by its Helm chart on the real node of
# `make e2e-node`, with kube-proxy routing each Gateway's LoadBalancer address
# (handed out from TEST-NET-1 by tests/conformance/lb-allocator.sh).
#
# Writes the suite's ConformanceReport to conformance/reports/v1.6.3/ (REPORT to
# override) and prints the suite's summary; exits 1 when any test failed.
#
# Env: CARGO_TARGET_DIR, WSGATE_CACHE, HELM, KEEP_STATE=1,
#      CONFORMANCE_RUN_TEST=Name (one test), CONFORMANCE_ARGS (more suite flags),
#      SUPPORTED_FEATURES (comma list; default: what wsgate claims, below).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/wsgate/target}"
export WSGATE_CACHE="${WSGATE_CACHE:-/var/cache/wsgate}"
GWAPI_VERSION=v1.6.3
# What wsgate claims: only features whose tests pass here (README, "Gateway API").
SUPPORTED_FEATURES="${SUPPORTED_FEATURES:-Gateway,HTTPRoute,ReferenceGrant,HTTPRouteBackendProtocolWebSocket,HTTPRouteQueryParamMatching,HTTPRouteMethodMatching,HTTPRouteResponseHeaderModification,HTTPRouteHostRewrite,HTTPRoutePathRewrite,HTTPRoutePathRedirect,HTTPRouteSchemeRedirect,HTTPRoutePortRedirect,HTTPRoute303RedirectStatusCode,HTTPRoute307RedirectStatusCode,HTTPRoute308RedirectStatusCode,HTTPRouteRequestTimeout,HTTPRouteBackendTimeout,HTTPRouteNamedRouteRule,GatewayPort8080,HTTPRouteParentRefPort,GatewayHTTPListenerIsolation}"

if [[ "${WSGATE_CONFORMANCE_INSIDE:-}" != 1 ]]; then
  t0=${SECONDS}
  [[ ${EUID} -eq 0 ]] || { echo "conformance: needs root (containerd, kubelet, kube-proxy)" >&2; exit 2; }
  for c in containerd runc iptables jq; do
    command -v "${c}" >/dev/null || { echo "conformance: ${c} missing; tests/setup.sh installs it" >&2; exit 2; }
  done
  HELM="${HELM:-$("${ROOT}/hack/k8s/helm.sh" | tail -n1)}" || { echo "conformance: hack/k8s/helm.sh failed" >&2; exit 2; }
  WSGATE_K8S_NODE=1 WSGATE_K8S_KUBE_PROXY=1 "${ROOT}/hack/k8s/assets.sh" >/dev/null || { echo "conformance: hack/k8s/assets.sh failed" >&2; exit 2; }
  SUITE="$("${ROOT}/hack/k8s/conformance.sh" | tail -n1)" || { echo "conformance: hack/k8s/conformance.sh failed" >&2; exit 2; }
  IMAGES="$("${ROOT}/hack/image/build.sh" | tail -n1)" || { echo "conformance: hack/image/build.sh failed" >&2; exit 2; }
  echo "conformance: tools and images ready in $((SECONDS - t0))s"
  export HELM SUITE IMAGES
  WSGATE_CONFORMANCE_INSIDE=1 WSGATE_NETNS_MOUNT=1 exec "${ROOT}/hack/k8s/in-netns.sh" "${BASH_SOURCE[0]}" "$@"
fi

CP="${ROOT}/hack/k8s/control-plane.sh"
NODE="${ROOT}/hack/k8s/node.sh"
NS=wsgate-system
STATE="$(mktemp -d /tmp/wsgate-conformance.XXXXXX)"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "${ROOT}/Cargo.toml" | head -n1)"
REPORT="${REPORT:-${ROOT}/conformance/reports/${GWAPI_VERSION}/standard-v${VERSION}-default-report.yaml}"
bg_pids=()
rc=1

cleanup() {
  local p
  for p in "${bg_pids[@]}"; do kill "${p}" 2>/dev/null; done
  "${NODE}" stop "${STATE}" 2>&1 | sed 's/^/  /' || true
  "${CP}" stop "${STATE}" >/dev/null 2>&1 || true
  if [[ ${rc} -eq 0 && "${KEEP_STATE:-}" != 1 ]]; then rm -rf "${STATE}"; else echo "state kept in ${STATE}"; fi
}
trap cleanup EXIT
die() { echo "conformance: $*" >&2; exit 1; }

# ---- the cluster: control plane, a node, kube-proxy, load-balancer addresses ----
t0=${SECONDS}
APISERVER_BIND_ADDRESS=0.0.0.0 "${CP}" start "${STATE}" 2>"${STATE}/cp-start.log" ||
  { cat "${STATE}/cp-start.log"; die "control plane did not start"; }
# shellcheck disable=SC1091
source "${STATE}/env"
APISERVER_PORT="${APISERVER_URL##*:}"
"${NODE}" start "${STATE}" "${IMAGES}/pause.oci.tar" "${IMAGES}/wsgate.oci.tar" \
  "${SUITE}/echo-basic.oci.tar" "${SUITE}/echo-basic-dev.oci.tar" "${SUITE}/coredns.oci.tar" 2>"${STATE}/node-start.log" ||
  { tail -n 30 "${STATE}/node-start.log"; die "the node did not start"; }
K=("${KUBECTL}" --kubeconfig "${KUBECONFIG}")

# kube-proxy in iptables mode on the node's network namespace (this one).
"${ROOT}/hack/k8s/kube-proxy.sh" "${STATE}" >"${STATE}/kube-proxy.log" 2>&1 &
bg_pids+=($!)
"${ROOT}/tests/conformance/lb-allocator.sh" 64 126 >"${STATE}/lb-allocator.log" 2>&1 &
bg_pids+=($!)
echo "cluster with a node, kube-proxy and load-balancer addresses ready in $((SECONDS - t0))s"

# ---- the Gateway API CRDs, then wsgate by its chart (which adds the GatewayClass) ----
"${K[@]}" apply --server-side -f "${SUITE}/crds/standard/" >/dev/null || die "Gateway API CRDs not applied"
"${K[@]}" wait --for=condition=Established crd --all --timeout=60s >/dev/null || die "CRDs not Established"
"${K[@]}" apply --server-side -f "${ROOT}/charts/wsgate/crds/" >/dev/null || die "wsgate CRD not applied"
cat >"${STATE}/values.yaml" <<EOF
image: {pullPolicy: Never}
replicaCount: 1
drainTimeoutSeconds: 2
lifecycle: {preStopSleepSeconds: 0}
service: {type: ClusterIP}
# The kubernetes Service has no endpoints in this control plane: the apiserver
# is reached on the node's address.
extraEnv:
  - {name: KUBERNETES_SERVICE_HOST, value: "192.0.2.1"}
  - {name: KUBERNETES_SERVICE_PORT, value: "${APISERVER_PORT}"}
gatewayAPI: {enabled: true, gatewayClassName: wsgate}
EOF
"${HELM}" --kubeconfig "${KUBECONFIG}" install wsgate "${ROOT}/charts/wsgate" -n "${NS}" --create-namespace \
  -f "${STATE}/values.yaml" --wait --timeout 180s >/dev/null ||
  { "${K[@]}" -n "${NS}" get pods -o wide; "${K[@]}" -n "${NS}" describe pods | tail -n 40; die "helm install failed"; }
"${K[@]}" get gatewayclass wsgate >/dev/null || die "the chart made no GatewayClass"

# ---- the suite ----
mkdir -p "$(dirname "${REPORT}")"
args=(
  -test.v -test.timeout 60m -test.run TestConformance
  --kubeconfig "${KUBECONFIG}"
  --gateway-class=wsgate
  --conformance-profiles=GATEWAY-HTTP
  --supported-features="${SUPPORTED_FEATURES}"
  --organization=wsgate --project=wsgate --url=https://github.com/wsgate/wsgate
  --version="v${VERSION}" --contact=@wsgate/maintainers
  --report-output="${REPORT}"
)
[[ -n "${CONFORMANCE_RUN_TEST:-}" ]] && args+=(--run-test="${CONFORMANCE_RUN_TEST}")
# shellcheck disable=SC2206
[[ -n "${CONFORMANCE_ARGS:-}" ]] && args+=(${CONFORMANCE_ARGS})
t0=${SECONDS}
( cd "${STATE}" && "${SUITE}/conformance.test" "${args[@]}" ) >"${STATE}/suite.log" 2>&1
suite_rc=$?
grep -E '^(=== RUN|--- (PASS|FAIL|SKIP)|    --- (PASS|FAIL|SKIP))' "${STATE}/suite.log" | grep -E -- '--- ' | sed 's/^/  /' | tail -n 200
echo "suite exit ${suite_rc} in $((SECONDS - t0))s; log ${STATE}/suite.log; report ${REPORT}"
"${K[@]}" -n "${NS}" logs deploy/wsgate --tail=-1 >"${STATE}/wsgate.log" 2>&1 || true
[[ -f "${REPORT}" ]] && sed -n '/^profiles:/,$p' "${REPORT}" | head -n 60
rc=${suite_rc}
exit "${rc}"
