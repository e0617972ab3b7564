# Set-up shared by bench/profile-handshakes.sh, saturated.sh, storm.sh and tls.sh
# (sourced; HERE and REPO set by the caller): the Go load client and the release
# binary, a work directory whose processes are killed on exit (KEEP=1 keeps the
# directory), a free-port helper, the echo backend on BACKEND (BACKEND_PID), and
# the helpers that start a proxy with a TLS listener (tls_cert, start_tls_proxy).
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

# tls_cert: one ECDSA P-256 certificate for every proxy, valid for localhost:
# $WORK/cert.pem and key.pem, and haproxy.pem (HAProxy wants both in one file).
tls_cert() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
  cat "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/haproxy.pem"
}

# fill_tls TEMPLATE OUT LISTEN TLS_LISTEN PREFIX: a config of bench/configs (one
# worker / thread, backlog 4096) with a TLS 1.3 listener on TLS_LISTEN beside the
# plain one: tls_cert's certificate, groups X25519, P-256, P-384 in that order,
# each proxy's default session resumption (tickets) left as it is.
fill_tls() {
  sed -e "s#@LISTEN@#$3#g" -e "s#@BACKEND@#$BACKEND#g" -e "s#@PREFIX@#$5#g" "$1" >"$2"
  case "$1" in
    *.yaml) printf '  tls: {certFile: %s, keyFile: %s}\n' "$WORK/cert.pem" "$WORK/key.pem" >>"$2" ;;
    *nginx.conf) sed -i "s#^\( *\)listen $3 backlog=4096;#&\n\1listen $4 ssl backlog=4096;\n\1ssl_certificate $WORK/cert.pem;\n\1ssl_certificate_key $WORK/key.pem;\n\1ssl_protocols TLSv1.3;\n\1ssl_ecdh_curve X25519:prime256v1:secp384r1;#" "$2" ;;
    *.cfg) sed -i "s#^\( *\)bind $3\$#&\n\1bind $4 ssl crt $WORK/haproxy.pem ssl-min-ver TLSv1.3 curves X25519:P-256:P-384#" "$2" ;;
  esac
  grep -qE 'cert.pem|haproxy.pem' "$2" || { say "no TLS listener in $2"; exit 1; }
}

# start_tls_proxy NAME DIR LISTEN TLS_LISTEN: start wsgate, nginx, haproxy-http or
# haproxy-tcp with plain and TLS listeners, its config and logs in DIR; sets pid
# and waits until it relays.
start_tls_proxy() {
  local name=$1 dir=$2
  mkdir -p "$dir/tmp"
  case "$name" in
    wsgate)
      fill_tls "$HERE/configs/wsgate.yaml" "$dir/wsgate.yaml" "" "$4" "$dir"
      RUST_LOG=warn setsid "$WSGATE_BIN" serve --config "$dir/wsgate.yaml" --listen "$3" \
        --tls-listen "$4" --admin-listen "127.0.0.1:$(port)" >"$dir/out.log" 2>&1 </dev/null & ;;
    nginx)
      fill_tls "$HERE/configs/nginx.conf" "$dir/nginx.conf" "$3" "$4" "$dir"
      setsid nginx -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;' >"$dir/out.log" 2>&1 </dev/null & ;;
    haproxy-http|haproxy-tcp)
      fill_tls "$HERE/configs/$name.cfg" "$dir/haproxy.cfg" "$3" "$4" "$dir"
      setsid haproxy -db -f "$dir/haproxy.cfg" >"$dir/out.log" 2>&1 </dev/null & ;;
    *) echo "unknown proxy $name" >&2; exit 2 ;;
  esac
  pid=$!
  PIDS+=("$pid")
  "$LOADGEN" wait --target "ws://$3/" --timeout 20s
}

# proxy_versions: one line naming the binaries measured.
proxy_versions() {
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores; wsgate $WSGATE_BIN (sha256 $(sha256sum "$WSGATE_BIN" | cut -c1-12)); $(nginx -v 2>&1 | sed 's/.*: //'), $(haproxy -v | head -1 | cut -d' ' -f1-3), $(openssl version | cut -d' ' -f1-2)"
}
