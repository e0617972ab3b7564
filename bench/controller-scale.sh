#!/usr/bin/env bash
# The controller at scale (`make bench-controller`): N WebSocketRoutes, each with a
# headless Service and an EndpointSlice, applied to a real kube-apiserver + etcd
# (hack/k8s), with `wsgate run` (release build) watching them. Prints:
#   - seconds from the last apply until every route is Programmed=True,
#   - wsgate's RSS when converged,
#   - API requests per second while converging and in steady state (the apiserver's
#     own `apiserver_request_total`, minus a baseline measured before wsgate starts),
#   - seconds from one route edit (a new path) until a WebSocket handshake on the
#     new path succeeds through wsgate.
# A benchmark, not a test: it prints figures and never fails on a missed target.
#
#   bench/controller-scale.sh [--routes N]      (default 2000)
#
# Env: CARGO_TARGET_DIR (default /var/cache/wsgate/target), WSGATE_BIN (use this
# binary), WSGATE_CACHE. Runs inside its own network namespace (hack/k8s/in-netns.sh):
# the fake pod is 192.0.2.20, traffic stays there.
set -euo pipefail
cd "$(dirname "$0")/.."
N=2000
while [ $# -gt 0 ]; do
  case $1 in
    --routes) N=$2; shift ;;
    --routes=*) N=${1#--routes=} ;;
    *) echo "usage: $0 [--routes N]" >&2; exit 2 ;;
  esac
  shift
done

if [ -z "${CONTROLLER_SCALE_INSIDE:-}" ]; then
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/wsgate/target}
  if [ -z "${WSGATE_BIN:-}" ]; then
    cargo build --release --locked --quiet
    export WSGATE_BIN=$CARGO_TARGET_DIR/release/wsgate
  fi
  hack/k8s/assets.sh >/dev/null
  # (Not WSGATE_IN_NETNS: in-netns.sh uses that name for its own re-entry marker.)
  exec env CONTROLLER_SCALE_INSIDE=1 hack/k8s/in-netns.sh "$0" --routes "$N"
fi

say() { printf 'controller-scale: %s\n' "$*" >&2; }
S=$(mktemp -d /tmp/wsgate-ctlscale.XXXXXX)
WSGATE_PID=
BACKEND_PID=
cleanup() {
  [ -n "$WSGATE_PID" ] && kill "$WSGATE_PID" 2>/dev/null
  [ -n "$BACKEND_PID" ] && kill "$BACKEND_PID" 2>/dev/null
  hack/k8s/control-plane.sh stop "$S" >/dev/null 2>&1 || true
  rm -rf "$S"
}
trap cleanup EXIT

hack/k8s/control-plane.sh start "$S" >/dev/null 2>&1
# shellcheck disable=SC1091
. "$S/env"
K() { "$KUBECTL" --kubeconfig "$S/admin.kubeconfig" "$@"; }
K apply --server-side -f crds/websocketroute.yaml >/dev/null
K wait --for condition=Established crd/websocketroutes.wsgate.io --timeout=60s >/dev/null
K create namespace scale >/dev/null
K create namespace wsgate-system >/dev/null

# The one fake pod every route's EndpointSlice names: an echo server on 192.0.2.20.
PY=${WSGATE_CACHE:-/var/cache/wsgate}/venv/bin/python
"$PY" - <<'EOF' >"$S/backend.log" 2>&1 &
import asyncio, websockets
async def echo(ws):
    async for m in ws:
        await ws.send(m)
async def main():
    async with websockets.serve(echo, "192.0.2.20", 9001):
        await asyncio.Future()
asyncio.run(main())
EOF
BACKEND_PID=$!

# N routes, N headless Services (no ClusterIP needed: wsgate dials endpoints), N
# EndpointSlices, as one stream of documents.
python3 - "$N" >"$S/objects.yaml" <<'EOF'
import sys
n = int(sys.argv[1])
for i in range(n):
    print(f"""---
apiVersion: v1
kind: Service
metadata: {{name: svc-{i}, namespace: scale}}
spec:
  clusterIP: None
  ports: [{{name: ws, port: 80, targetPort: 9001, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc-{i}-a
  namespace: scale
  labels: {{kubernetes.io/service-name: svc-{i}}}
addressType: IPv4
ports: [{{name: ws, port: 9001, protocol: TCP}}]
endpoints: [{{addresses: [192.0.2.20], conditions: {{ready: true}}}}]
---
apiVersion: wsgate.io/v1alpha1
kind: WebSocketRoute
metadata: {{name: r-{i}, namespace: scale}}
spec:
  hostnames: [r{i}.scale.test]
  path: {{type: PathPrefix, value: /r{i}}}
  backends: [{{service: {{name: svc-{i}, port: 80}}}}]""")
EOF

# Requests the apiserver served, except kubectl's own server-side applies of the
# objects (verb APPLY on a main resource): what wsgate and the polling below cost.
requests_total() {
  K get --raw /metrics |
    awk '/^apiserver_request_total\{/ && !/subresource="",verb="APPLY"/ {s += $NF} END {printf "%d\n", s}'
}
# Status writes (server-side applies on websocketroutes/status).
status_writes() {
  K get --raw /metrics |
    awk '/^apiserver_request_total\{/ && /resource="websocketroutes"/ && /subresource="status"/ {s += $NF} END {printf "%d\n", s + 0}'
}
programmed() {
  K get wsr -n scale -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Programmed")].status}{"\n"}{end}' |
    grep -c '^True$' || true
}

# wsgate first, so it converges while the objects arrive (as after a fresh install
# into a busy cluster); the baseline is the apiserver's own traffic plus this
# script's polling, measured with nothing else running.
b0=$(requests_total); tb0=$(date +%s.%N)
for _ in $(seq 20); do programmed >/dev/null; sleep 0.5; done
b1=$(requests_total); tb1=$(date +%s.%N)
base_rate=$(python3 -c "print(($b1 - $b0) / ($tb1 - $tb0))")

"$WSGATE_BIN" run --kubeconfig "$S/admin.kubeconfig" --listen 127.0.0.1:18080 \
  --admin-listen 127.0.0.1:19090 --lease-namespace wsgate-system --access-log off \
  >"$S/wsgate.log" 2>&1 &
WSGATE_PID=$!
for _ in $(seq 100); do curl -fs 127.0.0.1:19090/healthz >/dev/null 2>&1 && break; sleep 0.1; done

say "applying $N routes, $N Services and $N EndpointSlices"
r0=$(requests_total); w0=$(status_writes); t0=$(date +%s.%N)
K apply --server-side -f "$S/objects.yaml" >/dev/null
t_applied=$(date +%s.%N)
deadline=$((SECONDS + 300))
while [ "$(programmed)" -lt "$N" ] && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
t_done=$(date +%s.%N); r1=$(requests_total); w1=$(status_writes)
n_prog=$(programmed)
rss_kib=$(awk '/^VmRSS/ {print $2}' /proc/$WSGATE_PID/status)

# Steady state: 30 s with nothing changing.
sleep 5
s0=$(requests_total); sw0=$(status_writes); ts0=$(date +%s.%N)
for _ in $(seq 60); do programmed >/dev/null; sleep 0.5; done
s1=$(requests_total); sw1=$(status_writes); ts1=$(date +%s.%N)

# One edit reaching traffic: r-0 gets a new path; time until a handshake on it works.
K patch wsr r-0 -n scale --type merge -p '{"spec":{"path":{"type":"PathPrefix","value":"/moved"}}}' >/dev/null
te0=$(date +%s.%N)
edit_s=none
for _ in $(seq 2000); do
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 -H 'Host: r0.scale.test' \
    -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' \
    -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' http://127.0.0.1:18080/moved || true)
  if [ "$code" = 101 ]; then
    edit_s=$(python3 -c "import time; print(f'{time.time() - $te0:.3f}')")
    break
  fi
  sleep 0.01
done

python3 - <<EOF
n, prog = $N, $n_prog
apply_s = $t_applied - $t0
conv_s = $t_done - $t_applied
base = $base_rate
conv_rate = ($r1 - $r0) / ($t_done - $t0) - base
steady_rate = ($s1 - $s0) / ($ts1 - $ts0) - base
writes_conv, writes_steady = $w1 - $w0, $sw1 - $sw0
print(f"controller-scale: {n} routes (+{n} Services, +{n} EndpointSlices), kube-apiserver v1.35.8, wsgate release build")
print(f"  kubectl apply of {3*n} objects took      {apply_s:8.1f} s")
print(f"  Programmed=True after the last apply    {conv_s:8.1f} s   ({prog}/{n} routes; target <= 20 s)")
print(f"  wsgate RSS when converged               {$rss_kib/1024:8.1f} MiB")
print(f"  API requests/s by wsgate, converging    {conv_rate:8.1f}   (apiserver_request_total minus a {base:.1f}/s baseline)")
print(f"  API requests/s by wsgate, steady (30 s) {steady_rate:8.1f}")
print(f"  status writes while converging          {writes_conv:8d}   (one per route is the floor)")
print(f"  status writes in steady state (30 s)    {writes_steady:8d}")
print(f"  one edit (new path) to traffic          {'$edit_s':>8} s")
EOF
