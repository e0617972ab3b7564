#!/usr/bin/env bash
# The whole test suite (`make test`, and CI through .ci/run). Installs what the
# tests need (idempotent, cached outside the clone), then lints and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/wsgate/target}
export WSGATE_CACHE=${WSGATE_CACHE:-/var/cache/wsgate}
ulimit -n 20000 2>/dev/null || true

step() { printf '\n== %s (%(%H:%M:%S)T)\n' "$*" -1; }

step "installing test peers and tools"
bash tests/setup.sh

step "kube-apiserver, etcd, the node's binaries, helm and Prometheus (built from the Go module proxy once, then cached)"
WSGATE_K8S_NODE=1 hack/k8s/assets.sh >/dev/null
hack/k8s/helm.sh >/dev/null
hack/k8s/prometheus.sh >/dev/null

step "format and lint"
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings

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
