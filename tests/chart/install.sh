#!/usr/bin/env bash
# tests/chart/install.sh — the chart against a real kube-apiserver (hack/k8s), in a
# private network namespace, and the real wsgate binary driven by the chart's
# ServiceAccount token.
#
#  A. gateway release `wsgate` in wsgate-system (tests/chart/values/monitoring.yaml,
#     CRD from crds/): every rendered object is accepted by the API server (with
#     the real prometheus-operator CRDs for ServiceMonitor/PrometheusRule/PodMonitor
#     when the Go module proxy has them, minimal CRDs otherwise); the CRD is
#     Established. Then `wsgate run` with the Deployment's own args and a token of
#     the chart's ServiceAccount (no kubelet here, so the binary runs locally as
#     the Pod would): a route to a Service + EndpointSlice (192.0.2.10, an echo
#     backend) becomes Programmed=True, a WebSocket tunnel works through it, a
#     broken route gets an Event, the Lease is taken, and the token can do no more
#     than the rule files say.
#  S. sidecar release `chat`: its ConfigMap read back from the API and served by
#     `wsgate serve` in front of an app on 127.0.0.1:<appPort>; examples/sidecar is
#     accepted by the API server.
#  M. tests/chart/metrics-used.sh against the `wsgate run` and `wsgate serve`
#     instances above: every metric the dashboard and alerts use is exported.
#  U. `helm upgrade` with changed values (visible in the API objects), the
#     documented CRD upgrade (`kubectl apply --server-side`) and adoption
#     (`crds.manage=true`), SIGTERM drain exit, `helm uninstall` (objects gone,
#     CRD kept).
#  B. namespaced release (watchNamespaces: [team-a, team-b]): Roles only there;
#     the binary with that token serves team-a, ignores team-c, and its token is
#     Forbidden outside team-a/team-b.
#
# Prints one line per check, phase timings and "N passed, N failed"; exits 1 on
# any failure. Cleans up (processes, control plane) on exit; the state dir is
# kept only when something failed.
# Env: CARGO_TARGET_DIR, WSGATE_CACHE, HELM, WSGATE_PROM_OPERATOR_VERSION (v0.85.0),
#      KEEP_STATE=1 (keep the state dir).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="${ROOT}/tests/chart"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/wsgate/target}"
PROM_OP_VERSION="${WSGATE_PROM_OPERATOR_VERSION:-v0.85.0}"
if [[ "${WSGATE_CHART_INSTALL_INSIDE:-}" != 1 ]]; then
  # Everything that needs a registry happens out here: the network namespace
  # below has loopback only.
  HELM="${HELM:-$("${ROOT}/hack/k8s/helm.sh" | tail -n1)}" || { echo "install.sh: no helm (hack/k8s/helm.sh)" >&2; exit 2; }
  "${ROOT}/hack/k8s/assets.sh" >/dev/null || { echo "install.sh: hack/k8s/assets.sh failed" >&2; exit 2; }
  if [[ ! -x "${CARGO_TARGET_DIR}/debug/wsgate" || ! -x "${CARGO_TARGET_DIR}/debug/examples/echo" ]]; then
    (cd "${ROOT}" && cargo build --quiet --bin wsgate --example echo) || { echo "install.sh: cargo build failed" >&2; exit 2; }
  fi
  # The real prometheus-operator CRDs ship in its Go module.
  WSGATE_PROM_CRDS_DIR="$(go mod download -json "github.com/prometheus-operator/prometheus-operator@${PROM_OP_VERSION}" 2>/dev/null |
    jq -r '.Dir // empty')/example/prometheus-operator-crd" || true
  export HELM WSGATE_PROM_CRDS_DIR
  WSGATE_CHART_INSTALL_INSIDE=1 exec "${ROOT}/hack/k8s/in-netns.sh" "${BASH_SOURCE[0]}" "$@"
fi

CHART="${ROOT}/charts/wsgate"
CP="${ROOT}/hack/k8s/control-plane.sh"
CC="${HERE}/chartcheck.py"
WSGATE="${CARGO_TARGET_DIR}/debug/wsgate"
ECHO="${CARGO_TARGET_DIR}/debug/examples/echo"
T0=${SECONDS}
passed=0 failed=0
failures=()
timings=()
pass() { echo "ok   - $*"; passed=$((passed + 1)); }
flunk() { echo "FAIL - $*"; failed=$((failed + 1)); failures+=("$*"); }
indent() { sed 's/^/    /'; }
phase_start=${SECONDS}
phase() {
  [[ -n "${PHASE:-}" ]] && timings+=("${PHASE}: $((SECONDS - phase_start))s")
  PHASE="$1"; phase_start=${SECONDS}
  echo; echo "== $1"
}

STATE="$(mktemp -d /tmp/wsgate-chart-install.XXXXXX)"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "${p}" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "${p}" 2>/dev/null; done
  "${CP}" stop "${STATE}" >/dev/null 2>&1 || true
  if [[ ${failed} -eq 0 && "${KEEP_STATE:-}" != 1 ]]; then
    rm -rf "${STATE}"
  else
    echo "install.sh: state and logs kept in ${STATE}"
  fi
}
trap cleanup EXIT
abort() { flunk "$*"; summary; exit 1; }
summary() {
  [[ -n "${PHASE:-}" ]] && timings+=("${PHASE}: $((SECONDS - phase_start))s") && PHASE=""
  echo
  echo "timings: ${timings[*]/%/;} total $((SECONDS - T0))s"
  for f in "${failures[@]}"; do echo "  failed: ${f}"; done
  echo "install.sh: ${passed} passed, ${failed} failed"
}

# ---- prerequisites ----------------------------------------------------------
phase "prerequisites"
command -v python3 >/dev/null && python3 -c 'import yaml' 2>/dev/null || abort "python3 with PyYAML is required"
command -v jq >/dev/null || abort "jq is required"
[[ -x "${HELM:-}" && -x "${WSGATE}" && -x "${ECHO}" ]] || abort "helm, wsgate or the echo example missing"
pass "helm $(${HELM} version --short), ${WSGATE}"

"${CP}" start "${STATE}" 2>"${STATE}/control-plane.start.log" || { cat "${STATE}/control-plane.start.log" >&2; abort "control plane did not start"; }
# shellcheck disable=SC1091
source "${STATE}/env"
k() { "${KUBECTL}" "$@"; }
h() { "${HELM}" --kubeconfig "${KUBECONFIG}" "$@"; }
pass "control plane up: $(k version -o json | jq -r .serverVersion.gitVersion) at ${APISERVER_URL}"

# ---- prometheus-operator CRDs ------------------------------------------------
PROM_CRDS=""
dir="${WSGATE_PROM_CRDS_DIR:-}"
if [[ -f "${dir}/monitoring.coreos.com_servicemonitors.yaml" ]]; then
  PROM_CRDS="real (prometheus-operator ${PROM_OP_VERSION})"
  for c in servicemonitors podmonitors prometheusrules; do
    k apply --server-side -f "${dir}/monitoring.coreos.com_${c}.yaml" >/dev/null ||
      abort "cannot create the ${c} CRD"
  done
else
  PROM_CRDS="minimal (schema-less; the Go module proxy had no prometheus-operator ${PROM_OP_VERSION})"
  for kp in ServiceMonitor:servicemonitors PodMonitor:podmonitors PrometheusRule:prometheusrules; do
    k apply -f - >/dev/null <<EOF || abort "cannot create a minimal ${kp%%:*} CRD"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: ${kp#*:}.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ${kp%%:*}, plural: ${kp#*:}, singular: $(tr '[:upper:]' '[:lower:]' <<<"${kp%%:*}"), listKind: ${kp%%:*}List}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
EOF
  done
fi
k wait --for=condition=Established crd/servicemonitors.monitoring.coreos.com crd/podmonitors.monitoring.coreos.com \
  crd/prometheusrules.monitoring.coreos.com --timeout=30s >/dev/null && pass "monitoring CRDs: ${PROM_CRDS}" ||
  abort "monitoring CRDs not Established"

# ---- helpers ------------------------------------------------------------------
# Objects of a release's manifest: "kind name namespace" lines.
manifest_objects() { # RELEASE NS
  h get manifest "$1" -n "$2" | python3 -c '
import sys, yaml
for d in yaml.safe_load_all(sys.stdin):
    if d:
        print(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace", "-"))'
}
get_obj() { # KIND NAME NS
  if [[ "$3" == - ]]; then k get "$1" "$2" -o name 2>&1; else k get "$1" "$2" -n "$3" -o name 2>&1; fi
}
check_all_present() { # RELEASE NS
  local kind name ns n=0 bad=0 out
  while read -r kind name ns; do
    n=$((n + 1))
    out="$(get_obj "${kind}" "${name}" "${ns}")" || { bad=$((bad + 1)); flunk "$1: ${kind} ${ns}/${name} not in the API: ${out}"; }
  done < <(manifest_objects "$1" "$2")
  [[ ${bad} == 0 && ${n} -gt 0 ]] && pass "$1: all ${n} objects of the manifest exist in the API server ($(manifest_objects "$1" "$2" | awk '{print $1}' | sort | uniq -c | awk '{printf "%s%s ", $2, ($1 > 1 ? "x" $1 : "")}'))"
}

wait_http() { # URL SECONDS
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# Runs the binary the way the release's Deployment would: its args (listeners
# moved to free loopback ports), its RUST_LOG, POD_NAME/POD_NAMESPACE as the
# downward API sets them, and the ServiceAccount's token instead of the
# in-cluster one. Sets RUN_PID, RUN_LISTEN, RUN_ADMIN, RUN_LOG.
run_like_deployment() { # DEPLOYMENT NS SA_KUBECONFIG LOG
  local dep="$1" ns="$2" kc="$3" json L T A
  json="$(k get deployment "${dep}" -n "${ns}" -o json)" || return 1
  read -r L T A < <(python3 "${CC}" free-ports 3)
  mapfile -t RUN_ARGS < <(jq -r '.spec.template.spec.containers[0].args[]' <<<"${json}" |
    sed -e "s/^--listen=.*/--listen=127.0.0.1:${L}/" -e "s/^--tls-listen=.*/--tls-listen=127.0.0.1:${T}/" \
      -e "s/^--admin-listen=.*/--admin-listen=127.0.0.1:${A}/" -e "/^--metrics-listen=/d")
  RUN_ARGS+=("--kubeconfig=${kc}")
  local rust_log
  rust_log="$(jq -r '.spec.template.spec.containers[0].env[] | select(.name == "RUST_LOG") | .value' <<<"${json}")"
  echo "    POD_NAMESPACE=${ns} POD_NAME=${dep}-test-0 RUST_LOG=${rust_log} wsgate ${RUN_ARGS[*]}"
  RUN_LOG="$4"
  POD_NAMESPACE="${ns}" POD_NAME="${dep}-test-0" RUST_LOG="${rust_log}" "${WSGATE}" "${RUN_ARGS[@]}" 2>"${RUN_LOG}" &
  RUN_PID=$!
  pids+=("${RUN_PID}")
  RUN_LISTEN="127.0.0.1:${L}" RUN_ADMIN="127.0.0.1:${A}" RUN_TLS="127.0.0.1:${T}"
  wait_http "http://${RUN_ADMIN}/readyz" 60
}

backend_objects() { # NS ADDRESS CLASS PATH NAME
  cat <<EOF
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: $1}
spec:
  ports: [{name: ws, port: 80, targetPort: 9001, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-1
  namespace: $1
  labels: {kubernetes.io/service-name: echo}
addressType: IPv4
ports: [{name: ws, port: 9001, protocol: TCP}]
endpoints:
  - addresses: ["$2"]
    conditions: {ready: true}
---
apiVersion: wsgate.io/v1alpha1
kind: WebSocketRoute
metadata: {name: $5, namespace: $1}
spec:
  className: $3
  path: {type: PathPrefix, value: $4}
  backends: [{service: {name: echo, port: 80}}]
  keepalive: {interval: 1s, timeout: 500ms, backend: {interval: 1s, timeout: 500ms}}
EOF
}

wait_programmed() { # NS ROUTE SECONDS
  k wait --for=condition=Programmed=True "websocketroute/$2" -n "$1" --timeout="$3s" >/dev/null 2>&1
}

can_i() { # KUBECONFIG VERB RESOURCE[/SUBRESOURCE] NS|-A
  local ns=(-n "$4") res="$3" sub=()
  [[ "$4" == -A ]] && ns=(-A)
  if [[ "${res}" == */* ]]; then sub=(--subresource "${res#*/}"); res="${res%%/*}"; fi
  "${KUBECTL}" --kubeconfig "$1" auth can-i "$2" "${res}" "${sub[@]}" "${ns[@]}" 2>/dev/null
}
expect_can() { # yes|no KUBECONFIG VERB RESOURCE NS WHO
  local got
  got="$(can_i "$2" "$3" "$4" "$5")"
  [[ "${got}" == "$1" ]] && pass "$6 can-i $3 $4 in ${5}: ${got}" || flunk "$6 can-i $3 $4 in ${5}: ${got:-?}, want $1"
}

# ==== A. gateway release ========================================================
phase "A. gateway release: install"
REL=wsgate RNS=wsgate-system
k create namespace monitoring >/dev/null
if out="$(h install "${REL}" "${CHART}" -n "${RNS}" --create-namespace -f "${HERE}/values/monitoring.yaml" \
  --set crds.manage=false 2>&1)"; then
  pass "helm install ${REL} -f values/monitoring.yaml (crds/ path)"
  grep -q 'kubectl get wsr -A' <<<"${out}" && pass "NOTES printed" || flunk "no NOTES in the install output"
else
  echo "${out}" | indent; abort "helm install ${REL}"
fi
check_all_present "${REL}" "${RNS}"
k wait --for=condition=Established crd/websocketroutes.wsgate.io --timeout=30s >/dev/null &&
  pass "kubectl get crd websocketroutes.wsgate.io: Established ($(k get crd websocketroutes.wsgate.io -o jsonpath='{.spec.versions[*].name}'))" ||
  flunk "CRD websocketroutes.wsgate.io not Established"
tgp="$(k get deploy "${REL}" -n "${RNS}" -o jsonpath='{.spec.template.spec.terminationGracePeriodSeconds}')"
[[ "${tgp}" == 80 ]] && pass "Deployment in the API: terminationGracePeriodSeconds 80 (drain 60 + preStop 5 + 15)" ||
  flunk "terminationGracePeriodSeconds ${tgp}, want 80"
sleep_s="$(k get deploy "${REL}" -n "${RNS}" -o jsonpath='{.spec.template.spec.containers[0].lifecycle.preStop.sleep.seconds}')"
[[ "${sleep_s}" == 5 ]] && pass "preStop sleep action kept by the API server" || flunk "preStop sleep dropped by the API server (${sleep_s:-none})"
[[ "$(k get svc "${REL}" -n "${RNS}" -o jsonpath='{.spec.externalTrafficPolicy}')" == Local ]] &&
  pass "Service externalTrafficPolicy Local" || flunk "Service externalTrafficPolicy not Local"

phase "A. gateway release: the binary with the chart's ServiceAccount"
"${CP}" token "${STATE}" "${RNS}" "${REL}" "${STATE}/sa-${REL}.kubeconfig" 2>/dev/null || abort "TokenRequest for ${RNS}/${REL}"
k create namespace apps >/dev/null
"${ECHO}" 192.0.2.10:9001 2>"${STATE}/echo-apps.log" & pids+=($!)
backend_objects apps 192.0.2.10 wsgate / echo | k apply -f - >/dev/null || abort "cannot create the apps Service/EndpointSlice/route"
if run_like_deployment "${REL}" "${RNS}" "${STATE}/sa-${REL}.kubeconfig" "${STATE}/wsgate-${REL}.log"; then
  pass "wsgate run with the Deployment's args and the SA token: /readyz 200"
else
  tail -n 30 "${RUN_LOG}" | indent; abort "wsgate run never became ready"
fi
A_PID=${RUN_PID} A_LISTEN=${RUN_LISTEN} A_ADMIN=${RUN_ADMIN} A_LOG=${RUN_LOG} A_TLS=${RUN_TLS}
if wait_programmed apps echo 60; then
  pass "route apps/echo Programmed=True (status written by the binary): $(k get wsr echo -n apps -o jsonpath='{.status.conditions[?(@.type=="Programmed")].message}')"
else
  k get wsr echo -n apps -o yaml | indent; tail -n 30 "${A_LOG}" | indent; flunk "route apps/echo not Programmed"
fi
if out="$(python3 "${CC}" ws "ws://${A_LISTEN}/chat" --message "through the gateway" 2>&1)"; then
  pass "WebSocket tunnel through wsgate run to 192.0.2.10:9001: $(tr '\n' ' ' <<<"${out}")"
else
  echo "${out}" | indent; flunk "tunnel through wsgate run"
fi
if out="$(python3 "${CC}" ws "ws://${A_LISTEN}/idle" --idle 10 2>&1)"; then
  pass "keepalive: a client ignoring pings is closed by the proxy ($(tail -n1 <<<"${out}"))"
else
  echo "${out}" | indent; flunk "keepalive close through wsgate run"
fi
code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://${A_LISTEN}/plain-http")"
[[ "${code}" =~ ^[1-5][0-9][0-9]$ && "${code}" != 404 ]] && pass "plain HTTP request counted by the route (proxyHttp): ${code} (the echo backend speaks only WebSocket)" ||
  flunk "plain HTTP request through wsgate run: ${code}"
holder="$(k get lease "${REL}" -n "${RNS}" -o jsonpath='{.spec.holderIdentity}' 2>/dev/null)"
[[ "${holder}" == "${REL}-test-0" ]] && pass "Lease ${RNS}/${REL} held by ${holder} (Lease Role works)" ||
  flunk "Lease ${RNS}/${REL} holder '${holder}'"
# Events: a route whose Service does not exist is refused with a Warning Event.
k apply -f - >/dev/null <<'EOF'
apiVersion: wsgate.io/v1alpha1
kind: WebSocketRoute
metadata: {name: broken, namespace: apps}
spec:
  path: {type: PathPrefix, value: /broken}
  backends: [{service: {name: nope, port: 80}}]
EOF
ev=""
for ((i = 0; i < 100; i++)); do
  ev="$(k get events.events.k8s.io -n apps -o json | jq -r '.items[] | select(.regarding.name == "broken") | "\(.type) \(.reason): \(.note)"' | head -n1)"
  [[ -n "${ev}" ]] && break
  sleep 0.2
done
[[ -n "${ev}" ]] && pass "Event published for apps/broken (events RBAC): ${ev}" || { grep -i event "${A_LOG}" | tail -n 5 | indent; flunk "no Event for apps/broken"; }
st="$(k get wsr broken -n apps -o jsonpath='{.status.conditions[?(@.type=="ResolvedRefs")].status}')"
[[ "${st}" == False ]] && pass "apps/broken ResolvedRefs=False" || flunk "apps/broken ResolvedRefs '${st}'"
grep -Eqw 'forbidden|Forbidden|403' "${A_LOG}" && { grep -Ew 'forbidden|Forbidden|403' "${A_LOG}" | head -n 5 | indent; flunk "the binary hit Forbidden with the chart's RBAC"; } ||
  pass "no Forbidden in the binary's log"
SA="${STATE}/sa-${REL}.kubeconfig"
WHO="system:serviceaccount:${RNS}:${REL}"
expect_can yes "${SA}" list websocketroutes.wsgate.io -A "${WHO}"
expect_can yes "${SA}" patch websocketroutes.wsgate.io/status apps "${WHO}"
expect_can no "${SA}" update websocketroutes.wsgate.io apps "${WHO}"
expect_can no "${SA}" delete websocketroutes.wsgate.io apps "${WHO}"
# Least privilege (H2): Secrets and ConfigMaps by name only, never listed or watched.
expect_can no "${SA}" list secrets kube-system "${WHO}"
expect_can no "${SA}" list secrets -A "${WHO}"
expect_can no "${SA}" watch secrets -A "${WHO}"
expect_can no "${SA}" list configmaps -A "${WHO}"
expect_can no "${SA}" watch configmaps -A "${WHO}"
expect_can no "${SA}" create secrets apps "${WHO}"
# ...and a route's TLS Secret, read by name, still serves its certificate.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=secure.apps.test -addext subjectAltName=DNS:secure.apps.test \
  -keyout "${STATE}/secure.key" -out "${STATE}/secure.crt" 2>/dev/null || flunk "openssl req"
k create secret tls secure -n apps --cert="${STATE}/secure.crt" --key="${STATE}/secure.key" >/dev/null || flunk "create Secret apps/secure"
k apply -f - >/dev/null <<'EOF'
apiVersion: wsgate.io/v1alpha1
kind: WebSocketRoute
metadata: {name: secure, namespace: apps}
spec:
  hostnames: [secure.apps.test]
  tls: {secretName: secure}
  backends: [{service: {name: echo, port: 80}}]
EOF
if wait_programmed apps secure 30; then
  want="$(openssl x509 -in "${STATE}/secure.crt" -outform der | sha256sum | cut -d' ' -f1)"
  got="$(python3 - "${A_TLS}" <<'PY'
import hashlib, socket, ssl, sys
host, port = sys.argv[1].rsplit(":", 1)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
with socket.create_connection((host, int(port)), timeout=5) as s, ctx.wrap_socket(s, server_hostname="secure.apps.test") as t:
    print(hashlib.sha256(t.getpeercert(binary_form=True)).hexdigest())
PY
)"
  [[ "${got}" == "${want}" ]] && pass "the TLS Secret apps/secure (read by name, no list/watch) serves SNI secure.apps.test" ||
    flunk "SNI secure.apps.test presented ${got:-nothing}, want the Secret's certificate ${want}"
else
  k get wsr secure -n apps -o yaml | indent; flunk "route apps/secure not Programmed"
fi
# ...and 10 MiB of ConfigMaps no route names change neither its memory nor its table.
rss() { awk '/^VmRSS/ {print $2}' "/proc/${A_PID}/status"; }
reconciles() { curl -s --max-time 5 "http://${A_ADMIN}/metrics" | awk '/^wsgate_controller_reconciles_total/ {s += $2} END {print s + 0}'; }
rss0="$(rss)" rec0="$(reconciles)"
head -c 600000 /dev/urandom | base64 -w 0 >"${STATE}/blob.txt"
for i in $(seq 1 13); do
  k create configmap "noise-${i}" -n apps --from-file=blob="${STATE}/blob.txt" >/dev/null || flunk "create ConfigMap apps/noise-${i}"
done
sleep 2
rss1="$(rss)" rec1="$(reconciles)"
(( rss1 - rss0 < 2048 )) && pass "13 ConfigMaps of 800 KiB (10 MiB) no route names: RSS ${rss0} → ${rss1} KiB" ||
  flunk "13 ConfigMaps of 800 KiB no route names: RSS ${rss0} → ${rss1} KiB (grew by 2 MiB or more)"
(( rec1 - rec0 <= 1 )) && pass "... and rebuilt nothing: wsgate_controller_reconciles_total ${rec0} → ${rec1} (the 60 s resync may add 1)" ||
  flunk "unrelated ConfigMaps rebuilt the routes: wsgate_controller_reconciles_total ${rec0} → ${rec1}"
expect_can no "${SA}" create leases.coordination.k8s.io apps "${WHO}"
expect_can yes "${SA}" update leases.coordination.k8s.io "${RNS}" "${WHO}"
expect_can no "${SA}" list pods -A "${WHO}"

# ==== S. sidecar release ===========================================================
phase "S. sidecar release"
if out="$(h install chat "${CHART}" -n chat --create-namespace -f "${HERE}/values/sidecar-monitoring.yaml" --skip-crds 2>&1)"; then
  pass "helm install chat -f values/sidecar-monitoring.yaml (mode=sidecar)"
  grep -q -- '--config=/etc/wsgate/routes.yaml' <<<"${out}" && pass "NOTES print the wsgate container snippet" ||
    { echo "${out}" | indent; flunk "no container snippet in the NOTES"; }
  sed -n '/^containers:/,/^Set the Pod/p' <<<"${out}" >"${STATE}/sidecar-snippet.yaml"
  python3 - "${STATE}/sidecar-snippet.yaml" <<'EOF' && pass "the printed snippet is valid YAML (containers + volumes)" || flunk "the printed snippet is not valid YAML"
import sys, yaml
text = open(sys.argv[1]).read().rsplit("Set the Pod", 1)[0]
d = yaml.safe_load(text)
c = d["containers"][0]
assert c["name"] == "wsgate" and c["args"][0] == "serve", c
assert d["volumes"][0]["configMap"]["name"].endswith("-routes")
EOF
else
  echo "${out}" | indent; flunk "helm install chat (sidecar)"
fi
check_all_present chat chat
if k get cm chat-wsgate-routes -n chat -o jsonpath='{.data.routes\.yaml}' >"${STATE}/chat-routes.yaml" 2>/dev/null &&
  "${WSGATE}" check --config "${STATE}/chat-routes.yaml" >/dev/null; then
  pass "ConfigMap chat-wsgate-routes read back from the API passes wsgate check"
  app_port="$(sed -n 's/.*address: 127.0.0.1:\([0-9]*\).*/\1/p' "${STATE}/chat-routes.yaml")"
  read -r SL SA_ < <(python3 "${CC}" free-ports 2)
  "${ECHO}" "127.0.0.1:${app_port}" 2>"${STATE}/echo-chat.log" & pids+=($!)
  "${WSGATE}" serve --config "${STATE}/chat-routes.yaml" --listen "127.0.0.1:${SL}" --admin-listen "127.0.0.1:${SA_}" \
    --drain-timeout 1s 2>"${STATE}/wsgate-chat.log" & pids+=($!)
  S_ADMIN="127.0.0.1:${SA_}"
  if wait_http "http://${S_ADMIN}/readyz" 20 && out="$(python3 "${CC}" ws "ws://127.0.0.1:${SL}/" --message sidecar 2>&1)"; then
    pass "sidecar: wsgate serve with that routes.yaml tunnels to 127.0.0.1:${app_port}"
  else
    echo "${out:-}" | indent; tail -n 10 "${STATE}/wsgate-chat.log" | indent; flunk "sidecar serve"
  fi
else
  flunk "ConfigMap chat-wsgate-routes missing or invalid"
fi
if out="$(k apply -n chat -f "${ROOT}/examples/sidecar/sidecar.yaml" 2>&1)"; then
  pass "examples/sidecar/sidecar.yaml accepted by the API server: $(tr '\n' ' ' <<<"${out}")"
  [[ "$(k get deploy chat -n chat -o jsonpath='{.spec.template.spec.containers[*].name}')" == "app wsgate" ]] &&
    pass "example Deployment has containers app and wsgate" || flunk "example Deployment containers"
else
  echo "${out}" | indent; flunk "examples/sidecar/sidecar.yaml refused"
fi

# ==== M. metrics used by the dashboard and alerts ====================================
phase "M. metrics used by the dashboard and alerts"
if [[ -n "${S_ADMIN:-}" ]] && out="$(HELM="${HELM}" "${HERE}/metrics-used.sh" "http://${A_ADMIN}/metrics" "http://${S_ADMIN}/metrics" 2>&1)"; then
  echo "${out}" | grep -Ev '^  ok ' | indent
  pass "metrics-used.sh: every wsgate_* name and label the dashboard and alerts use is exported by wsgate run + wsgate serve"
else
  echo "${out:-no sidecar instance}" | indent; flunk "metrics-used.sh"
fi

# ==== U. upgrade, CRD upgrade, uninstall ==========================================
phase "U. upgrade and uninstall"
if out="$(h upgrade "${REL}" "${CHART}" -n "${RNS}" --reuse-values --set drainTimeoutSeconds=90 \
  --set autoscaling.enabled=false --set replicaCount=3 2>&1)"; then
  pass "helm upgrade ${REL} (drainTimeoutSeconds 90, autoscaling off, replicaCount 3)"
else
  echo "${out}" | indent; flunk "helm upgrade ${REL}"
fi
dep="$(k get deploy "${REL}" -n "${RNS}" -o json)"
[[ "$(jq -r .spec.template.spec.terminationGracePeriodSeconds <<<"${dep}")" == 110 &&
  "$(jq -r '.spec.template.spec.containers[0].args | index("--drain-timeout=90s") != null' <<<"${dep}")" == true &&
  "$(jq -r .spec.replicas <<<"${dep}")" == 3 ]] &&
  pass "upgraded Deployment: --drain-timeout=90s, terminationGracePeriodSeconds 110, replicas 3" ||
  flunk "upgraded Deployment: $(jq -c '{tgp: .spec.template.spec.terminationGracePeriodSeconds, replicas: .spec.replicas, args: .spec.template.spec.containers[0].args}' <<<"${dep}")"
out="$(k get hpa "${REL}" -n "${RNS}" 2>&1)" && flunk "HPA still exists after autoscaling.enabled=false" ||
  pass "HPA removed by the upgrade"
[[ "$(h history "${REL}" -n "${RNS}" -o json | jq length)" == 2 ]] && pass "helm history: 2 revisions" || flunk "helm history"
# The documented CRD upgrade (crds/ is never upgraded by Helm).
if out="$(k apply --server-side --force-conflicts -f "${CHART}/crds/" 2>&1)"; then
  pass "kubectl apply --server-side --force-conflicts -f charts/wsgate/crds/: ${out}"
else
  echo "${out}" | indent; flunk "CRD upgrade by server-side apply"
fi
# The documented switch to crds.manage=true for an existing release.
for crd in websocketroutes.wsgate.io websocketpolicies.wsgate.io; do
  k annotate crd "${crd}" meta.helm.sh/release-name="${REL}" meta.helm.sh/release-namespace="${RNS}" --overwrite >/dev/null
  k label crd "${crd}" app.kubernetes.io/managed-by=Helm --overwrite >/dev/null
done
if out="$(h upgrade "${REL}" "${CHART}" -n "${RNS}" --reuse-values --set crds.manage=true 2>&1)" &&
  [[ "$(k get crd websocketroutes.wsgate.io -o jsonpath='{.metadata.annotations.helm\.sh/resource-policy}')" == keep ]] &&
  [[ "$(k get crd websocketpolicies.wsgate.io -o jsonpath='{.metadata.annotations.helm\.sh/resource-policy}')" == keep ]]; then
  pass "CRDs adopted by the release (crds.manage=true): helm.sh/resource-policy=keep"
else
  echo "${out}" | indent; flunk "CRD adoption with crds.manage=true"
fi
wait_programmed apps echo 5 && pass "route apps/echo still Programmed after the CRD upgrades" || flunk "route lost after the CRD upgrades"
# What terminationGracePeriodSeconds relies on: SIGTERM -> drain -> exit 0.
kill -TERM "${A_PID}"
t=${SECONDS}
wait "${A_PID}"; rc=$?
[[ ${rc} == 0 ]] && pass "wsgate run exits 0 on SIGTERM after $((SECONDS - t))s (no open tunnels)" || flunk "wsgate run exit status ${rc} on SIGTERM"
mapfile -t before < <(manifest_objects "${REL}" "${RNS}")
if out="$(h uninstall "${REL}" -n "${RNS}" 2>&1)"; then
  pass "helm uninstall ${REL}: $(tr '\n' ' ' <<<"${out}")"
else
  echo "${out}" | indent; flunk "helm uninstall ${REL}"
fi
left=()
for line in "${before[@]}"; do
  read -r kind name ns <<<"${line}"
  [[ "${kind}" == CustomResourceDefinition ]] && continue
  get_obj "${kind}" "${name}" "${ns}" >/dev/null && left+=("${kind}/${name}")
done
[[ ${#left[@]} == 0 ]] && pass "every object of the release is gone ($((${#before[@]} - 1)) checked)" || flunk "left after uninstall: ${left[*]}"
k get crd websocketroutes.wsgate.io >/dev/null 2>&1 && k get wsr echo -n apps >/dev/null 2>&1 &&
  pass "CRD and routes kept after uninstall (resource-policy keep)" || flunk "CRD or routes deleted by uninstall"

# ==== B. namespaced release ========================================================
phase "B. namespaced release (watchNamespaces: [team-a, team-b])"
RELB=wsgate-team NSB=wsgate-team
for ns in team-a team-b team-c; do k create namespace "${ns}" >/dev/null; done
if out="$(h install "${RELB}" "${CHART}" -n "${NSB}" --create-namespace -f "${HERE}/values/namespaced.yaml" 2>&1)"; then
  pass "helm install ${RELB} -f values/namespaced.yaml"
else
  echo "${out}" | indent; abort "helm install ${RELB}"
fi
check_all_present "${RELB}" "${NSB}"
k get clusterrole "${RELB}" >/dev/null 2>&1 && flunk "a ClusterRole exists for the namespaced release" ||
  pass "no ClusterRole for the namespaced release"
for ns in team-a team-b; do
  k get role "${RELB}" -n "${ns}" >/dev/null 2>&1 && pass "Role ${ns}/${RELB}" || flunk "no Role ${ns}/${RELB}"
done
"${CP}" token "${STATE}" "${NSB}" "${RELB}" "${STATE}/sa-${RELB}.kubeconfig" 2>/dev/null || abort "TokenRequest for ${NSB}/${RELB}"
"${ECHO}" 192.0.2.11:9001 2>"${STATE}/echo-team-a.log" & pids+=($!)
backend_objects team-a 192.0.2.11 internal /a team-a-echo | k apply -f - >/dev/null || flunk "team-a objects"
backend_objects team-c 192.0.2.11 internal /c team-c-echo | k apply -f - >/dev/null || flunk "team-c objects"
if run_like_deployment "${RELB}" "${NSB}" "${STATE}/sa-${RELB}.kubeconfig" "${STATE}/wsgate-${RELB}.log"; then
  pass "wsgate run (--namespace=team-a --namespace=team-b, --class=internal) with the namespaced SA token: /readyz 200"
  if wait_programmed team-a team-a-echo 60; then
    pass "route team-a/team-a-echo Programmed=True"
  else
    tail -n 20 "${RUN_LOG}" | indent; flunk "route team-a/team-a-echo not Programmed"
  fi
  out="$(python3 "${CC}" ws "ws://${RUN_LISTEN}/a" --message team-a 2>&1)" && pass "tunnel through the namespaced gateway to team-a" ||
    { echo "${out}" | indent; flunk "tunnel to team-a"; }
  out="$(python3 "${CC}" ws "ws://${RUN_LISTEN}/c" --expect-status 404 2>&1)" && pass "team-c's route is not served (404)" ||
    { echo "${out}" | indent; flunk "team-c route served by the namespaced gateway"; }
  [[ -z "$(k get wsr team-c-echo -n team-c -o jsonpath='{.status.conditions}')" ]] &&
    pass "team-c's route got no status from the namespaced gateway" || flunk "team-c route has status"
  grep -Eqw 'forbidden|Forbidden|403' "${RUN_LOG}" && { grep -Ew 'forbidden|Forbidden|403' "${RUN_LOG}" | head -n 5 | indent; flunk "the namespaced binary hit Forbidden"; } ||
    pass "no Forbidden in the namespaced binary's log"
  kill -TERM "${RUN_PID}"; wait "${RUN_PID}"
else
  tail -n 30 "${RUN_LOG}" | indent; flunk "namespaced wsgate run never became ready"
fi
SB="${STATE}/sa-${RELB}.kubeconfig"
for args in "team-a:ok" "team-b:ok" "team-c:forbidden" "apps:forbidden" "-A:forbidden"; do
  ns="${args%%:*}" want="${args#*:}"
  nsarg=(-n "${ns}"); [[ "${ns}" == -A ]] && nsarg=(-A)
  out="$("${KUBECTL}" --kubeconfig "${SB}" get websocketroutes "${nsarg[@]}" 2>&1)" && got=ok || got=forbidden
  [[ "${got}" == forbidden && "${out}" != *Forbidden* && "${out}" != *forbidden* ]] && got="error: ${out}"
  [[ "${got}" == "${want}" ]] && pass "namespaced SA: kubectl get websocketroutes ${nsarg[*]}: ${got}$([[ ${got} == forbidden ]] && echo " ($(head -n1 <<<"${out}" | cut -c1-110)...)")" ||
    flunk "namespaced SA: kubectl get websocketroutes ${nsarg[*]}: ${got}, want ${want}"
done
expect_can no "${SB}" get secrets team-c "system:serviceaccount:${NSB}:${RELB}"
expect_can yes "${SB}" get secrets team-a "system:serviceaccount:${NSB}:${RELB}"
expect_can no "${SB}" list secrets team-a "system:serviceaccount:${NSB}:${RELB}"
expect_can no "${SB}" update leases.coordination.k8s.io team-a "system:serviceaccount:${NSB}:${RELB}"
if out="$(h uninstall "${RELB}" -n "${NSB}" 2>&1)"; then
  pass "helm uninstall ${RELB}"
  k get role "${RELB}" -n team-a >/dev/null 2>&1 && flunk "Role team-a/${RELB} left after uninstall" || pass "Roles in team-a/team-b removed"
else
  echo "${out}" | indent; flunk "helm uninstall ${RELB}"
fi
h uninstall chat -n chat >/dev/null 2>&1 && pass "helm uninstall chat" || flunk "helm uninstall chat"

summary
[[ ${failed} == 0 ]]
