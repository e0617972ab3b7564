#!/usr/bin/env bash
# wsgate benchmark: wsgate vs NGINX vs HAProxy (http and tcp-splice mode), same
# client and same backend, one run. Prints figures; not a test (never fails on
# a missed target). See bench/README.md.
#
#   bench/run.sh [--quick] [--n N] [--proxies wsgate,nginx,haproxy-http,haproxy-tcp,wsgate-limited,wsgate-nolog]
#                [--no-build] [--keep] [--wait-quiet SECONDS] [--rounds R]
#                [--routes N] [--ramp DURATION] [--h2 wsgate,haproxy-h2|none]
#                [--h2-conns C] [--h2-streams S] [--edge wsgate,wsgate-pp2,wsgate-cidr|none]
#                [--fleet on|none]
#
# --proxies none skips the HTTP/1.1 rows (e.g. with --h2 for the HTTP/2 rows alone).
#
# --h2 LIST: the HTTP/2 rows, after the others (once, not per round): WebSockets as
# RFC 8441 extended CONNECT streams on h2c connections (loadgen h2-*): memory per
# idle tunnel with C connections x S streams (default 40 x 100), handshakes/s on one
# connection, CPU per relayed message with 100 streams on one connection. haproxy-h2
# is HAProxy with `bind ... proto h2`; NGINX has no RFC 8441 and gets "n/a".
#
# --edge LIST: what the client's-address features cost (issue 19), after the HTTP/2
# rows: upgrade handshakes per second and CPU per handshake of wsgate as is,
# wsgate-pp2 (--proxy-protocol v2; loadgen sends a v2 header on every connection)
# and wsgate-cidr (the route has a clientAccess deny list of 1,000 CIDRs that do not
# match the clients), in that order and then reversed, medians reported.
#
# --fleet on (default): what fleet-wide limits cost (issue 21), by bench/fleet.sh
# after the edge rows: handshakes/s and CPU per handshake with a fleet cap (Redis
# on loopback) against none, and Redis operations per 1,000 open tunnels.
#
# --routes N: the routes-at-scale step (wsgate only): N routes in one file,
# memory per route, /metrics size, load and reload time (default 5000, 0 = off).
# --ramp D: the idle-memory step runs twice, a burst (as fast as the client
# can) and a ramp spreading the N opens over D (default 30s, 0 = burst only).
#
# wsgate-nolog is wsgate with `--access-log off`, as NGINX (access_log off) and
# HAProxy (no log) run here: `--proxies wsgate,wsgate-nolog` measures what the
# access log costs, and wsgate-nolog compares like with like.
#
# wsgate-limited is wsgate with per-tunnel rate limits set (Throttle, rates far
# above what the load reaches): `--proxies wsgate,wsgate-limited` measures what the
# token buckets cost per message.
#
# --rounds R repeats the whole sequence R times (alternating the order) and
# reports medians: use 3 on a machine shared with other work.
#
# Environment: WSGATE_BIN (use this binary instead of building), CARGO_TARGET_DIR
# (default /var/cache/wsgate/target), WSGATE_CACHE (default /var/cache/wsgate),
# BENCH_SOURCES (client source addresses, default 127.0.0.2-9), RUST_LOG
# (default warn for wsgate).
#
# Needs: go, python3, nginx and haproxy (installed from Debian when missing and
# run as root), cargo unless WSGATE_BIN is set. Loopback traffic only.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
CACHE=${WSGATE_CACHE:-/var/cache/wsgate}
BIN_DIR=$CACHE/bench/bin
LOADGEN=$BIN_DIR/loadgen
SOURCES=${BENCH_SOURCES:-127.0.0.2-9}

# ---- parameters ----
MODE=full
N=8000
SETTLE=5s
TP_CONNS=100
TP_WINDOW=8
TP_MESSAGES=500000      # unpaced run: client->backend messages (each echoed: 2x relayed)
TP_DURATION=20s         #   ... or this long, whichever first
TP_RATE=30000           # paced run: client->backend messages/s offered, all proxies alike
TP_PACED_DURATION=10s   #   ... for this long
LAT_CONNS=4
LAT_COUNT=20000
LAT_INTERVAL=1ms
HS_WORKERS=16
HS_DURATION=10s
PROXIES=wsgate,nginx,haproxy-http,haproxy-tcp
BUILD=1
KEEP=0
ROUNDS=1
ROUTES=5000
RAMP=30s
N_SET=
WAIT_QUIET=
H2=wsgate,haproxy-h2
H2_CONNS=40
H2_STREAMS=100
EDGE=wsgate,wsgate-pp2,wsgate-cidr
FLEET=on

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) MODE=quick ;;
    --n) N_SET=$2; shift ;;
    --n=*) N_SET=${1#--n=} ;;
    --proxies) PROXIES=$2; shift ;;
    --proxies=*) PROXIES=${1#--proxies=} ;;
    --no-build) BUILD=0 ;;
    --keep) KEEP=1 ;;
    --rounds) ROUNDS=$2; shift ;;
    --rounds=*) ROUNDS=${1#--rounds=} ;;
    --routes) ROUTES=$2; shift ;;
    --routes=*) ROUTES=${1#--routes=} ;;
    --ramp) RAMP=$2; shift ;;
    --ramp=*) RAMP=${1#--ramp=} ;;
    --h2) H2=$2; shift ;;
    --h2=*) H2=${1#--h2=} ;;
    --edge) EDGE=$2; shift ;;
    --edge=*) EDGE=${1#--edge=} ;;
    --fleet) FLEET=$2; shift ;;
    --fleet=*) FLEET=${1#--fleet=} ;;
    --h2-conns) H2_CONNS=$2; shift ;;
    --h2-streams) H2_STREAMS=$2; shift ;;
    --wait-quiet) WAIT_QUIET=$2; shift ;;
    --wait-quiet=*) WAIT_QUIET=${1#--wait-quiet=} ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [ "$MODE" = quick ]; then
  N=1000; SETTLE=2s; TP_MESSAGES=100000; TP_DURATION=5s; TP_PACED_DURATION=3s
  LAT_COUNT=4000; HS_DURATION=3s; ROUTES=1000; RAMP=5s; H2_CONNS=10
fi
[ "$H2" = none ] && H2=""
[ "$EDGE" = none ] && EDGE=""
[ "$PROXIES" = none ] && PROXIES=
[ -n "$N_SET" ] && N=$N_SET
# Wait (bounded) for the machine to go quiet before measuring: 60 s in a full
# run, none in --quick.
if [ -z "$WAIT_QUIET" ]; then
  if [ "$MODE" = quick ]; then WAIT_QUIET=0; else WAIT_QUIET=60; fi
fi

say() { printf '%s\n' "$*" >&2; }
step() { printf '\n== %s\n' "$*" >&2; }

# ---- limits, work dir, cleanup ----
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d /tmp/wsgate-bench.XXXXXX)
STARTED=()          # process-group leaders we started (setsid): pid == pgid

stop_group() {      # stop_group PID: TERM the group, then KILL what is left
  local pid=$1 i
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 1 50); do
    kill -0 -- "-$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
}

cleanup() {
  local p
  for p in "${STARTED[@]}"; do stop_group "$p"; done
  if [ "$KEEP" = 1 ]; then say "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_group LOGFILE CMD...: start CMD in its own session; sets LAST_PID
start_group() {
  local log=$1; shift
  setsid "$@" >"$log" 2>&1 </dev/null &
  LAST_PID=$!
  STARTED+=("$LAST_PID")
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# ---- tools ----
step "tools"
if ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing nginx-light and haproxy from Debian"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light haproxy) >"$WORK/apt.log" 2>&1 \
      || say "apt-get failed (see $WORK/apt.log)"
  fi
fi
mkdir -p "$BIN_DIR"
if ! (cd "$HERE/loadgen" && go build -o "$LOADGEN" .) >&2; then
  say "run.sh: cannot build bench/loadgen"; exit 1
fi
say "loadgen: $LOADGEN"

WSGATE=""
WSGATE_NOTE=""
WSGATE_SOURCE=""
WSGATE_ORIG=""
WSGATE_SHA=""
if [[ ",$PROXIES,$H2,$EDGE," == *",wsgate,"* ]] || [ "$FLEET" = on ]; then
  if [ -n "${WSGATE_BIN:-}" ]; then
    WSGATE=$WSGATE_BIN
    WSGATE_SOURCE="WSGATE_BIN"
  else
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/wsgate/target}
    if [ "$BUILD" = 1 ]; then
      say "building wsgate (cargo build --release --locked, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
      if (cd "$REPO" && cargo build --release --locked) >"$WORK/cargo.log" 2>&1; then
        WSGATE_SOURCE="working tree of $REPO ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' + uncommitted changes'))"
      else
        # Others may be mid-edit in the shared working tree: fall back to the
        # last commit, exported with git archive (nothing in the repo changes).
        first_err=$(grep -m1 -E '^error' "$WORK/cargo.log" || tail -1 "$WORK/cargo.log")
        say "working tree does not build ($first_err); building the last commit instead"
        head_src=$CACHE/bench/src/head
        rm -rf "$head_src" && mkdir -p "$head_src"
        if git -C "$REPO" archive HEAD | tar -x -C "$head_src" \
           && (cd "$head_src" && cargo build --release --locked) >"$WORK/cargo-head.log" 2>&1; then
          WSGATE_SOURCE="commit $(git -C "$REPO" rev-parse --short HEAD) (working tree did not build: $first_err)"
        else
          WSGATE_NOTE="cargo build --release failed for the working tree ($first_err) and for HEAD: $(grep -m1 -E '^error' "$WORK/cargo-head.log" || tail -1 "$WORK/cargo-head.log")"
          say "$WSGATE_NOTE"
        fi
      fi
    fi
    WSGATE=$CARGO_TARGET_DIR/release/wsgate
    [ "$BUILD" = 1 ] || WSGATE_SOURCE="prebuilt (--no-build)"
  fi
  if [ -z "$WSGATE_NOTE" ] && [ ! -x "$WSGATE" ]; then
    WSGATE_NOTE="no wsgate binary at $WSGATE"
    say "$WSGATE_NOTE"
  fi
  [ -n "$WSGATE_NOTE" ] && WSGATE=""
  # The target dir is shared: others rebuild release/wsgate at any time. Measure
  # a private copy so every round runs the same binary.
  if [ -n "$WSGATE" ]; then
    mkdir -p "$WORK/bin" && cp "$WSGATE" "$WORK/bin/wsgate" && WSGATE_ORIG=$WSGATE && WSGATE=$WORK/bin/wsgate
    WSGATE_SHA=$(sha256sum "$WSGATE" | cut -c1-16)
  fi
fi
NGINX_VERSION=$(nginx -v 2>&1 | sed 's/.*nginx\///' || true)
HAPROXY_VERSION=$(haproxy -v 2>/dev/null | head -1 | awk '{print $3}' || true)
say "nginx: ${NGINX_VERSION:-missing}  haproxy: ${HAPROXY_VERSION:-missing}  wsgate: ${WSGATE:-none}"

# ---- backend ----
step "backend"
BPORT=$(free_port)
BACKEND=127.0.0.1:$BPORT
start_group "$WORK/echo.log" "$LOADGEN" echo-server --listen "$BACKEND" --max-lifetime 1h
BACKEND_PID=$LAST_PID
"$LOADGEN" wait --target "ws://$BACKEND/" --timeout 10s || { say "backend did not start"; cat "$WORK/echo.log" >&2; exit 1; }
say "echo backend on $BACKEND"

busy_cores() {  # busy_cores SECONDS: the machine's non-idle cores over that time
  python3 - "$1" <<'PY'
import sys, time
def busy():
    f = open("/proc/stat").readline().split()[1:9]
    v = list(map(int, f))
    return sum(v) - v[3] - v[4] - v[7]  # minus idle, iowait, steal
b0 = busy(); time.sleep(float(sys.argv[1])); print(f"{(busy() - b0) / 100 / float(sys.argv[1]):.2f}")
PY
}
MACHINE_BUSY0=$(busy_cores 2)
waited=0
while [ "$waited" -lt "$WAIT_QUIET" ] && python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > 0.2 else 1)' "$MACHINE_BUSY0"; do
  say "machine is $MACHINE_BUSY0 cores busy (not us); waiting for quiet (${waited}s of ${WAIT_QUIET}s)"
  sleep 3; waited=$((waited + 5))
  MACHINE_BUSY0=$(busy_cores 2)
done
say "machine busy before measuring: $MACHINE_BUSY0 of $(nproc) cores (anything above ~0.1 is someone else's load and skews every figure)"

cat >"$WORK/meta.json" <<EOF
{"mode":"$MODE","rounds":$ROUNDS,"n":$N,"settle":"$SETTLE","sources":"$SOURCES",
 "throughput":{"conns":$TP_CONNS,"window":$TP_WINDOW,"messages":$TP_MESSAGES,"duration":"$TP_DURATION","size":1024,
   "paced_rate":$TP_RATE,"paced_duration":"$TP_PACED_DURATION"},
 "latency":{"conns":$LAT_CONNS,"count":$LAT_COUNT,"interval":"$LAT_INTERVAL","size":1024},
 "handshakes":{"workers":$HS_WORKERS,"duration":"$HS_DURATION"},
 "h2":{"proxies":"$H2","conns":$H2_CONNS,"streams":$H2_STREAMS},
 "nginx_version":"$NGINX_VERSION","haproxy_version":"$HAPROXY_VERSION",
 "wsgate_bin":"$WSGATE_ORIG","wsgate_sha256_16":"$WSGATE_SHA","wsgate_note":"$(printf '%s' "$WSGATE_NOTE" | tr '"\\' "''")",
 "wsgate_commit":"$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)",
 "wsgate_source":"$(printf '%s' "$WSGATE_SOURCE" | tr '"\\' "''")",
 "kernel":"$(uname -r)","cpus":$(nproc),"cpu_model":"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')",
 "machine_busy_cores_at_start":$MACHINE_BUSY0,
 "date":"$(date -u +%Y-%m-%dT%H:%M:%SZ)"}
EOF

# ---- proxies ----
fill() {  # fill TEMPLATE OUT LISTEN PREFIX
  sed -e "s#@LISTEN@#$3#g" -e "s#@BACKEND@#$BACKEND#g" -e "s#@PREFIX@#$4#g" "$1" >"$2"
}

# start_proxy NAME PORT: sets PROXY_PID or returns 1
start_proxy() {
  local name=$1 port=$2 dir=$WORK/$1
  mkdir -p "$dir"
  case "$name" in
    wsgate|wsgate-limited|wsgate-nolog|wsgate-pp2|wsgate-cidr)
      local aport extra=(); aport=$(free_port)
      [ "$name" = wsgate-nolog ] && extra=(--access-log off)
      [ "$name" = wsgate-pp2 ] && extra=(--proxy-protocol v2 --proxy-protocol-trusted 127.0.0.0/8)
      fill "$HERE/configs/wsgate.yaml" "$dir/wsgate.yaml" "" "$dir"
      if [ "$name" = wsgate-limited ]; then
        echo '  limits: {messagesPerSecond: 1000000000, bytesPerSecond: 1000000000000, onExceed: Throttle}' >>"$dir/wsgate.yaml"
      fi
      if [ "$name" = wsgate-cidr ]; then
        # 1,000 ranges (10.0.0.0/24 ... 10.3.231.0/24) none of the 127.0.0.x clients is in:
        # every handshake walks the whole list.
        python3 -c 'print("  clientAccess: {deny: [" + ", ".join(f"10.{i // 256}.{i % 256}.0/24" for i in range(1000)) + "]}")' >>"$dir/wsgate.yaml"
      fi
      RUST_LOG=${RUST_LOG:-warn} start_group "$dir/out.log" "$WSGATE" serve --config "$dir/wsgate.yaml" \
        --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$aport" "${extra[@]}"
      ;;
    nginx)
      mkdir -p "$dir/tmp" "$dir/logs"
      fill "$HERE/configs/nginx.conf" "$dir/nginx.conf" "127.0.0.1:$port" "$dir"
      start_group "$dir/out.log" nginx -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;'
      ;;
    haproxy-http|haproxy-tcp|haproxy-h2)
      fill "$HERE/configs/$name.cfg" "$dir/haproxy.cfg" "127.0.0.1:$port" "$dir"
      start_group "$dir/out.log" haproxy -db -f "$dir/haproxy.cfg"
      ;;
    *) say "unknown proxy $name"; return 1 ;;
  esac
  PROXY_PID=$LAST_PID
  local ready=0 i
  if [ "$name" = haproxy-h2 ]; then
    # HTTP/2 only: ready once one extended CONNECT tunnel opens and closes.
    for i in $(seq 1 40); do
      if "$LOADGEN" h2-handshakes --target "127.0.0.1:$port" --workers 1 --max 1 --duration 2s --sources "" 2>/dev/null \
         | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["handshakes"] == 1 else 1)' 2>/dev/null; then
        ready=1; break
      fi
      sleep 0.5
    done
  elif [ "$name" = wsgate-pp2 ]; then
    # Every connection must open with a PROXY header: ready once one tunnel opens.
    for i in $(seq 1 40); do
      if "$LOADGEN" handshakes --target "ws://127.0.0.1:$port/" --workers 1 --max 1 --duration 2s --sources "" --proxy-v2 2>/dev/null \
         | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["handshakes"] == 1 else 1)' 2>/dev/null; then
        ready=1; break
      fi
      sleep 0.5
    done
  elif "$LOADGEN" wait --target "ws://127.0.0.1:$port/" --timeout 20s; then
    ready=1
  fi
  if [ "$ready" = 0 ]; then
    say "$name did not become ready; its output:"; sed 's/^/    /' "$dir/out.log" >&2
    stop_group "$PROXY_PID"
    return 1
  fi
  sleep 1
}

thread_model() {
  case "$1" in
    wsgate|wsgate-limited|wsgate-nolog|wsgate-pp2|wsgate-cidr) echo "tokio multi-thread runtime ($(awk '/^Threads:/{print $2}' /proc/"$2"/status 2>/dev/null) threads at start; $(nproc) cores)" ;;
    nginx) echo "master + 1 worker process (worker_processes 1), epoll" ;;
    haproxy-http) echo "1 process, nbthread 1, mode http" ;;
    haproxy-tcp) echo "1 process, nbthread 1, mode tcp, option splice-auto" ;;
    haproxy-h2) echo "1 process, nbthread 1, mode http, bind proto h2" ;;
  esac
}

backend_stats() {
  python3 -c 'import sys,urllib.request; print(urllib.request.urlopen("http://"+sys.argv[1]+"/_stats", timeout=5).read().decode().strip())' "$BACKEND" 2>/dev/null || echo '{}'
}

summ() {  # one-line summary of a result file
  python3 - "$@" <<'EOF'
import json, sys
kind, path = sys.argv[1], sys.argv[2]
d = json.load(open(path))
if kind == "idle":
    shape = f"ramp over {d['ramp_seconds']:.0f}s" if d.get("ramp_seconds") else "burst"
    left = ""
    if d.get("proxy_after_close"):
        left = f"; after all closed: anon {d['anon_kb_left_after_close']/1024:+.1f} MiB, RSS {d['rss_kb_left_after_close']/1024:+.1f} MiB vs before"
    print(f"   idle ({shape}): {d['opened']}/{d['n']} tunnels open in {d['open_seconds']:.1f}s, failed {d['failed']}, "
          f"dropped while settling {d['dropped_while_settling']}; per tunnel: anon {d['anon_kb_per_tunnel']:.2f} KiB, "
          f"RSS {d['rss_kb_per_tunnel']:.2f} KiB, private {d['private_kb_per_tunnel']:.2f} KiB{left}")
elif kind == "throughput":
    print(f"   throughput {sys.argv[3]}: {d['relayed']} messages relayed in {d['seconds']:.1f}s ({d['relayed_per_s']:.0f}/s, bounded by {d['bounded_by']}), "
          f"proxy CPU {d['proxy_cpu_s']:.2f}s ({d['proxy_cpu_util']:.2f} cores) = {d['cpu_s_per_million_relayed']:.3f} CPU-s per million relayed; "
          f"errors {d['error_count']}; machine {d.get('machine_busy_cores', 0):.2f} cores busy, foreign {d.get('foreign_busy_cores', 0):.2f}")
elif kind == "latency":
    b = d.get("baseline") or {}
    print(f"   latency: via proxy p50 {d['p50_us']:.0f} us, p99 {d['p99_us']:.0f} us, p99.9 {d['p999_us']:.0f} us; "
          f"direct p50 {b.get('p50_us', 0):.0f} us, p99 {b.get('p99_us', 0):.0f} us ({d['samples']}+{b.get('samples', 0)} samples, errors {d['error_count']})")
elif kind == "handshakes":
    print(f"   handshakes: {d['handshakes']} in {d['seconds']:.1f}s = {d['per_s']:.0f}/s, proxy CPU {d['proxy_cpu_us_per_handshake']:.0f} us each, "
          f"errors {d['error_count']} {d.get('errors') or ''}; machine {d.get('machine_busy_cores', 0):.2f} cores busy, foreign {d.get('foreign_busy_cores', 0):.2f}")
EOF
}

PROXY_LIST=()
[ -n "$PROXIES" ] && IFS=, read -r -a PROXY_LIST <<<"$PROXIES"
for round in $(seq 1 "$ROUNDS"); do
# Odd rounds go in the given order, even rounds in reverse, to cancel drift.
order=("${PROXY_LIST[@]}")
if [ $((round % 2)) = 0 ]; then
  order=(); for ((i=${#PROXY_LIST[@]}-1; i>=0; i--)); do order+=("${PROXY_LIST[$i]}"); done
fi
for name in "${order[@]}"; do
  if [ "$ROUNDS" -gt 1 ]; then step "$name (round $round of $ROUNDS)"; else step "$name"; fi
  out=$WORK/round$round/$name
  mkdir -p "$out"
  if [[ "$name" == wsgate* ]] && [ -z "$WSGATE" ]; then
    echo "{\"status\":\"skipped\",\"reason\":\"$(printf '%s' "$WSGATE_NOTE" | tr '"\\' "''")\"}" >"$out/status.json"
    say "   skipped: $WSGATE_NOTE"
    continue
  fi
  if [[ "$name" == nginx && -z "$NGINX_VERSION" ]] || [[ "$name" == haproxy-* && -z "$HAPROXY_VERSION" ]]; then
    echo '{"status":"skipped","reason":"not installed"}' >"$out/status.json"; say "   skipped: not installed"; continue
  fi
  PORT=$(free_port)
  if ! start_proxy "$name" "$PORT"; then
    reason=$(tail -3 "$out/out.log" 2>/dev/null | tr '\n"\\' "  ''")
    echo "{\"status\":\"failed\",\"reason\":\"did not start or relay: $reason\"}" >"$out/status.json"
    continue
  fi
  URL="ws://127.0.0.1:$PORT/"
  stats0=$(backend_stats)
  printf '{"status":"ok","pid":%s,"threads":"%s","backend_stats_before":%s}\n' "$PROXY_PID" "$(thread_model "$name" "$PROXY_PID")" "$stats0" >"$out/status.json"
  say "   $(thread_model "$name" "$PROXY_PID"), listening on 127.0.0.1:$PORT"

  # 1. memory per idle tunnel
  if timeout 300 "$LOADGEN" idle --target "$URL" --n "$N" --sources "$SOURCES" --proxy-pid "$PROXY_PID" \
       --settle "$SETTLE" --measure-close >"$out/idle.json" 2>"$out/idle.log"; then
    summ idle "$out/idle.json" >&2
  else
    say "   idle: failed"; tail -3 "$out/idle.log" >&2; rm -f "$out/idle.json"
  fi
  stats1=$(backend_stats)
  sleep 3   # let the proxy tear the idle tunnels down

  # 1b. the same N tunnels arriving in a slow ramp, then the memory left once
  # they all closed (a burst of handshakes can leave the allocator holding pages)
  if [ "$RAMP" != 0 ] && [ "$RAMP" != 0s ]; then
    # A fresh process: the burst's leftovers would otherwise be reused and hide
    # the ramp's own cost.
    stop_group "$PROXY_PID"; sleep 1
    PORT=$(free_port); URL="ws://127.0.0.1:$PORT/"
    if ! start_proxy "$name" "$PORT"; then say "   $name did not restart"; continue; fi
    if timeout 600 "$LOADGEN" idle --target "$URL" --n "$N" --sources "$SOURCES" --proxy-pid "$PROXY_PID" \
         --settle "$SETTLE" --ramp "$RAMP" --measure-close >"$out/idle-ramp.json" 2>"$out/idle-ramp.log"; then
      summ idle "$out/idle-ramp.json" >&2
    else
      say "   idle ramp: failed"; tail -3 "$out/idle-ramp.log" >&2; rm -f "$out/idle-ramp.json"
    fi
    sleep 3
  fi
  if ! kill -0 "$PROXY_PID" 2>/dev/null; then say "   $name died"; continue; fi

  # 2. CPU per relayed message: unpaced (as fast as the window allows), then paced
  if timeout 120 "$LOADGEN" throughput --target "$URL" --conns "$TP_CONNS" --window "$TP_WINDOW" \
       --messages "$TP_MESSAGES" --duration "$TP_DURATION" --sources "$SOURCES" --proxy-pid "$PROXY_PID" \
       --backend-pid "$BACKEND_PID" >"$out/throughput.json" 2>"$out/throughput.log"; then
    summ throughput "$out/throughput.json" unpaced >&2
  else
    say "   throughput: failed"; tail -3 "$out/throughput.log" >&2; rm -f "$out/throughput.json"
  fi
  sleep 1
  if timeout 120 "$LOADGEN" throughput --target "$URL" --conns "$TP_CONNS" --window "$TP_WINDOW" \
       --rate "$TP_RATE" --messages 100000000 --duration "$TP_PACED_DURATION" --sources "$SOURCES" \
       --proxy-pid "$PROXY_PID" --backend-pid "$BACKEND_PID" >"$out/throughput-paced.json" 2>"$out/throughput-paced.log"; then
    summ throughput "$out/throughput-paced.json" "paced $TP_RATE/s" >&2
  else
    say "   throughput paced: failed"; tail -3 "$out/throughput-paced.log" >&2; rm -f "$out/throughput-paced.json"
  fi
  sleep 1

  # 3. latency: through the proxy and straight to the backend, interleaved
  if timeout 180 "$LOADGEN" latency --target "$URL" --baseline "ws://$BACKEND/" --conns "$LAT_CONNS" \
       --count "$LAT_COUNT" --interval "$LAT_INTERVAL" --sources "$SOURCES" >"$out/latency.json" 2>"$out/latency.log"; then
    summ latency "$out/latency.json" >&2
  else
    say "   latency: failed"; tail -3 "$out/latency.log" >&2; rm -f "$out/latency.json"
  fi

  # 4. upgrade handshakes per second
  if timeout 120 "$LOADGEN" handshakes --target "$URL" --workers "$HS_WORKERS" --duration "$HS_DURATION" \
       --sources "$SOURCES" --proxy-pid "$PROXY_PID" --backend-pid "$BACKEND_PID" >"$out/handshakes.json" 2>"$out/handshakes.log"; then
    summ handshakes "$out/handshakes.json" >&2
  else
    say "   handshakes: failed"; tail -3 "$out/handshakes.log" >&2; rm -f "$out/handshakes.json"
  fi

  python3 - "$out/status.json" "$stats1" <<'EOF'
import json, sys
p = sys.argv[1]; d = json.load(open(p))
try: d["backend_stats_after_idle"] = json.loads(sys.argv[2])
except Exception: pass
json.dump(d, open(p, "w"))
EOF
  stop_group "$PROXY_PID"
  sleep 2   # let TIME_WAIT and the backend settle before the next proxy
done
done

# ---- HTTP/2 rows: WebSockets over HTTP/2 streams (RFC 8441) ----
H2_LIST=()
[ -n "$H2" ] && IFS=, read -r -a H2_LIST <<<"$H2"
for name in "${H2_LIST[@]}"; do
  step "$name over HTTP/2 (h2c, extended CONNECT)"
  out=$WORK/h2/$name
  mkdir -p "$out"
  if [ "$name" = wsgate ] && [ -z "$WSGATE" ]; then
    echo "{\"status\":\"skipped\",\"reason\":\"$(printf '%s' "$WSGATE_NOTE" | tr '"\\' "''")\"}" >"$out/status.json"; continue
  fi
  if [ "$name" = haproxy-h2 ] && [ -z "$HAPROXY_VERSION" ]; then
    echo '{"status":"skipped","reason":"not installed"}' >"$out/status.json"; continue
  fi
  PORT=$(free_port)
  # wsgate's cleartext listener takes h2c with prior knowledge next to HTTP/1.1.
  if ! start_proxy "$name" "$PORT"; then
    echo '{"status":"failed","reason":"did not start or relay"}' >"$out/status.json"; continue
  fi
  T=127.0.0.1:$PORT
  echo '{"status":"ok"}' >"$out/status.json"
  say "   $(thread_model "$name" "$PROXY_PID"), listening on $T"
  if timeout 300 "$LOADGEN" h2-idle --target "$T" --conns "$H2_CONNS" --streams "$H2_STREAMS" --sources "$SOURCES" \
       --proxy-pid "$PROXY_PID" --settle "$SETTLE" --measure-close >"$out/idle.json" 2>"$out/idle.log"; then
    summ idle "$out/idle.json" >&2
  else
    say "   h2 idle: failed"; tail -3 "$out/idle.log" >&2; rm -f "$out/idle.json"
  fi
  sleep 2
  if timeout 120 "$LOADGEN" h2-handshakes --target "$T" --workers "$HS_WORKERS" --duration "$HS_DURATION" \
       --sources "$SOURCES" --proxy-pid "$PROXY_PID" --backend-pid "$BACKEND_PID" >"$out/handshakes.json" 2>"$out/handshakes.log"; then
    summ handshakes "$out/handshakes.json" >&2
  else
    say "   h2 handshakes: failed"; tail -3 "$out/handshakes.log" >&2; rm -f "$out/handshakes.json"
  fi
  sleep 1
  if timeout 120 "$LOADGEN" h2-throughput --target "$T" --conns 1 --streams "$TP_CONNS" --window "$TP_WINDOW" \
       --messages "$TP_MESSAGES" --duration "$TP_DURATION" --sources "$SOURCES" --proxy-pid "$PROXY_PID" \
       --backend-pid "$BACKEND_PID" >"$out/throughput.json" 2>"$out/throughput.log"; then
    summ throughput "$out/throughput.json" "unpaced, $TP_CONNS streams on 1 connection" >&2
  else
    say "   h2 throughput: failed"; tail -3 "$out/throughput.log" >&2; rm -f "$out/throughput.json"
  fi
  sleep 1
  if timeout 120 "$LOADGEN" h2-throughput --target "$T" --conns 1 --streams "$TP_CONNS" --window "$TP_WINDOW" \
       --rate "$TP_RATE" --messages 100000000 --duration "$TP_PACED_DURATION" --sources "$SOURCES" \
       --proxy-pid "$PROXY_PID" --backend-pid "$BACKEND_PID" >"$out/throughput-paced.json" 2>"$out/throughput-paced.log"; then
    summ throughput "$out/throughput-paced.json" "paced $TP_RATE/s, $TP_CONNS streams on 1 connection" >&2
  else
    say "   h2 throughput paced: failed"; tail -3 "$out/throughput-paced.log" >&2; rm -f "$out/throughput-paced.json"
  fi
  stop_group "$PROXY_PID"
  sleep 2
done
if [ ${#H2_LIST[@]} -gt 0 ]; then
  mkdir -p "$WORK/h2/nginx"
  echo '{"status":"n/a","reason":"n/a (no RFC 8441)"}' >"$WORK/h2/nginx/status.json"
fi

# ---- the client's address: PROXY protocol v2 and a 1,000-entry CIDR list (issue 19) ----
EDGE_LIST=()
[ -n "$EDGE" ] && IFS=, read -r -a EDGE_LIST <<<"$EDGE"
if [ ${#EDGE_LIST[@]} -gt 0 ]; then
  step "the client's address: handshakes with PROXY v2 and with a 1,000-entry clientAccess list"
  # In the given order, then reversed, so drift on a shared machine cancels.
  edge_order=("${EDGE_LIST[@]}")
  for ((i=${#EDGE_LIST[@]}-1; i>=0; i--)); do edge_order+=("${EDGE_LIST[$i]}"); done
  pass=0
  for name in "${edge_order[@]}"; do
    pass=$((pass + 1))
    out=$WORK/edge/$name
    mkdir -p "$out"
    if [ -z "$WSGATE" ]; then
      echo "{\"status\":\"skipped\",\"reason\":\"$(printf '%s' "$WSGATE_NOTE" | tr '"\\' "''")\"}" >"$out/status.json"; continue
    fi
    PORT=$(free_port)
    if ! start_proxy "$name" "$PORT"; then
      echo '{"status":"failed","reason":"did not start or relay"}' >"$out/status.json"; continue
    fi
    echo '{"status":"ok"}' >"$out/status.json"
    pp=(); [ "$name" = wsgate-pp2 ] && pp=(--proxy-v2)
    if timeout 120 "$LOADGEN" handshakes --target "ws://127.0.0.1:$PORT/" --workers "$HS_WORKERS" --duration "$HS_DURATION" \
         --sources "$SOURCES" --proxy-pid "$PROXY_PID" --backend-pid "$BACKEND_PID" "${pp[@]}" \
         >"$out/handshakes-$pass.json" 2>"$out/handshakes-$pass.log"; then
      say "   $name: $(summ handshakes "$out/handshakes-$pass.json" 2>&1)"
    else
      say "   $name handshakes: failed"; tail -3 "$out/handshakes-$pass.log" >&2; rm -f "$out/handshakes-$pass.json"
    fi
    stop_group "$PROXY_PID"
    sleep 2
  done
fi

# ---- fleet-wide limits (issue 21): bench/fleet.sh, its rows in the report ----
if [ "$FLEET" = on ] && [ -n "$WSGATE" ]; then
  step "fleet-wide limits: handshakes with a fleet cap (Redis on loopback) and without; Redis ops per 1,000 tunnels"
  if ! command -v redis-server >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools && (service redis-server stop || true)) \
      >"$WORK/apt-redis.log" 2>&1 || say "apt-get redis-server failed (see $WORK/apt-redis.log)"
  fi
  WSGATE_BIN=$WSGATE BENCH_SOURCES=$SOURCES timeout 600 bash "$HERE/fleet.sh" --seconds "${HS_DURATION%s}" \
    --json "$WORK/fleet.json" >"$WORK/fleet.txt" 2>"$WORK/fleet.log" || { say "   fleet: failed"; tail -5 "$WORK/fleet.log" >&2; }
  sed 's/^/   /' "$WORK/fleet.txt" >&2
fi

# ---- routes at scale (wsgate only): memory per route, /metrics size, reload time ----
if [ -n "$WSGATE" ] && [ "$ROUTES" -gt 0 ] && [[ ",$PROXIES," == *",wsgate,"* ]]; then
  step "wsgate with $ROUTES routes"
  mkdir -p "$WORK/routes"
  if timeout 600 "$LOADGEN" routes --wsgate "$WSGATE" --backend "$BACKEND" --n "$ROUTES" --dir "$WORK/routes" \
       --listen "127.0.0.1:$(free_port)" --admin "127.0.0.1:$(free_port)" >"$WORK/routes.json" 2>"$WORK/routes.log"; then
    python3 "$HERE/report.py" --routes "$WORK/routes.json" >&2
  else
    say "   routes: failed"; tail -3 "$WORK/routes.log" >&2; rm -f "$WORK/routes.json"
  fi
fi

step "results"
mkdir -p "$HERE/results"
# A --quick smoke run does not overwrite the last full run's figures.
RESULT=latest; [ "$MODE" = quick ] && RESULT=quick
python3 "$HERE/report.py" "$WORK" "$HERE/results/$RESULT.json" | tee "$HERE/results/$RESULT.txt"
