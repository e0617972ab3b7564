#!/usr/bin/env bash
# tests/chart/metrics-used.sh [METRICS_URL_OR_FILE ...]
#
# Checks that every wsgate_* metric the chart's Grafana dashboards
# (charts/wsgate/dashboards/*.json) and PrometheusRules (rendered with
# tests/chart/values/monitoring.yaml and sidecar-monitoring.yaml) query is
# exported by a running wsgate, and that every label they match on or group by
# exists on those series.
#
# The Prometheus client prints a labelled metric only once it has a child, so an
# idle process is not a fair witness. Two ways to run:
#
#   metrics-used.sh URL...   check against these /metrics endpoints (or saved
#                            files); a name passes if any of them exports it. Give
#                            instances that have carried traffic: tests/chart/install.sh
#                            passes a `wsgate run` (controller) and a `wsgate serve`.
#   metrics-used.sh          self-contained: in a private network namespace, start
#                            an echo backend and `wsgate serve`, push traffic that
#                            touches every series (an echoed message, a client that
#                            ignores pings until the proxy declares it dead, a plain
#                            HTTP request, a refused config reload), then check.
#                            Names only `wsgate run` exports
#                            (wsgate_controller_reconciles_total) are reported as
#                            SKIP here; install.sh checks them against `wsgate run`.
#
# Output: one line per metric name (ok/FAIL/SKIP) and per label problem, then a
# summary. Exit 0 when all are exported, 1 when any is missing, 2 on setup errors.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="${ROOT}/tests/chart"
CHART="${ROOT}/charts/wsgate"
CC="${HERE}/chartcheck.py"
RUN_ONLY=(wsgate_controller_reconciles_total)

if [[ $# -eq 0 && "${WSGATE_METRICS_INSIDE:-}" != 1 ]]; then
  # Registries are reachable only out here: build and fetch before the netns.
  HELM="${HELM:-$("${ROOT}/hack/k8s/helm.sh" | tail -n1)}" || { echo "metrics-used.sh: no helm" >&2; exit 2; }
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/wsgate/target}"
  if [[ ! -x "${CARGO_TARGET_DIR}/debug/wsgate" || ! -x "${CARGO_TARGET_DIR}/debug/examples/echo" ]]; then
    (cd "${ROOT}" && cargo build --quiet --bin wsgate --example echo) || { echo "metrics-used.sh: cargo build failed" >&2; exit 2; }
  fi
  export HELM
  WSGATE_METRICS_INSIDE=1 exec "${ROOT}/hack/k8s/in-netns.sh" "${BASH_SOURCE[0]}"
fi

die() { echo "metrics-used.sh: $*" >&2; exit 2; }
command -v python3 >/dev/null && python3 -c 'import yaml' 2>/dev/null || die "python3 with PyYAML is required"
HELM="${HELM:-$("${ROOT}/hack/k8s/helm.sh" | tail -n1)}" || die "no helm"
WORK="$(mktemp -d /tmp/wsgate-metrics-used.XXXXXX)"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "${p}" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "${p}" 2>/dev/null; done
  rm -rf "${WORK}"
}
trap cleanup EXIT

# ---- what the dashboards and alerts query ------------------------------------
for vf in monitoring sidecar-monitoring; do
  "${HELM}" template wsgate "${CHART}" -f "${HERE}/values/${vf}.yaml" >"${WORK}/${vf}.yaml" ||
    die "helm template -f tests/chart/values/${vf}.yaml failed"
done
python3 "${CC}" queries "${CHART}" "${WORK}/monitoring.yaml" "${WORK}/sidecar-monitoring.yaml" >"${WORK}/queries.json" ||
  die "cannot extract the queries"
nq="$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "${WORK}/queries.json")"
echo "metrics-used: ${nq} queries from charts/wsgate/dashboards/*.json and the PrometheusRules"

fetch() { # URL_OR_FILE OUT
  if [[ -f "$1" ]]; then cp "$1" "$2"; else curl -fsS --max-time 10 "$1" -o "$2"; fi
}

# ---- given endpoints ---------------------------------------------------------
if [[ $# -gt 0 ]]; then
  files=()
  i=0
  for src in "$@"; do
    i=$((i + 1))
    fetch "${src}" "${WORK}/exposition.${i}" || die "cannot read ${src}"
    files+=("${WORK}/exposition.${i}")
    echo "metrics-used: exposition ${i}: ${src} ($(grep -c '^wsgate_' "${WORK}/exposition.${i}") wsgate samples)"
  done
  python3 "${CC}" metrics "${WORK}/queries.json" "${files[@]}"
  rc=$?
  echo "metrics-used: $([[ ${rc} == 0 ]] && echo PASS || echo FAIL)"
  exit "${rc}"
fi

# ---- self-contained: wsgate serve with traffic --------------------------------
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/wsgate/target}"
WSGATE="${CARGO_TARGET_DIR}/debug/wsgate"
ECHO="${CARGO_TARGET_DIR}/debug/examples/echo"
if [[ ! -x "${WSGATE}" || ! -x "${ECHO}" ]]; then
  echo "metrics-used: building wsgate and the echo example"
  (cd "${ROOT}" && cargo build --quiet --bin wsgate --example echo) || die "cargo build failed"
fi
read -r APP LISTEN ADMIN < <(python3 "${CC}" free-ports 3)
mkdir -p "${WORK}/routes"
cat >"${WORK}/routes/echo.yaml" <<EOF
apiVersion: wsgate.io/v1alpha1
kind: WebSocketRoute
metadata: {name: echo, namespace: metrics-test}
spec:
  backends: [{address: "127.0.0.1:${APP}"}]
  keepalive: {interval: 400ms, timeout: 300ms, backend: {interval: 400ms, timeout: 300ms}}
  proxyHttp: true
EOF
"${ECHO}" "127.0.0.1:${APP}" 2>"${WORK}/echo.log" & pids+=($!)
"${WSGATE}" serve --config "${WORK}/routes" --listen "127.0.0.1:${LISTEN}" --admin-listen "127.0.0.1:${ADMIN}" \
  --drain-timeout 1s 2>"${WORK}/wsgate.log" & pids+=($!)
for ((i = 0; i < 100; i++)); do
  curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:${ADMIN}/readyz" 2>/dev/null && break
  sleep 0.1
done
curl -fsS -o /dev/null "http://127.0.0.1:${ADMIN}/readyz" 2>/dev/null || { tail -n 20 "${WORK}/wsgate.log" >&2; die "wsgate serve not ready"; }
echo "metrics-used: traffic through wsgate serve on 127.0.0.1:${LISTEN}"
python3 "${CC}" ws "ws://127.0.0.1:${LISTEN}/" --message "hello metrics" | sed 's/^/  /' || die "echo tunnel failed"
python3 "${CC}" ws "ws://127.0.0.1:${LISTEN}/" --idle 10 | sed 's/^/  /' || die "the proxy did not close a tunnel that ignored its pings"
code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:${LISTEN}/plain")"
echo "  plain HTTP request: ${code}"
# A refused reload: the previous table keeps serving; then the good file again.
cp "${WORK}/routes/echo.yaml" "${WORK}/echo.good"
echo "spec: {backends: []}" >>"${WORK}/routes/echo.yaml"
for ((i = 0; i < 50; i++)); do
  curl -fsS "http://127.0.0.1:${ADMIN}/metrics" 2>/dev/null | grep -q '^wsgate_config_reloads_total{result="error"}' && break
  sleep 0.1
done
cp "${WORK}/echo.good" "${WORK}/routes/echo.yaml"
sleep 0.5
fetch "http://127.0.0.1:${ADMIN}/metrics" "${WORK}/exposition" || die "cannot scrape wsgate"
echo "metrics-used: exposition: wsgate serve ($(grep -c '^wsgate_' "${WORK}/exposition") wsgate samples)"
skips=()
for n in "${RUN_ONLY[@]}"; do skips+=(--skip "${n}"); done
python3 "${CC}" metrics "${WORK}/queries.json" "${skips[@]}" "${WORK}/exposition"
rc=$?
echo "metrics-used: $([[ ${rc} == 0 ]] && echo PASS || echo FAIL) (wsgate serve only; names only \`wsgate run\` exports are checked by tests/chart/install.sh)"
exit "${rc}"
