#!/usr/bin/env bash
# System calls per relayed message in wsgate: `strace -c -f` attached to the release
# binary while `loadgen throughput` runs the benchmark's loads (100 tunnels x window 8,
# 1 KiB echoes): unpaced (200,000 messages sent, or 20 s) and paced (30,000 messages/s
# for 5 s). Prints each load and the calls per relayed message (a round trip is 2).
# strace slows wsgate, so its reads gather more messages than without it. A
# measurement, not a test. Env as bench/saturated.sh. Loopback only.
#   bench/strace-relay.sh [--http2]
# --http2: the same loads as 100 streams of one h2c connection (loadgen h2-throughput).
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
. "$HERE/common.sh"
LISTEN=127.0.0.1:$(port)
sed -e "s#@BACKEND@#$BACKEND#g" "$HERE/configs/wsgate.yaml" >"$WORK/wsgate.yaml"
RUST_LOG=warn setsid "$WSGATE_BIN" serve --config "$WORK/wsgate.yaml" --listen "$LISTEN" --admin-listen "127.0.0.1:$(port)" >"$WORK/w.log" 2>&1 </dev/null &
pid=$!; PIDS+=("$pid")
"$LOADGEN" wait --target "ws://$LISTEN/" --timeout 20s
load=(throughput --target "ws://$LISTEN/" --conns 100)
[ "${1:-}" = --http2 ] && load=(h2-throughput --target "$LISTEN" --conns 1 --streams 100)
for mode in unpaced paced; do
  extra="--window 8 --messages 200000 --duration 20s"
  [ $mode = paced ] && extra="--window 8 --rate 30000 --messages 150000 --duration 5s"
  strace -c -f -p $pid -o "$WORK/strace-$mode.txt" & st=$!
  sleep 1
  "$LOADGEN" "${load[@]}" $extra >"$WORK/tp-$mode.json" 2>/dev/null
  kill -INT $st; wait $st 2>/dev/null
  python3 - "$WORK/tp-$mode.json" "$WORK/strace-$mode.txt" "$mode" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
relayed = r.get("relayed") or r.get("relayed_messages") or 0
print(sys.argv[3], {k: r[k] for k in r if k in ("sent", "relayed", "relayed_per_s", "seconds")})
calls = {}
for line in open(sys.argv[2]):
    f = line.split()
    if len(f) >= 5 and f[0][0].isdigit() and f[-1] not in ("total",):
        try:
            calls[f[-1]] = int(f[3])
        except ValueError:
            pass
rel = relayed or 2 * r.get("messages", 0)
print("  relayed", rel, " per relayed message:", {k: round(v / rel, 3) for k, v in sorted(calls.items(), key=lambda kv: -kv[1])[:8]})
PY
done
