#!/usr/bin/env bash
# Throughput with both cores in use: each proxy as it would run on a 2-core node
# (wsgate's tokio runtime, one worker per core; NGINX with 2 workers; HAProxy with
# 2 threads), 200 tunnels x window 16 of 1 KiB echoes as fast as they go, with the
# benchmark's Go client and echo backend on the same two cores. Prints relayed
# messages/s per proxy and the ratio against HAProxy tcp. A figure, not a test.
#
#   bench/saturated.sh [--proxies wsgate,nginx,haproxy-http,haproxy-tcp] [--seconds S]
#
# Env: WSGATE_BIN (default: the release build under CARGO_TARGET_DIR), WSGATE_CACHE
# (loadgen in $WSGATE_CACHE/bench/bin, built as by bench/run.sh). Loopback only.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
PROXIES=wsgate,nginx,haproxy-http,haproxy-tcp SECONDS_=15
while [ $# -gt 0 ]; do
  case "$1" in
    --proxies) PROXIES=$2; shift ;;
    --seconds) SECONDS_=$2; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
# shellcheck source=bench/common.sh
. "$HERE/common.sh"

# fill TEMPLATE OUT LISTEN PREFIX, with 2 workers / threads
fill() {
  sed -e "s#@LISTEN@#$3#g" -e "s#@BACKEND@#$BACKEND#g" -e "s#@PREFIX@#$4#g" \
    -e 's#^worker_processes 1;#worker_processes 2;#' -e 's#^\( *\)nbthread 1#\1nbthread 2#' "$1" >"$2"
}

printf '%-14s %14s %12s %14s\n' proxy "messages/s" "proxy cores" "machine cores" >"$WORK/table"
for name in ${PROXIES//,/ }; do
  dir=$WORK/$name LISTEN=127.0.0.1:$(port)
  mkdir -p "$dir/tmp"
  case "$name" in
    wsgate)
      fill "$HERE/configs/wsgate.yaml" "$dir/wsgate.yaml" "" "$dir"
      RUST_LOG=warn setsid "$WSGATE_BIN" serve --config "$dir/wsgate.yaml" --listen "$LISTEN" \
        --admin-listen "127.0.0.1:$(port)" >"$dir/out.log" 2>&1 </dev/null & ;;
    nginx)
      fill "$HERE/configs/nginx.conf" "$dir/nginx.conf" "$LISTEN" "$dir"
      setsid nginx -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;' >"$dir/out.log" 2>&1 </dev/null & ;;
    haproxy-http|haproxy-tcp)
      fill "$HERE/configs/$name.cfg" "$dir/haproxy.cfg" "$LISTEN" "$dir"
      setsid haproxy -db -f "$dir/haproxy.cfg" >"$dir/out.log" 2>&1 </dev/null & ;;
    *) echo "unknown proxy $name" >&2; exit 2 ;;
  esac
  pid=$!
  PIDS+=("$pid")
  "$LOADGEN" wait --target "ws://$LISTEN/" --timeout 20s
  "$LOADGEN" throughput --target "ws://$LISTEN/" --conns 200 --window 16 --messages 100000000 \
    --duration "${SECONDS_}s" --proxy-pid "$pid" --backend-pid "$BACKEND_PID" >"$dir/tp.json" 2>"$dir/tp.log"
  kill -- -"$pid" 2>/dev/null || true
  python3 - "$name" "$dir/tp.json" >>"$WORK/table" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
print(f"{sys.argv[1]:<14} {r['relayed_per_s']:>14.0f} {r['proxy_cpu_util']:>12.2f} {r['machine_busy_cores']:>14.2f}"
      + (f"   errors {r['error_count']}" if r['error_count'] else ""))
PY
  sleep 1
done
echo
echo "throughput with both cores in use (2 workers / threads each; 200 tunnels x window 16, 1 KiB, ${SECONDS_} s each)"
cat "$WORK/table"
python3 - "$WORK/table" <<'PY'
import sys
rows = {l.split()[0]: float(l.split()[1]) for l in open(sys.argv[1]).readlines()[1:]}
if "wsgate" in rows and "haproxy-tcp" in rows:
    print(f"  target: wsgate >= haproxy-tcp's throughput with both cores busy: "
          f"{rows['wsgate'] / rows['haproxy-tcp']:.2f} x  -> {'met' if rows['wsgate'] >= rows['haproxy-tcp'] else 'MISSED'}")
PY
