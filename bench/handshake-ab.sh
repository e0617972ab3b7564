#!/usr/bin/env bash
# What one plain WebSocket handshake costs wsgate, for two builds side by side: a
# before-and-after of a change to the upgrade path. Prints figures; not a test.
#
#   bench/handshake-ab.sh cpu OLD_BIN NEW_BIN [ROUNDS]   # handshakes/s and proxy CPU µs each,
#                                                      # the two binaries alternating (default 3 rounds)
#   bench/handshake-ab.sh syscalls BIN                 # strace -c -f over 2,000 handshakes
#   bench/handshake-ab.sh allocations BIN              # heaptrack: allocations per handshake
#                                                      # (5,000 handshakes minus an idle run)
#
# The load is the benchmark's (bench/README.md, item 4): loops of connect, upgrade,
# Close 1000 both ways, close, from 127.0.0.2-9 to wsgate on loopback with the
# benchmark's route (bench/configs/wsgate.yaml) and echo backend. Needs strace or
# heaptrack for those modes (installed from Debian when missing, as root).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
MODE=${1:?mode: cpu, syscalls or allocations}
WSGATE_BIN=${2:?a wsgate binary}
# shellcheck source=bench/common.sh
. "$HERE/common.sh"

need() {
  command -v "$1" >/dev/null && return
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

# start BIN [WRAPPER...]: wsgate with the benchmark's route; sets L and pid.
start() {
  local bin=$1
  shift
  L=127.0.0.1:$(port)
  sed -e "s#@BACKEND@#$BACKEND#g" "$HERE/configs/wsgate.yaml" >"$WORK/wsgate.yaml"
  RUST_LOG=warn setsid "$@" "$bin" serve --config "$WORK/wsgate.yaml" --listen "$L" \
    --admin-listen "127.0.0.1:$(port)" >>"$WORK/wsgate.log" 2>&1 </dev/null &
  pid=$!
  PIDS+=("$pid")
  "$LOADGEN" wait --target "ws://$L/" --timeout 30s
}

handshakes() { # WORKERS COUNT_OR_0 DURATION [extra loadgen flags]
  local max=()
  [ "$2" != 0 ] && max=(--max "$2")
  "$LOADGEN" handshakes --target "ws://$L/" --workers "$1" "${max[@]}" --duration "$3" \
    --sources 127.0.0.2-9 "${@:4}"
}

case "$MODE" in
  cpu)
    NEW_BIN=${3:?cpu needs OLD_BIN and NEW_BIN}
    for r in $(seq "${4:-3}"); do
      for side in "old $WSGATE_BIN" "new $NEW_BIN"; do
        set -- $side
        start "$2"
        handshakes 16 0 1s >/dev/null
        handshakes 16 0 5s --proxy-pid "$pid" --backend-pid "$BACKEND_PID" | python3 -c "
import json, sys
d = json.load(sys.stdin)
print(f\"round $r  $1  {d['per_s']:.0f} handshakes/s  {d['proxy_cpu_us_per_handshake']:.0f} µs each  ($2)\")"
        kill -- -"$pid"
        sleep 0.5
      done
    done
    ;;
  syscalls)
    need strace strace
    start "$WSGATE_BIN"
    strace -c -f -p "$pid" -o "$WORK/strace.txt" &
    st=$!
    sleep 1
    n=$(handshakes 4 2000 60s | python3 -c 'import json,sys; print(json.load(sys.stdin)["handshakes"])')
    sleep 0.5
    kill -INT "$st"
    wait "$st" || true
    echo "system calls per handshake over $n handshakes (strace -c -f; epoll_wait and sleeps are the idle runtime's too)"
    awk -v n="$n" '$NF ~ /^[a-z_0-9]+$/ && $NF != "total" && $4 ~ /^[0-9]+$/ { printf "  %-14s %6.2f\n", $NF, $4 / n; t += $4 }
      END { printf "  %-14s %6.2f\n", "total", t / n }' "$WORK/strace.txt"
    ;;
  allocations)
    need heaptrack heaptrack
    count() { # HANDSHAKES: allocation calls over the process's life
      start "$WSGATE_BIN" heaptrack -o "$WORK/heap-$1"
      [ "$1" -gt 0 ] && handshakes 4 "$1" 120s >/dev/null
      sleep 1
      kill -INT -- -"$pid" 2>/dev/null || true
      sleep 3
      heaptrack_print "$WORK"/heap-"$1".*zst 2>/dev/null |
        sed -n 's/^calls to allocation functions: \([0-9]*\).*/\1/p'
    }
    idle=$(count 0)
    busy=$(count 5000)
    python3 -c "print(f'allocations per handshake: {($busy - $idle) / 5000:.1f} ($idle calls idle, $busy with 5,000 handshakes)')"
    ;;
  *) echo "unknown mode $MODE (cpu, syscalls, allocations)" >&2; exit 2 ;;
esac
