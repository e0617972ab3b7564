#!/usr/bin/env bash
# TLS handshakes: wss:// upgrade handshakes per second and the proxy's CPU per
# handshake, TLS 1.3 with one ECDSA P-256 certificate for every proxy (wsgate on
# rustls, NGINX and HAProxy on Debian's OpenSSL 3.0), the client offering X25519
# first. Each proxy twice: every handshake a full one (no session cache in the
# client), then with session resumption (each client loop keeps its tickets).
# Each handshake: TCP connect, TLS, upgrade (101 and Sec-WebSocket-Accept
# checked), Close 1000 both ways, TCP close (loadgen handshakes). A figure, not a
# test.
#
#   bench/tls.sh [--proxies wsgate,nginx,haproxy-http,haproxy-tcp] [--seconds S] [--workers W]
#                [--groups x25519,p256] [--quick]
#
# --quick: 3 s per load instead of 10. --groups: what the client offers, in order.
# Env: WSGATE_BIN (default: the release build under CARGO_TARGET_DIR), WSGATE_CACHE
# (loadgen in $WSGATE_CACHE/bench/bin), BENCH_SOURCES. Loopback only.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
PROXIES=wsgate,nginx,haproxy-http,haproxy-tcp SECONDS_=10 WORKERS=16 GROUPS_=x25519,p256
while [ $# -gt 0 ]; do
  case "$1" in
    --proxies) PROXIES=$2; shift ;;
    --seconds) SECONDS_=$2; shift ;;
    --workers) WORKERS=$2; shift ;;
    --groups) GROUPS_=$2; shift ;;
    --quick) SECONDS_=3 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
SOURCES=${BENCH_SOURCES:-127.0.0.2-9}
# shellcheck source=bench/common.sh
. "$HERE/common.sh"
tls_cert

for name in ${PROXIES//,/ }; do
  dir=$WORK/$name LISTEN=127.0.0.1:$(port) TLS=127.0.0.1:$(port)
  start_tls_proxy "$name" "$dir" "$LISTEN" "$TLS"
  # Warm-up: a second of handshakes, not counted.
  "$LOADGEN" handshakes --target "wss://$TLS/" --ca "$WORK/cert.pem" --workers "$WORKERS" \
    --duration 1s --sources "$SOURCES" --groups "$GROUPS_" >/dev/null 2>&1 || true
  for mode in full resumed; do
    resume=false
    [ "$mode" = resumed ] && resume=true
    "$LOADGEN" handshakes --target "wss://$TLS/" --ca "$WORK/cert.pem" --workers "$WORKERS" \
      --duration "${SECONDS_}s" --sources "$SOURCES" --groups "$GROUPS_" --resume="$resume" \
      --proxy-pid "$pid" --backend-pid "$BACKEND_PID" >"$dir/$mode.json" 2>"$dir/$mode.log" \
      || say "$name: loadgen handshakes failed: $(tail -1 "$dir/$mode.log")"
    sleep 1
  done
  kill -- -"$pid" 2>/dev/null || true
  sleep 2
done

echo
proxy_versions
echo "wss:// handshakes, TLS 1.3, ECDSA P-256 certificate, client offers $GROUPS_ (a key share for the first);"
echo "$WORKERS loops x ${SECONDS_} s each: connect, TLS, upgrade, Close 1000 both ways, close; one worker / thread per NGINX and HAProxy"
python3 - "$WORK" "$PROXIES" <<'PY'
import json, os, sys
work, proxies = sys.argv[1], sys.argv[2].split(",")
rows = {}
for p in proxies:
    r = {}
    for mode in ("full", "resumed"):
        try:
            r[mode] = json.load(open(os.path.join(work, p, mode + ".json")))
        except (OSError, ValueError):
            pass
    rows[p] = r
print(f"{'proxy':<14} {'full: hs/s':>11} {'CPU µs':>8} {'resumed: hs/s':>14} {'CPU µs':>8} {'resumed':>8} {'foreign cores':>14}  errors")
for p, r in rows.items():
    if len(r) < 2:
        print(f"{p:<14} no result"); continue
    f, s = r["full"], r["resumed"]
    share = s["resumed"] / s["handshakes"] if s["handshakes"] else 0
    print(f"{p:<14} {f['per_s']:>11.0f} {f['proxy_cpu_us_per_handshake']:>8.0f} {s['per_s']:>14.0f} "
          f"{s['proxy_cpu_us_per_handshake']:>8.0f} {share:>8.0%} {max(f['foreign_busy_cores'], s['foreign_busy_cores']):>14.2f}  "
          f"{f['error_count'] + s['error_count']}" + (f"  e.g. {(f.get('errors') or s.get('errors'))[0]}" if f['error_count'] + s['error_count'] else ""))
w = rows.get("wsgate")
if w and len(w) == 2:
    mark = lambda b: "met" if b else "MISSED"
    for mode in ("full", "resumed"):
        wm = w[mode]
        n = rows.get("nginx", {}).get(mode)
        if n:
            ratio = wm["per_s"] / n["per_s"]
            print(f"  {mode}: wsgate handshakes/s {ratio:.2f}x NGINX's (target >= 1.2x) -> {mark(ratio >= 1.2)}")
        best = [rows[p][mode]["proxy_cpu_us_per_handshake"] for p in ("nginx", "haproxy-http") if rows.get(p, {}).get(mode)]
        if best:
            ratio = wm["proxy_cpu_us_per_handshake"] / min(best)
            print(f"  {mode}: wsgate CPU per handshake {ratio:.2f}x the better of NGINX's and HAProxy http's (target <= 1x) -> {mark(ratio <= 1)}")
PY
