#!/usr/bin/env bash
# Starts the echo backend and wsgate with examples/quickstart.yaml (see `make demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-/var/cache/wsgate/target}/release
"$target/examples/echo" 127.0.0.1:9001 &
echo_pid=$!
trap 'kill $echo_pid 2>/dev/null || true' EXIT
sleep 0.5
kill -0 "$echo_pid" 2>/dev/null || { echo "demo: the echo backend could not start (is 127.0.0.1:9001 in use?)" >&2; exit 1; }
cat <<'MSG'

wsgate is starting on ws://127.0.0.1:8080 (admin on http://127.0.0.1:9090).
Try it from another terminal:

    npx wscat -c ws://127.0.0.1:8080/chat          # or: websocat ws://127.0.0.1:8080/chat
    curl -s http://127.0.0.1:9090/metrics | grep wsgate_
    curl -s http://127.0.0.1:9090/connections

Edit examples/quickstart.yaml while it runs: the change is applied without
dropping open tunnels. Ctrl-C drains and stops.

MSG
RUST_LOG=${RUST_LOG:-info} "$target/wsgate" serve --config examples/quickstart.yaml \
  --listen 127.0.0.1:8080 --admin-listen 127.0.0.1:9090 --drain-timeout 2s
