#!/usr/bin/env bash
# Installs the real peers that wsgate's black-box tests (tests/*.rs) talk to:
#   - Node: ws, wscat, socket.io(-client), sockjs(-client), from tests/peers/package-lock.json
#   - Python: websockets, from tests/peers/requirements.txt, in a virtualenv
#   - websocat, built with cargo
# Everything goes under $WSGATE_CACHE (default /var/cache/wsgate), outside the clone, so
# a fresh clone reuses it. Idempotent: each part is redone only when its pinned inputs
# change. tests/common/mod.rs looks in the same places.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${WSGATE_CACHE:-/var/cache/wsgate}
websocat_version=1.14.1
cargo_deny_version=0.20.2
mkdir -p "$cache"

log() { printf 'setup: %s\n' "$*" >&2; }

apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then
    apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Toolchains: present on the project's machines; installed from Debian when not.
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
command -v python3 >/dev/null || apt_install python3
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
command -v cc >/dev/null || apt_install build-essential
# websocat's TLS support links OpenSSL.
if ! pkg-config --exists openssl 2>/dev/null; then apt_install pkg-config libssl-dev; fi

# Chart tests (tests/chart/*.sh): jq, PyYAML for chartcheck.py, curl, openssl, iproute2
# and util-linux (unshare) for the network namespace of the control-plane harness.
command -v jq >/dev/null || apt_install jq
command -v curl >/dev/null || apt_install curl
command -v openssl >/dev/null || apt_install openssl
command -v ip >/dev/null || apt_install iproute2
command -v unshare >/dev/null && command -v flock >/dev/null || apt_install util-linux
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet pyyaml || apt_install python3-yaml

# Auth tests (tests/auth.rs): headless Chromium opens WebSockets with a token in the
# subprotocol list and in a cookie, as a browser page would.
command -v chromium >/dev/null || apt_install chromium
# The real node of tests/e2e-node (hack/k8s/node.sh): containerd, runc and the CNI
# plugins from Debian; the pause image is built with gcc -static (libc6-dev) and
# images are checked with readelf (binutils).
command -v containerd >/dev/null && command -v runc >/dev/null && [ -x /usr/lib/cni/bridge ] ||
  apt_install containerd runc containernetworking-plugins
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || apt_install libc6-dev
command -v readelf >/dev/null && command -v objcopy >/dev/null || apt_install binutils

# Edge peers (tests/client_address.rs): HAProxy 2.6 and NGINX with its stream module
# send PROXY protocol v1/v2 and X-Forwarded-For in front of wsgate. Debian starts
# services on install; the tests run their own instances, so stop the packaged ones.
if ! command -v haproxy >/dev/null || ! command -v nginx >/dev/null ||
  [ ! -f /usr/lib/nginx/modules/ngx_stream_module.so ]; then
  apt_install haproxy nginx-light libnginx-mod-stream
  (service haproxy stop; service nginx stop) >/dev/null 2>&1 || true
fi

# Fleet-wide limits (tests/fleet_limits.rs): the tests start their own redis-server
# instances (single and a three-node cluster); stop the packaged one.
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  apt_install redis-server redis-tools
  (service redis-server stop) >/dev/null 2>&1 || true
fi

# Node peers: `npm ci` into the cache when the lock file changed.
node_dir=$cache/peers-node
if ! cmp -s "$here/peers/package-lock.json" "$node_dir/package-lock.json" ||
  [ ! -d "$node_dir/node_modules" ]; then
  log "installing Node peers into $node_dir"
  mkdir -p "$node_dir"
  cp "$here/peers/package.json" "$here/peers/package-lock.json" "$node_dir/"
  (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

# Python peers: a virtualenv, reinstalled when requirements.txt changed.
venv=$cache/venv
if [ ! -x "$venv/bin/python" ]; then
  log "creating virtualenv $venv"
  python3 -m venv "$venv"
fi
if ! cmp -s "$here/peers/requirements.txt" "$venv/wsgate-requirements.txt"; then
  log "installing Python peers into $venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/peers/requirements.txt"
  cp "$here/peers/requirements.txt" "$venv/wsgate-requirements.txt"
fi

# websocat: cargo install skips the build when this version is already there. Its own
# target directory keeps it off the project's shared build cache and lock.
tools=$cache/tools
if ! "$tools/bin/websocat" --version 2>/dev/null | grep -qF "$websocat_version"; then
  log "building websocat $websocat_version into $tools (about a minute)"
  CARGO_TARGET_DIR=$cache/tools-target cargo install --quiet --locked \
    --root "$tools" --version "$websocat_version" websocat
  rm -rf "$cache/tools-target"
fi

# cargo-deny: licenses, bans and sources of every dependency (scripts/test.sh).
if ! "$tools/bin/cargo-deny" --version 2>/dev/null | grep -qF "$cargo_deny_version"; then
  log "building cargo-deny $cargo_deny_version into $tools (a few minutes, once)"
  CARGO_TARGET_DIR=$cache/tools-target cargo install --quiet --locked \
    --root "$tools" --version "$cargo_deny_version" cargo-deny
  rm -rf "$cache/tools-target"
fi

# The Gateway API's CRDs (standard channel), which tests/k8s installs into its API
# server: fetched here, outside the network namespace those tests run in.
gateway_api_crds=$(bash "$here/../hack/k8s/conformance.sh" --crds | tail -n1)

# Jaeger v2 (tests/tracing.rs, bench/tracing.sh): the OTLP receiver traces are
# asserted from, built once from the Go module proxy (several minutes cold).
# scripts/test.sh builds it in the background with the other Go builds instead
# (WSGATE_SETUP_NO_JAEGER=1), so the lint and the test build need not wait for it.
if [[ "${WSGATE_SETUP_NO_JAEGER:-}" == 1 ]]; then
  jaeger_dir="(built in the background by scripts/test.sh)"
else
  jaeger_dir=$("$here/../hack/jaeger.sh" | tail -n 1)
fi

cat >&2 <<INFO
setup: peers ready
  gateway API   $gateway_api_crds/crds/standard
  node modules  $node_dir/node_modules   (NODE_PATH for tests/peers/*.js)
  wscat         $node_dir/node_modules/.bin/wscat
  python        $venv/bin/python         ($("$venv/bin/python" -c 'import websockets; print("websockets", websockets.__version__)'))
  websocat      $tools/bin/websocat      ($("$tools/bin/websocat" --version))
  cargo-deny    $tools/bin/cargo-deny    ($("$tools/bin/cargo-deny" --version))
  jaeger        $jaeger_dir/jaeger
INFO
