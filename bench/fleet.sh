#!/usr/bin/env bash
# Fleet-wide limits (issue 21), measured against a redis-server on loopback:
#   1. upgrade handshakes/s and CPU µs per handshake of wsgate without a fleet cap
#      and with one (route fleetLimits {maxConnections, maxConnectionsPerClientIP},
#      --limits-store), in the order off, on, on, off (drift on a shared machine
#      cancels), medians reported; target: within 10% on handshakes;
#   2. Redis operations per second per 1,000 open tunnels at steady state: N idle
#      tunnels held through wsgate with the fleet cap, then the store's
#      total_commands_processed (every command, including those a script runs)
#      and EVALSHA calls counted over a window of whole heartbeats (5s).
#
#   bench/fleet.sh [--seconds S] [--tunnels N] [--window S] [--json FILE]
#
# bench/run.sh runs it (unless --fleet none) and puts its rows in the report.
# Env: WSGATE_BIN (default: the release build under CARGO_TARGET_DIR),
# WSGATE_CACHE, BENCH_SOURCES (default 127.0.0.2-9). Needs redis-server and
# redis-cli (tests/setup.sh installs them). Loopback only; a figure, not a test.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
SECONDS_=10 TUNNELS=1000 WINDOW=20 JSON=""
SOURCES=${BENCH_SOURCES:-127.0.0.2-9}
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_=$2; shift ;;
    --tunnels) TUNNELS=$2; shift ;;
    --window) WINDOW=$2; shift ;;
    --json) JSON=$2; shift ;;
    *) echo "fleet.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
  { echo "fleet.sh: redis-server and redis-cli are needed (tests/setup.sh installs them)" >&2; exit 2; }
# shellcheck source=bench/common.sh
. "$HERE/common.sh"

REDIS_PORT=$(port)
setsid redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$WORK" >"$WORK/redis.log" 2>&1 </dev/null &
PIDS+=("$!")
for _ in $(seq 1 100); do
  [ "$(redis-cli -p "$REDIS_PORT" PING 2>/dev/null)" = PONG ] && break
  sleep 0.1
done
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }

sed -e "s#@BACKEND@#$BACKEND#g" "$HERE/configs/wsgate.yaml" >"$WORK/off.yaml"
cp "$WORK/off.yaml" "$WORK/on.yaml"
# Caps far above the load: every handshake pays the store's check and release,
# none is refused.
echo "  fleetLimits: {maxConnections: 1000000, maxConnectionsPerClientIP: 1000000}" >>"$WORK/on.yaml"

# start_wsgate off|on: sets GATE_PID and LISTEN
start_wsgate() {
  LISTEN=127.0.0.1:$(port)
  local store=()
  [ "$1" = on ] && store=(--limits-store "redis://127.0.0.1:$REDIS_PORT")
  RUST_LOG=warn setsid "$WSGATE_BIN" serve --config "$WORK/$1.yaml" --listen "$LISTEN" \
    --admin-listen "127.0.0.1:$(port)" --access-log off "${store[@]}" >"$WORK/wsgate-$1.log" 2>&1 </dev/null &
  GATE_PID=$!
  PIDS+=("$GATE_PID")
  "$LOADGEN" wait --target "ws://$LISTEN/" --timeout 20s
}

say "== fleet-wide limits: handshakes without and with a fleet cap (Redis on loopback, ${SECONDS_}s each)"
pass=0
for mode in off on on off; do
  pass=$((pass + 1))
  start_wsgate "$mode"
  "$LOADGEN" handshakes --target "ws://$LISTEN/" --workers 16 --duration "${SECONDS_}s" --sources "$SOURCES" \
    --proxy-pid "$GATE_PID" --backend-pid "$BACKEND_PID" >"$WORK/hs-$mode-$pass.json" 2>"$WORK/hs-$mode-$pass.log" ||
    { say "   $mode: handshakes failed"; tail -3 "$WORK/hs-$mode-$pass.log" >&2; }
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("   %-4s %.0f/s, %.0f µs CPU each, %d errors" % (sys.argv[2], d["per_s"], d["proxy_cpu_us_per_handshake"], d["error_count"]))' \
    "$WORK/hs-$mode-$pass.json" "$mode" >&2 || true
  kill -- -"$GATE_PID" 2>/dev/null || true
  sleep 1
done
# What the runs left in the store (the releases): nothing may stay counted.
sleep 1
left=$(rcli HGETALL 'wsg:{route:default/bench}:conns' | paste -sd' ' -)

counted() { rcli HGETALL 'wsg:{route:default/bench}:conns' | awk 'NR%2==1{f=$0} NR%2==0 && f ~ /^c:/ {s+=$0} END{print s+0}'; }
stat() { rcli INFO "$1" | tr -d '\r' | sed -n "s/^$2:\(.*\)$/\1/p"; }
evalsha() { rcli INFO commandstats | tr -d '\r' | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),.*/\1/p'; }
# steady LABEL SOURCES: hold $TUNNELS tunnels from SOURCES, count the store's
# commands over $WINDOW s; writes $WORK/steady-LABEL.env
steady() {
  say "== Redis operations at steady state: $TUNNELS tunnels from $1, through wsgate with the fleet cap"
  rcli FLUSHALL >/dev/null
  start_wsgate on
  setsid "$LOADGEN" idle --target "ws://$LISTEN/" --n "$TUNNELS" --sources "$2" --settle 1s \
    --hold "$((WINDOW + 90))s" >"$WORK/idle-$1.json" 2>"$WORK/idle-$1.log" </dev/null &
  local idle=$!
  PIDS+=("$idle")
  for _ in $(seq 1 600); do
    [ "$(counted)" -ge "$TUNNELS" ] && break
    sleep 0.2
  done
  sleep 6   # past the opening burst's releases and one heartbeat
  local c0 e0 t0 c1 e1 t1
  c0=$(stat stats total_commands_processed) e0=$(evalsha) t0=$(date +%s.%N)
  sleep "$WINDOW"
  c1=$(stat stats total_commands_processed) e1=$(evalsha) t1=$(date +%s.%N)
  printf 'open=%s keys=%s c0=%s c1=%s e0=%s e1=%s t0=%s t1=%s\n' "$(counted)" "$(rcli DBSIZE)" \
    "$c0" "$c1" "${e0:-0}" "${e1:-0}" "$t0" "$t1" >"$WORK/steady-$1.env"
  kill -- -"$idle" 2>/dev/null || true
  kill -- -"$GATE_PID" 2>/dev/null || true
  sleep 2
}
# The route's cap counts one key; the per-address cap one per address with open
# tunnels: 8 client addresses (the benchmark's usual sources), then one address
# per tunnel (127.0.1.1-250 and on: the worst case of a per-address cap).
steady few "$SOURCES"
many=""
for third in $(seq 1 $(((TUNNELS + 249) / 250))); do many="$many,127.0.$third.1-250"; done
steady many "${many#,}"

python3 - "$WORK" "$left" "${JSON:-}" <<'PY'
import json, os, statistics, sys
work, left, out = sys.argv[1:]
def runs(mode):
    rs = []
    for f in sorted(os.listdir(work)):
        if f.startswith(f"hs-{mode}-") and f.endswith(".json"):
            try:
                rs.append(json.load(open(os.path.join(work, f))))
            except (OSError, ValueError):
                pass
    return rs
res = {}
for mode in ("off", "on"):
    rs = runs(mode)
    if rs:
        res[mode] = {"passes": len(rs),
                     "per_s": round(statistics.median(r["per_s"] for r in rs)),
                     "proxy_cpu_us_per_handshake": round(statistics.median(r["proxy_cpu_us_per_handshake"] for r in rs), 1),
                     "errors": sum(r["error_count"] for r in rs)}
def steady(label):
    try:
        env = dict(kv.split("=", 1) for kv in open(os.path.join(work, f"steady-{label}.env")).read().split())
    except OSError:
        return None
    secs = float(env["t1"]) - float(env["t0"])
    ops = (int(env["c1"]) - int(env["c0"])) / secs
    calls = (int(env["e1"]) - int(env["e0"])) / secs
    open_ = int(env["open"])
    per_k = 1000 / max(open_, 1)
    return {"tunnels": open_, "keys": int(env["keys"]), "window_s": round(secs, 1),
            "redis_ops_per_s": round(ops, 2), "redis_ops_per_s_per_1000_tunnels": round(ops * per_k, 2),
            "evalsha_per_s": round(calls, 2), "evalsha_per_s_per_1000_tunnels": round(calls * per_k, 2)}
res["steady_state"] = steady("few")
res["steady_state_one_address_per_tunnel"] = steady("many")
res["left_counted_after_handshake_runs"] = left
if "off" in res and "on" in res:
    res["handshakes_on_vs_off"] = round(res["on"]["per_s"] / res["off"]["per_s"] - 1, 4)
    res["cpu_per_handshake_on_vs_off"] = round(res["on"]["proxy_cpu_us_per_handshake"] / res["off"]["proxy_cpu_us_per_handshake"] - 1, 4)
print("Fleet-wide limits (issue 21): handshakes/s and CPU µs per handshake, median of the passes; Redis on loopback")
for mode, what in (("off", "no fleet cap"), ("on", "fleet cap (route + client address), one EVALSHA per upgrade, one write per close")):
    r = res.get(mode)
    if r:
        print(f"  {mode:<4} {r['per_s']:>6}/s  {r['proxy_cpu_us_per_handshake']:>6.1f} µs  {what}" + (f", {r['errors']} errors" if r["errors"] else ""))
if "handshakes_on_vs_off" in res:
    ok = res["handshakes_on_vs_off"] >= -0.10
    print(f"  with the cap: {res['handshakes_on_vs_off']:+.1%} handshakes/s, {res['cpu_per_handshake_on_vs_off']:+.1%} CPU per handshake"
          f" (target: handshakes within 10% -> {'met' if ok else 'MISSED'})")
for key, what in (("steady_state", "8 client addresses"), ("steady_state_one_address_per_tunnel", "one client address per tunnel")):
    st = res.get(key)
    if st:
        print(f"  steady state, {what}: {st['tunnels']} tunnels open, {st['keys']} keys; over {st['window_s']}s: "
              f"{st['redis_ops_per_s']} Redis commands/s ({st['evalsha_per_s']} EVALSHA/s) = "
              f"{st['redis_ops_per_s_per_1000_tunnels']} commands/s per 1,000 tunnels")
print(f"  counted in the store after the handshake runs closed every tunnel: {left or 'nothing'}")
if out:
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
PY
