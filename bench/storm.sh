#!/usr/bin/env bash
# A reconnect storm: N clients (default 8,000, half of them over TLS 1.3 offering
# X25519 first) connect at once to each proxy, each upgrades, sends one message
# and waits for its echo (loadgen storm). Per proxy: the time until all are
# echoing, the p99 handshake time (first dial to 101, retries included), the
# listen-queue overflows (the kernel's TcpExtListenOverflows, read with nstat
# before and after), peak RSS, and the ratios of wsgate to each other proxy.
# Every proxy serves TLS with the same ECDSA P-256 certificate and a listen
# backlog of 4096 (wsgate's --listen-backlog default, NGINX `backlog=4096`,
# HAProxy `backlog 4096`); the kernel caps each at net.core.somaxconn. A figure,
# not a test.
#
#   bench/storm.sh [--proxies wsgate,nginx,haproxy-http,haproxy-tcp] [--n N] [--tls-n T] [--quick]
#
# --quick: 2,000 clients (1,000 over TLS). Env: WSGATE_BIN (default: the release
# build under CARGO_TARGET_DIR), WSGATE_CACHE (loadgen in $WSGATE_CACHE/bench/bin),
# BENCH_SOURCES (client source addresses, default 127.0.0.2-9). Loopback only.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
PROXIES=wsgate,nginx,haproxy-http,haproxy-tcp N=8000 TLS_N=
while [ $# -gt 0 ]; do
  case "$1" in
    --proxies) PROXIES=$2; shift ;;
    --n) N=$2; shift ;;
    --tls-n) TLS_N=$2; shift ;;
    --quick) N=2000 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
TLS_N=${TLS_N:-$((N / 2))}
SOURCES=${BENCH_SOURCES:-127.0.0.2-9}
# shellcheck source=bench/common.sh
. "$HERE/common.sh"

tls_cert
overflows() { nstat -saz TcpExtListenOverflows | awk '/TcpExtListenOverflows/ {print $2}'; }

for name in ${PROXIES//,/ }; do
  dir=$WORK/$name LISTEN=127.0.0.1:$(port) TLS=127.0.0.1:$(port)
  start_tls_proxy "$name" "$dir" "$LISTEN" "$TLS"
  sleep 1
  before=$(overflows)
  "$LOADGEN" storm --target "ws://$LISTEN/" --tls-target "wss://$TLS/" --ca "$WORK/cert.pem" \
    --n "$N" --tls-n "$TLS_N" --sources "$SOURCES" --timeout 60s --proxy-pid "$pid" \
    >"$dir/storm.json" 2>"$dir/storm.log" || say "$name: loadgen storm failed: $(tail -1 "$dir/storm.log")"
  after=$(overflows)
  kill -- -"$pid" 2>/dev/null || true
  echo "{\"proxy\": \"$name\", \"listen_overflows\": $((after - before))}" >"$dir/overflows.json"
  # Let the closed connections' TIME_WAIT and the proxy's exit settle before the next one.
  sleep 3
done

echo
proxy_versions
echo "reconnect storm: $N clients at once ($TLS_N over TLS 1.3, ECDSA P-256, X25519), one message echoed each;"
echo "listen backlog 4096 for every proxy (net.core.somaxconn = $(cat /proc/sys/net/core/somaxconn) caps it); overflows are machine-wide (the echo backend's listener included)"
python3 - "$WORK" "$PROXIES" <<'PY'
import json, os, sys
work, proxies = sys.argv[1], sys.argv[2].split(",")
rows = {}
for p in proxies:
    try:
        r = json.load(open(os.path.join(work, p, "storm.json")))
    except (OSError, ValueError):
        print(f"{p:<14} no result"); continue
    r["overflows"] = json.load(open(os.path.join(work, p, "overflows.json")))["listen_overflows"]
    rows[p] = r
print(f"{'proxy':<14} {'all echoing s':>13} {'p50 hs ms':>10} {'p99 hs ms':>10} {'p99 ws/wss ms':>15} {'overflows':>10} {'peak RSS MiB':>13} {'CPU s':>6} {'client CPU s':>12}  failed")
for p, r in rows.items():
    allecho = f"{r['all_echoing_s']:.2f}" if r["all_echoing_s"] else "not all"
    print(f"{p:<14} {allecho:>13} {r['handshake_p50_ms']:>10.0f} {r['handshake_p99_ms']:>10.0f} "
          f"{r['plain_handshake_p99_ms']:>7.0f}/{r['tls_handshake_p99_ms']:<7.0f} "
          f"{r['overflows']:>10} {r['proxy_peak_rss_kb'] / 1024:>13.1f} {r['proxy_cpu_s']:>6.2f} {r['client_cpu_s']:>12.2f}  {r['failed']}"
          + (f"  e.g. {r['errors'][0]}" if r.get("errors") else ""))
w = rows.get("wsgate")
if w:
    for p, r in rows.items():
        if p == "wsgate":
            continue
        ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "n/a"
        print(f"  wsgate / {p}: all echoing {ratio(w['all_echoing_s'], r['all_echoing_s'])}, "
              f"p99 handshake {ratio(w['handshake_p99_ms'], r['handshake_p99_ms'])}, "
              f"peak RSS {ratio(w['proxy_peak_rss_kb'], r['proxy_peak_rss_kb'])}")
    others = [r for p, r in rows.items() if p != "wsgate"]
    if others:
        ok_over = w["overflows"] == 0
        sooner = bool(w["all_echoing_s"]) and all(r["all_echoing_s"] == 0 or w["all_echoing_s"] < r["all_echoing_s"] for r in others)
        p99 = all(w["handshake_p99_ms"] <= r["handshake_p99_ms"] for r in others)
        mark = lambda b: "met" if b else "MISSED"
        print(f"  target: no listen overflow ({w['overflows']}) -> {mark(ok_over)}; all echoing sooner than every other -> {mark(sooner)}; "
              f"p99 handshake no worse than theirs -> {mark(p99)}")
PY
