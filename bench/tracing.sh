#!/usr/bin/env bash
# What traces cost (issue 20): CPU per upgrade handshake and per relayed message of
# wsgate with tracing off, at --otel-sampling-ratio 0.01 and at 1.0, exporting over
# OTLP/HTTP to a real Jaeger v2 on loopback (hack/jaeger.sh), in one run. Each
# variant runs in the given order and then reversed; the medians are reported with
# the ratio to `off`. A figure, not a test. bench/run.sh runs it as its last step.
#
#   bench/tracing.sh [--variants off,0.01,1] [--hs-duration 10s] [--messages 300000]
#
# Targets (issue 20): ratio 0.01 within 3 % of off, ratio 1.0 within 15 % on
# handshakes and unchanged per message.
#
# Env: WSGATE_BIN (default: the release build under CARGO_TARGET_DIR), WSGATE_CACHE.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
VARIANTS=off,0.01,1 HS_DURATION=10s MESSAGES=300000
while [ $# -gt 0 ]; do
  case "$1" in
    --variants) VARIANTS=$2; shift ;;
    --hs-duration) HS_DURATION=$2; shift ;;
    --messages) MESSAGES=$2; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
# shellcheck source=bench/common.sh
. "$HERE/common.sh"

JAEGER=$("$REPO/hack/jaeger.sh" | tail -n 1)/jaeger
OTLP=127.0.0.1:$(port) QUERY=127.0.0.1:$(port) QGRPC=127.0.0.1:$(port) OGRPC=127.0.0.1:$(port)
cat >"$WORK/jaeger.yaml" <<EOF
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces: {receivers: [otlp], processors: [batch], exporters: [jaeger_storage_exporter]}
  telemetry: {metrics: {level: none}}
extensions:
  jaeger_storage: {backends: {mem: {memory: {max_traces: 200000}}}}
  jaeger_query: {storage: {traces: mem}, http: {endpoint: "$QUERY"}, grpc: {endpoint: "$QGRPC"}}
receivers:
  otlp: {protocols: {grpc: {endpoint: "$OGRPC"}, http: {endpoint: "$OTLP"}}}
processors: {batch: {}}
exporters: {jaeger_storage_exporter: {trace_storage: mem}}
EOF
setsid "$JAEGER" --config "file:$WORK/jaeger.yaml" >"$WORK/jaeger.log" 2>&1 </dev/null &
PIDS+=("$!")
for _ in $(seq 1 100); do curl -fs "http://$QUERY/api/services" >/dev/null && break; sleep 0.2; done
curl -fs "http://$QUERY/api/services" >/dev/null || { say "jaeger did not start"; cat "$WORK/jaeger.log" >&2; exit 1; }
sed "s#@BACKEND@#$BACKEND#" "$HERE/configs/wsgate.yaml" >"$WORK/route.yaml"

summ() {
  python3 - "$1" "$2" <<'PY'
import json, sys
h, t = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
print(f"{h['per_s']:.0f} handshakes/s, {h['proxy_cpu_us_per_handshake']:.1f} CPU-us each; "
      f"{t['cpu_s_per_million_relayed']:.2f} CPU-s per million relayed")
PY
}

IFS=, read -r -a LIST <<<"$VARIANTS"
ORDER=("${LIST[@]}")
for ((i=${#LIST[@]}-1; i>=0; i--)); do ORDER+=("${LIST[$i]}"); done
pass=0
for v in "${ORDER[@]}"; do
  pass=$((pass + 1))
  LISTEN=127.0.0.1:$(port) ADMIN=127.0.0.1:$(port)
  otel=()
  [ "$v" != off ] && otel=(--otel-endpoint "http://$OTLP" --otel-sampling-ratio "$v")
  RUST_LOG=warn setsid "$WSGATE_BIN" serve --config "$WORK/route.yaml" --listen "$LISTEN" \
    --admin-listen "$ADMIN" --access-log off "${otel[@]}" >"$WORK/wsgate-$pass.log" 2>&1 </dev/null &
  pid=$!
  PIDS+=("$pid")
  "$LOADGEN" wait --target "ws://$LISTEN/" --timeout 20s
  "$LOADGEN" handshakes --target "ws://$LISTEN/" --workers 16 --duration "$HS_DURATION" \
    --proxy-pid "$pid" --backend-pid "$BACKEND_PID" >"$WORK/hs-$v-$pass.json" 2>"$WORK/hs-$pass.log"
  "$LOADGEN" throughput --target "ws://$LISTEN/" --conns 100 --window 8 --messages "$MESSAGES" \
    --duration 30s --proxy-pid "$pid" --backend-pid "$BACKEND_PID" >"$WORK/tp-$v-$pass.json" 2>"$WORK/tp-$pass.log"
  dropped=$(curl -fs "http://$ADMIN/metrics" | awk '$1 == "wsgate_trace_spans_dropped_total" {print $2}')
  echo "${dropped:-0}" >"$WORK/dropped-$v-$pass"
  kill -- -"$pid" 2>/dev/null || true
  say "   $v (pass $pass): $(summ "$WORK/hs-$v-$pass.json" "$WORK/tp-$v-$pass.json"); dropped spans ${dropped:-0}"
  sleep 1
done
services=$(curl -fs "http://$QUERY/api/services" || true)

python3 - "$WORK" "$VARIANTS" "$services" <<'PY'
import glob, json, statistics, sys
work, variants, services = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
def med(pattern, key):
    vals = [json.load(open(f))[key] for f in glob.glob(f"{work}/{pattern}")]
    return statistics.median(vals) if vals else float("nan")
rows = {}
for v in variants:
    dropped = sum(int(float(open(f).read() or 0)) for f in glob.glob(f"{work}/dropped-{v}-*"))
    rows[v] = (med(f"hs-{v}-*.json", "proxy_cpu_us_per_handshake"), med(f"hs-{v}-*.json", "per_s"),
               med(f"tp-{v}-*.json", "cpu_s_per_million_relayed"), med(f"tp-{v}-*.json", "foreign_busy_cores"), dropped)
print()
print("tracing cost (medians of 2 passes each; OTLP/HTTP to Jaeger on loopback)")
print(f"{'tracing':<10} {'handshakes/s':>13} {'CPU-us/handshake':>17} {'vs off':>8} {'CPU-s/M relayed':>16} {'vs off':>8} {'dropped':>8}")
base = rows.get("off")
for v, (hs_us, hs_s, tp, foreign, dropped) in rows.items():
    name = "off" if v == "off" else f"ratio {v}"
    rel = lambda x, b: f"{(x / b - 1) * 100:+.1f}%" if base and b else "-"
    print(f"{name:<10} {hs_s:>13.0f} {hs_us:>17.1f} {rel(hs_us, base[0] if base else 0):>8} {tp:>16.2f} "
          f"{rel(tp, base[2] if base else 0):>8} {dropped:>8}")
print(f"  jaeger services: {services.strip()}")
print("  targets: ratio 0.01 within 3% of off; ratio 1.0 within 15% on handshakes, unchanged per message")
PY
