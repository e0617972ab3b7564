# wsgate's two commands: `make demo` shows it working, `make test` runs every test.
# Builds are cached outside the clone (CARGO_TARGET_DIR) so repeated runs are fast.

export CARGO_TARGET_DIR ?= /var/cache/wsgate/target
export WSGATE_CACHE ?= /var/cache/wsgate
WSGATE := $(CARGO_TARGET_DIR)/release/wsgate

.PHONY: demo test unit e2e-k8s e2e-node conformance image lint bench bench-controller bench-profile crd

## demo: build wsgate, start an echo backend on :9001 and wsgate on :8080 with
## examples/quickstart.yaml, and print how to try it (Ctrl-C stops both).
demo:
	cargo build --release --locked --bin wsgate --example echo
	@bash scripts/demo.sh

## test: everything CI runs — peers and tools installed, lint, unit and black-box
## tests, then the end-to-end tests against a real kube-apiserver.
test:
	bash scripts/test.sh

## image: the container images as OCI archives (hack/image/build.sh): wsgate
## (stripped, symbols in wsgate.debug), the echo backend and the pause image.
image:
	bash hack/image/build.sh

## e2e-node: the image on a real node (containerd + kubelet) in the test control
## plane: helm install, real pods and clients, rollouts, Prometheus (needs root).
e2e-node:
	bash tests/e2e-node/run.sh

## conformance: the official Gateway API conformance suite (v1.6.3, GATEWAY-HTTP)
## against wsgate installed by its chart on the real node, with kube-proxy; writes
## the ConformanceReport under conformance/reports/ (needs root).
conformance:
	bash tests/conformance/run.sh

## bench: memory per idle tunnel, CPU per relayed message, latency and handshake
## rate for wsgate, NGINX and HAProxy, measured side by side, then a reconnect
## storm of 8,000 clients (half over TLS) and TLS 1.3 handshakes, full and
## resumed, against each (not a test).
bench:
	bash bench/run.sh
	bash bench/saturated.sh | tee bench/results/saturated.txt
	bash bench/tracing.sh | tee bench/results/tracing.txt
	bash bench/storm.sh | tee bench/results/storm.txt
	bash bench/tls.sh | tee bench/results/tls.txt

## bench-controller: the controller with 2,000 WebSocketRoutes in a real kube-apiserver
bench-controller:
	bash bench/controller-scale.sh

## bench-profile: where a handshake's CPU goes in wsgate (perf during the
## benchmark's handshake load; bench/profile-handshakes.sh --http2 for RFC 8441)
bench-profile:
	bash bench/profile-handshakes.sh

crd:
	cargo run --quiet --locked -- crd > crds/websocketroute.yaml
	cargo run --quiet --locked -- crd --kind WebSocketPolicy > crds/websocketpolicy.yaml
	cp crds/websocketroute.yaml crds/websocketpolicy.yaml charts/wsgate/crds/
