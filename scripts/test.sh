#!/usr/bin/env bash
# The whole test suite (`make test`, and CI through .ci/run). Installs what the
# tests need (idempotent, cached outside the clone), then lints and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/wsgate/target}
export WSGATE_CACHE=${WSGATE_CACHE:-/var/cache/wsgate}
ulimit -n 20000 2>/dev/null || true

step() { printf '\n== %s (%(%H:%M:%S)T)\n' "$*" -1; }

# Jobs in the background, each logging to a file: `started NAME COMMAND` starts
# one in its own process group, `finished NAME` waits for it and prints its log.
declare -A job_pid job_log
started() {
  job_log[$1]="$(mktemp)"
  setsid bash -c "$2" >"${job_log[$1]}" 2>&1 &
  job_pid[$1]=$!
}
finished() {
  local ok=0
  wait "${job_pid[$1]}" || ok=$?
  sed 's/^/  /' "${job_log[$1]}"
  rm -f "${job_log[$1]}"
  unset 'job_pid[$1]'
  [[ ${ok} == 0 ]] || { echo "$1 failed (log above)" >&2; exit 1; }
}
trap 'for p in "${job_pid[@]}"; do kill -- -"${p}" 2>/dev/null || true; done' EXIT

# On a cold machine the Go builds and the release build (for the image that
# `make e2e-node` runs) are the longest steps; much of them is fetching modules
# and crates, or a link or LTO on one core, while the other core would idle. So
# they start first and run beside the peers' downloads, the lint and the test
# build; the tests themselves start only once both are done, on a quiet machine.
# Warm, each finds its outputs cached and ends in seconds.
step "in the background: kube-apiserver, etcd, the node's binaries and kube-proxy, helm, Prometheus, the Gateway API suite with its images and Jaeger (built from the Go module proxy once, then cached), then the release build"
started "the Go builds" 'WSGATE_K8S_NODE=1 WSGATE_K8S_KUBE_PROXY=1 hack/k8s/assets.sh >/dev/null && hack/k8s/helm.sh >/dev/null && hack/k8s/prometheus.sh >/dev/null && hack/k8s/conformance.sh >/dev/null && hack/jaeger.sh >/dev/null'

step "installing test peers and tools"
# Jaeger is one of the Go builds above (9.5 min cold in the setup, 2026-12-07).
WSGATE_SETUP_NO_JAEGER=1 bash tests/setup.sh
# After the setup, which installs a C compiler and OpenSSL's headers if missing.
started "the release build" 'cargo build --release --locked --bin wsgate --example echo'

step "format and lint"
cargo fmt --all -- --check
python3 scripts/check-docs.py
cargo clippy --locked --all-targets -- -D warnings
"${WSGATE_CACHE}/tools/bin/cargo-deny" --locked check licenses bans sources

step "building the tests"
cargo test --locked --no-run

step "waiting for the Go builds"
finished "the Go builds"

step "waiting for the release build"
finished "the release build"

step "unit and black-box tests"
cargo test --locked --no-fail-fast

step "fuzzing the frame reader for 60 s (a crash fails the run)"
fuzz/run.sh -max_total_time=60

step "Helm chart: lint and render, sidecar mode, dashboard/alert metrics"
bash tests/chart/lint.sh
bash tests/chart/sidecar.sh
bash tests/chart/metrics-used.sh

step "Helm chart: install, upgrade, uninstall into a real kube-apiserver"
bash tests/chart/install.sh

step "end to end on a real node: the image, helm install, real pods and clients, Prometheus"
bash tests/e2e-node/run.sh

step "the Gateway API conformance suite (v1.6.3, GATEWAY-HTTP) on the real node"
REPORT="$(mktemp --suffix=.yaml)" bash tests/conformance/run.sh
