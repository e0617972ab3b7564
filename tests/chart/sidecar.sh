#!/usr/bin/env bash
# tests/chart/sidecar.sh — sidecar mode with the real wsgate binary.
#
#   1. `helm template --set mode=sidecar` (defaults and tests/chart/values/sidecar.yaml):
#      the ConfigMap's routes.yaml passes `wsgate check --config`; a value wsgate
#      refuses (a keepalive timeout of 0s while pings are on) fails it with file:line.
#   2. examples/sidecar/sidecar.yaml: its ConfigMap's routes.yaml passes `wsgate check`.
#   3. Inside a private network namespace, as the kubelet would run them:
#      - the rendered routes.yaml, mounted ConfigMap-style (..data symlink), served by
#        `wsgate serve` in front of an echo app on 127.0.0.1:<appPort>: /readyz 200,
#        a tunnel echoes; then the ConfigMap is updated the way the kubelet does
#        (atomic ..data swap) and wsgate applies the new route;
#      - the example's wsgate container args verbatim (ports 8080/9090, app on 3000):
#        a tunnel echoes through it.
#
# Prints one line per check and a summary; exits 1 on any failure.
# Binary: ${CARGO_TARGET_DIR:-/var/cache/wsgate/target}/debug/wsgate (built if missing).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="${ROOT}/tests/chart"
if [[ "${WSGATE_SIDECAR_INSIDE:-}" != 1 ]]; then
  # Registries are reachable only out here: build and fetch before the netns.
  HELM="${HELM:-$("${ROOT}/hack/k8s/helm.sh" | tail -n1)}" || { echo "sidecar.sh: no helm" >&2; exit 2; }
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/wsgate/target}"
  if [[ ! -x "${CARGO_TARGET_DIR}/debug/wsgate" || ! -x "${CARGO_TARGET_DIR}/debug/examples/echo" ]]; then
    (cd "${ROOT}" && cargo build --quiet --bin wsgate --example echo) || { echo "sidecar.sh: cargo build failed" >&2; exit 2; }
  fi
  export HELM
  WSGATE_SIDECAR_INSIDE=1 exec "${ROOT}/hack/k8s/in-netns.sh" "${BASH_SOURCE[0]}" "$@"
fi

CHART="${ROOT}/charts/wsgate"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/wsgate/target}"
WSGATE="${CARGO_TARGET_DIR}/debug/wsgate"
ECHO="${CARGO_TARGET_DIR}/debug/examples/echo"
CC="${HERE}/chartcheck.py"
T0=${SECONDS}
passed=0 failed=0
failures=()
pass() { echo "ok   - $*"; passed=$((passed + 1)); }
flunk() { echo "FAIL - $*"; failed=$((failed + 1)); failures+=("$*"); }

WORK="$(mktemp -d /tmp/wsgate-chart-sidecar.XXXXXX)"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "${p}" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "${p}" 2>/dev/null; done
  rm -rf "${WORK}"
}
trap cleanup EXIT

if [[ ! -x "${WSGATE}" || ! -x "${ECHO}" ]]; then
  echo "building wsgate and the echo example (cargo build)"
  (cd "${ROOT}" && cargo build --quiet --bin wsgate --example echo) || { echo "sidecar.sh: cargo build failed" >&2; exit 2; }
fi
HELM="${HELM:-$("${ROOT}/hack/k8s/helm.sh" | tail -n1)}" || { echo "sidecar.sh: no helm" >&2; exit 2; }

render_routes() { # OUT_FILE helm-args...
  local out="$1"; shift
  "${HELM}" template chat "${CHART}" --set mode=sidecar "$@" >"${WORK}/rendered.yaml" &&
    python3 "${CC}" routes "${WORK}/rendered.yaml" -routes >"${out}"
}

wsgate_check() { # NAME FILE
  local out
  if out="$("${WSGATE}" check --config "$2" 2>&1)"; then
    pass "wsgate check: $1 ($(tail -n1 <<<"${out}"))"
  else
    flunk "wsgate check: $1"; echo "${out}" | sed 's/^/    /'
  fi
}

echo "== wsgate check on rendered and example routes"
mkdir -p "${WORK}/defaults" "${WORK}/values" "${WORK}/bad" "${WORK}/example"
render_routes "${WORK}/defaults/routes.yaml" && wsgate_check "chart defaults (mode=sidecar)" "${WORK}/defaults/routes.yaml" ||
  flunk "render sidecar defaults"
render_routes "${WORK}/values/routes.yaml" -f "${HERE}/values/sidecar.yaml" &&
  wsgate_check "tests/chart/values/sidecar.yaml" "${WORK}/values/routes.yaml" || flunk "render values/sidecar.yaml"
sed 's/^/    | /' "${WORK}/values/routes.yaml"
# The check must be able to fail: a route wsgate refuses.
if render_routes "${WORK}/bad/routes.yaml" --set sidecar.route.keepalive.interval=5s --set sidecar.route.keepalive.timeout=0s; then
  if out="$("${WSGATE}" check --config "${WORK}/bad/routes.yaml" 2>&1)"; then
    flunk "wsgate check accepted keepalive timeout 0s with interval 5s"
  elif grep -Eq 'routes.yaml:[0-9]+: spec.keepalive.timeout' <<<"${out}"; then
    pass "a refused sidecar route fails wsgate check: $(head -n1 <<<"${out}" | sed "s|${WORK}/||")"
  else
    flunk "wsgate check failed without a file:line: field message:"; echo "${out}" | sed 's/^/    /'
  fi
else
  flunk "render the bad sidecar route"
fi
EXAMPLE="${ROOT}/examples/sidecar/sidecar.yaml"
if python3 "${CC}" routes "${EXAMPLE}" chat-wsgate >"${WORK}/example/routes.yaml"; then
  wsgate_check "examples/sidecar/sidecar.yaml ConfigMap chat-wsgate" "${WORK}/example/routes.yaml"
else
  flunk "no routes.yaml in examples/sidecar/sidecar.yaml"
fi

# ---- serving, inside this network namespace ---------------------------------
wait_http() { # URL [SECONDS]
  local i
  for ((i = 0; i < ${2:-10} * 10; i++)); do
    curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
metric() { # ADMIN NAME_AND_LABELS
  curl -fsS --max-time 2 "http://$1/metrics" 2>/dev/null | awk -v m="$2" '$1 == m { print $2 }'
}

# A ConfigMap volume as the kubelet writes it: files under a timestamped dir,
# `..data` pointing at it, and each key a symlink through `..data`.
cm_write() { # DIR ROUTES_FILE
  local dir="$1" ts
  ts="..$(date +%Y_%m_%d_%H_%M_%S).$RANDOM"
  mkdir -p "${dir}/${ts}"
  cp "$2" "${dir}/${ts}/routes.yaml"
  ln -sfn "${ts}" "${dir}/..data_tmp"
  mv -T "${dir}/..data_tmp" "${dir}/..data"
  [[ -L "${dir}/routes.yaml" ]] || ln -s ..data/routes.yaml "${dir}/routes.yaml"
}

echo "== the rendered sidecar ConfigMap served by wsgate serve"
read -r APP LISTEN ADMIN < <(python3 "${CC}" free-ports 3)
render_routes "${WORK}/serve.yaml" --set sidecar.appPort="${APP}" -f "${HERE}/values/sidecar.yaml"
CM="${WORK}/etc-wsgate"
cm_write "${CM}" "${WORK}/serve.yaml"
"${ECHO}" "127.0.0.1:${APP}" 2>"${WORK}/echo.log" & pids+=($!)
RUST_LOG=info "${WSGATE}" serve --config "${CM}/routes.yaml" --listen "127.0.0.1:${LISTEN}" \
  --admin-listen "127.0.0.1:${ADMIN}" --drain-timeout 1s 2>"${WORK}/serve.log" & pids+=($!)
if wait_http "http://127.0.0.1:${ADMIN}/readyz"; then
  pass "/readyz 200 with the rendered routes.yaml"
else
  flunk "/readyz never 200"; tail -n 20 "${WORK}/serve.log" | sed 's/^/    /'
fi
ORIGIN="Origin: https://chat.example.com"   # the allowedOrigins of values/sidecar.yaml
if out="$(python3 "${CC}" ws "ws://127.0.0.1:${LISTEN}/socket.io/?EIO=4&transport=websocket" --header "${ORIGIN}" --message "hello sidecar" 2>&1)"; then
  pass "tunnel through the sidecar to 127.0.0.1:${APP}: $(tr '\n' ' ' <<<"${out}")"
else
  flunk "tunnel through the sidecar"; echo "${out}" | sed 's/^/    /'
fi
if out="$(python3 "${CC}" ws "ws://127.0.0.1:${LISTEN}/socket.io/" --header "Origin: https://evil.example" --expect-status 403 2>&1)"; then
  pass "the route's allowedOrigins from values applies: other Origin gets 403"
else
  flunk "foreign Origin not refused"; echo "${out}" | sed 's/^/    /'
fi
before="$(metric "127.0.0.1:${ADMIN}" 'wsgate_config_reloads_total{result="success"}')"
sed 's|value: /socket.io/|value: /v2/|' "${WORK}/serve.yaml" >"${WORK}/serve-v2.yaml"
cm_write "${CM}" "${WORK}/serve-v2.yaml"
for ((i = 0; i < 50; i++)); do
  after="$(metric "127.0.0.1:${ADMIN}" 'wsgate_config_reloads_total{result="success"}')"
  [[ -n "${after}" && "${after}" != "${before}" ]] && break
  sleep 0.1
done
if [[ -n "${after}" && "${after}" != "${before}" ]] &&
  python3 "${CC}" ws "ws://127.0.0.1:${LISTEN}/v2/x" --header "${ORIGIN}" --message v2 >/dev/null 2>&1 &&
  python3 "${CC}" ws "ws://127.0.0.1:${LISTEN}/socket.io/" --header "${ORIGIN}" --expect-status 404 >/dev/null 2>&1; then
  pass "ConfigMap update (..data swap) applied: reloads ${before} -> ${after}, /v2/ served, /socket.io/ now 404"
else
  flunk "ConfigMap update not applied (reloads ${before} -> ${after:-?})"; tail -n 5 "${WORK}/serve.log" | sed 's/^/    /'
fi

echo "== examples/sidecar/sidecar.yaml: the wsgate container's args, verbatim"
mapfile -t ex_args < <(python3 - "${EXAMPLE}" <<'EOF'
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "Deployment":
        for c in d["spec"]["template"]["spec"]["containers"]:
            if c["name"] == "wsgate":
                print("\n".join(c["args"]))
EOF
)
app_port="$(sed -n 's/.*address: "127.0.0.1:\([0-9]*\)".*/\1/p' "${WORK}/example/routes.yaml")"
ex_listen="$(printf '%s\n' "${ex_args[@]}" | sed -n 's/^--listen=0.0.0.0:\([0-9]*\)$/\1/p')"
ex_admin="$(printf '%s\n' "${ex_args[@]}" | sed -n 's/^--metrics-listen=0.0.0.0:\([0-9]*\)$/\1/p')"
if [[ ${#ex_args[@]} -gt 0 && -n "${app_port}" && -n "${ex_listen}" && -n "${ex_admin}" ]]; then
  EXCM="${WORK}/example-etc"
  cm_write "${EXCM}" "${WORK}/example/routes.yaml"
  "${ECHO}" "127.0.0.1:${app_port}" 2>"${WORK}/echo-example.log" & pids+=($!)
  "${WSGATE}" "${ex_args[@]/\/etc\/wsgate/${EXCM}}" 2>"${WORK}/example.log" & pids+=($!)
  echo "    wsgate ${ex_args[*]/\/etc\/wsgate/${EXCM}}"
  if wait_http "http://127.0.0.1:${ex_admin}/readyz" &&
    out="$(python3 "${CC}" ws "ws://127.0.0.1:${ex_listen}/chat" --message "hello example" 2>&1)"; then
    pass "example sidecar: /readyz 200 on :${ex_admin}, tunnel :${ex_listen} -> app :${app_port} echoes"
  else
    flunk "example sidecar does not serve"; echo "${out:-}" | sed 's/^/    /'; tail -n 10 "${WORK}/example.log" | sed 's/^/    /'
  fi
else
  flunk "cannot read the example's wsgate args/ports (${ex_args[*]:-none})"
fi

echo
for f in "${failures[@]}"; do echo "  failed: ${f}"; done
echo "time: $((SECONDS - T0))s"
echo "sidecar.sh: ${passed} passed, ${failed} failed"
[[ ${failed} == 0 ]]
