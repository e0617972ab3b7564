#!/usr/bin/env bash
# Where a WebSocket handshake's CPU goes in wsgate: `perf record` of the release
# binary while `loadgen handshakes` (the benchmark's handshake load: 16 loops of
# connect, upgrade, Close 1000, close) runs against it, then the samples grouped
# by what they do and the top functions by their own time. A profile, printed;
# not a test.
#
#   bench/profile-handshakes.sh [--seconds S] [--workers W] [--http2] [--messages [--unpaced]]
#
# --http2 profiles RFC 8441 handshakes on one h2c connection (loadgen h2-handshakes).
# --messages profiles relayed messages instead: the benchmark's paced load (100
# tunnels, window 8, 1 KiB echoes, 30,000 messages/s offered); with --http2, as
# 100 streams of one h2c connection (loadgen h2-throughput). --unpaced: as fast as
# the window lets (the benchmark's unpaced row) instead of 30,000/s.
# Env: KEEP=1 keeps the work directory (perf.data); WSGATE_BIN (default: cargo
# build --release), CARGO_TARGET_DIR,
# WSGATE_CACHE (loadgen is built into $WSGATE_CACHE/bench/bin as by bench/run.sh).
# Needs perf (installed from Debian's linux-perf when missing, as root). Loopback only.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
SECONDS_=10 WORKERS=16 H2=0 MESSAGES=0 RATE=(--rate 30000)
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_=$2; shift ;;
    --workers) WORKERS=$2; shift ;;
    --http2) H2=1 ;;
    --messages) MESSAGES=1 ;;
    --unpaced) RATE=() ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if ! command -v perf >/dev/null; then
  echo "installing perf (linux-perf)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
fi
# shellcheck source=bench/common.sh
. "$HERE/common.sh"
LISTEN=127.0.0.1:$(port)
sed -e "s#@BACKEND@#$BACKEND#g" "$HERE/configs/wsgate.yaml" >"$WORK/wsgate.yaml"
RUST_LOG=warn setsid "$WSGATE_BIN" serve --config "$WORK/wsgate.yaml" --listen "$LISTEN" \
  --admin-listen "127.0.0.1:$(port)" >"$WORK/wsgate.log" 2>&1 </dev/null &
WSGATE_PID=$!
PIDS+=("$WSGATE_PID")
"$LOADGEN" wait --target "ws://$LISTEN/" --timeout 20s

if [ "$MESSAGES" = 1 ] && [ "$H2" = 1 ]; then
  load=(h2-throughput --target "$LISTEN" --conns 1 --streams 100 --window 8 "${RATE[@]}" --messages 100000000)
elif [ "$MESSAGES" = 1 ]; then
  load=(throughput --target "ws://$LISTEN/" --conns 100 --window 8 "${RATE[@]}" --messages 100000000)
elif [ "$H2" = 1 ]; then
  load=(h2-handshakes --target "$LISTEN")
else
  load=(handshakes --target "ws://$LISTEN/")
fi
[ "$MESSAGES" = 1 ] && WORKERS_ARGS=() || WORKERS_ARGS=(--workers "$WORKERS")
# Warm-up, then the measured run under perf. DWARF call graphs: the release
# build keeps line tables (debug = 1) but no frame pointers.
"$LOADGEN" "${load[@]}" "${WORKERS_ARGS[@]}" --duration 2s >/dev/null
perf record -q -F 1999 --call-graph dwarf,16384 -p "$WSGATE_PID" -o "$WORK/perf.data" -- sleep "$SECONDS_" 2>"$WORK/perf.log" &
PERF=$!
sleep 0.5
"$LOADGEN" "${load[@]}" "${WORKERS_ARGS[@]}" --duration "$((SECONDS_ - 1))s" --proxy-pid "$WSGATE_PID" >"$WORK/load.json"
wait "$PERF"
python3 - "$WORK/load.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
if "relayed" in r:
    print(f"messages under perf: {r['relayed']} relayed in {r['seconds']:.1f} s = {r['relayed_per_s']:.0f}/s, "
          f"proxy {r['cpu_s_per_million_relayed']:.2f} CPU-s per million (perf's own sampling included), "
          f"errors {r['error_count']}")
else:
    print(f"handshakes under perf: {r['handshakes']} in {r['seconds']:.1f} s = {r['per_s']:.0f}/s, "
          f"proxy CPU {r['proxy_cpu_us_per_handshake']:.0f} us each (perf's own sampling included), "
          f"errors {r['error_count']}")
PY

# Self time by function, then the same samples put in groups by where the
# function lives (the kernel, the allocator, tokio, hyper, wsgate...).
perf report -i "$WORK/perf.data" --no-children --sort symbol --stdio -q --percent-limit 0.01 \
  -g none 2>/dev/null | sed '/^$/d' >"$WORK/self.txt"
# Inclusive time of the kernel's syscall entry points and of the scheduler: which
# system calls the kernel share is spent in, and how much is switching threads.
perf report -i "$WORK/perf.data" --children --sort symbol --stdio -q --percent-limit 0.3 \
  -g none 2>/dev/null | sed '/^$/d' >"$WORK/children.txt"
python3 - "$WORK/self.txt" "$WORK/children.txt" <<'PY'
import re, sys
groups = [
    ("kernel: TCP, sockets, epoll, syscalls", r"^\[k\]"),
    ("allocator (malloc/free)", r"malloc|free|realloc|calloc|_int_|tcache|arena|memalign|cfree"),
    ("memcpy/memset/memmove", r"mem(cpy|set|move|cmp)|__memc|__mems"),
    ("SHA-1 and base64 (Sec-WebSocket-Accept)", r"sha1|Sha1|base64|block_data_order"),
    ("tracing and logging", r"tracing|log::|fmt::|Formatter|core::fmt"),
    ("prometheus metrics", r"prometheus|metrics"),
    ("HTTP/2 (the h2 crate: frames, HPACK, streams, flow control)", r"\bh2::"),
    ("HTTP parsing and headers (httparse, hyper, http)", r"httparse|hyper|::http::|http::header|HeaderMap"),
    ("tokio runtime, I/O driver, timers", r"tokio|mio::|parking_lot|futures"),
    ("wsgate", r"wsgate"),
]
totals, top, other = {g: 0.0 for g, _ in groups}, [], 0.0
for line in open(sys.argv[1]):
    m = re.match(r"\s*([\d.]+)%\s+(.*)", line)
    if not m:
        continue
    pct, sym = float(m.group(1)), m.group(2).strip()
    top.append((pct, sym))
    for g, pat in groups:
        if re.search(pat, sym):
            totals[g] += pct
            break
    else:
        other += pct
print("\nwhere the proxy's CPU went (share of samples, by the function that was running)")
for g, _ in groups:
    print(f"  {totals[g]:5.1f}%  {g}")
print(f"  {other:5.1f}%  everything else")
print("\ntop 25 functions by self time")
for pct, sym in top[:25]:
    print(f"  {pct:5.2f}%  {sym[:120]}")
print("\nsystem calls and scheduling, inclusive (a call's own work and all it calls; they nest)")
for line in open(sys.argv[2]):
    m = re.match(r"\s*([\d.]+)%\s+[\d.]+%\s+\[k\]\s+(\S+)", line)
    if m and re.fullmatch(r"__x64_sys_\w+|schedule|try_to_wake_up", m.group(2)):
        print(f"  {float(m.group(1)):5.1f}%  {m.group(2)}")
PY
