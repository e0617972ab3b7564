# Set-up shared by bench/profile-handshakes.sh and bench/saturated.sh (sourced;
# HERE and REPO set by the caller): the Go load client and the release binary,
# a work directory whose processes are killed on exit (KEEP=1 keeps the
# directory), a free-port helper, and the echo backend on BACKEND (BACKEND_PID).
CACHE=${WSGATE_CACHE:-/var/cache/wsgate}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/wsgate/target}
say() { printf '%s\n' "$*" >&2; }
ulimit -n 20000 2>/dev/null || true

LOADGEN=$CACHE/bench/bin/loadgen
mkdir -p "$(dirname "$LOADGEN")"
(cd "$HERE/loadgen" && go build -o "$LOADGEN" .)
if [ -z "${WSGATE_BIN:-}" ]; then
  (cd "$REPO" && cargo build --release --locked --bin wsgate) >&2
  WSGATE_BIN=$CARGO_TARGET_DIR/release/wsgate
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -- -"$p" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

BACKEND=127.0.0.1:$(port)
setsid "$LOADGEN" echo-server --listen "$BACKEND" --max-lifetime 1h >"$WORK/echo.log" 2>&1 </dev/null &
BACKEND_PID=$!
PIDS+=("$BACKEND_PID")
"$LOADGEN" wait --target "ws://$BACKEND/" --timeout 10s
