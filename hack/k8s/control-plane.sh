#!/usr/bin/env bash
# A real Kubernetes control plane (etcd + kube-apiserver, no controllers, no
# kubelet) on 127.0.0.1, for wsgate's black-box tests.
#
#   control-plane.sh start STATE_DIR            start etcd + kube-apiserver, wait for /readyz
#   control-plane.sh stop STATE_DIR             stop both and wait for them to exit
#   control-plane.sh stop-apiserver STATE_DIR   stop kube-apiserver only (etcd keeps the data)
#   control-plane.sh start-apiserver STATE_DIR  start it again, same flags and port
#   control-plane.sh token STATE_DIR NAMESPACE SERVICEACCOUNT KUBECONFIG_OUT
#                                               kubeconfig for a ServiceAccount (TokenRequest, 2h)
#
# Files in STATE_DIR: admin.kubeconfig (client cert in system:masters), env
# (shell-sourceable KUBECONFIG, APISERVER_URL, ETCD_URL, ETCD_PID,
# APISERVER_PID, KUBECTL, K8S_ASSETS), pki/, etcd-data/, etcd.log,
# kube-apiserver.log, kube-apiserver.args, ports.
#
# Env: ETCD_PORT, ETCD_PEER_PORT, APISERVER_PORT (default: free ports picked at
# random), READY_TIMEOUT (seconds, default 120), APISERVER_BIND_ADDRESS
# (default 127.0.0.1; 0.0.0.0 lets Pods of hack/k8s/node.sh reach it on
# 192.0.2.1), KUBEBUILDER_ASSETS and the variables of assets.sh.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
READY_TIMEOUT="${READY_TIMEOUT:-120}"

log() { printf 'control-plane: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# ---- processes -------------------------------------------------------------

# A pid file is trusted only while that pid still runs a command line naming
# this state dir, so a recycled pid is never signalled.
pid_alive() {
  local pid_file="$1" pid
  [[ -f "${pid_file}" ]] || return 1
  pid="$(<"${pid_file}")"
  [[ -n "${pid}" && -r "/proc/${pid}/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null | grep -qF -- "${STATE}/"
}

# stop_process NAME [GRACE_TENTHS]: SIGTERM, then SIGKILL after the grace (default 20 s).
stop_process() {
  local name="$1" grace="${2:-200}" pid_file="${STATE}/$1.pid" pid i
  if ! pid_alive "${pid_file}"; then
    rm -f "${pid_file}"
    return 0
  fi
  pid="$(<"${pid_file}")"
  log "stopping ${name} (pid ${pid})"
  kill -TERM "${pid}" 2>/dev/null || true
  for ((i = 0; i < grace; i++)); do
    pid_alive "${pid_file}" || break
    sleep 0.1
  done
  if pid_alive "${pid_file}"; then
    log "${name} still running $((grace / 10))s after SIGTERM; sending SIGKILL"
    kill -KILL "${pid}" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      pid_alive "${pid_file}" || break
      sleep 0.1
    done
  fi
  # A zombie (exited, parent not reaped yet) still has /proc/PID but no cmdline.
  pid_alive "${pid_file}" && die "${name} (pid ${pid}) did not exit"
  rm -f "${pid_file}"
}

# For a process this invocation started: right after the fork its cmdline is
# still this script's, so pid_alive would miss it; and once it exits it stays
# a zombie until this shell ends, so kill -0 would not notice.
child_alive() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != Z ]]
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
  local p taken="$*"
  while :; do
    p=$((20000 + RANDOM % 40000))
    [[ " ${taken} " == *" ${p} "* ]] && continue
    port_in_use "${p}" || { echo "${p}"; return; }
  done
}

fail_with_log() {
  local what="$1" logf="$2"
  log "error: ${what}; last lines of ${logf}:"
  tail -n 40 "${logf}" >&2 || true
  exit 1
}

# ---- pki ------------------------------------------------------------------

gen_pki() {
  local pki="${STATE}/pki"
  [[ -f "${pki}/admin.crt" && -f "${pki}/sa.key" ]] && return 0
  command -v openssl >/dev/null || die "openssl is required"
  mkdir -p "${pki}"
  log "generating certificates in ${pki}"
  (
    cd "${pki}"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=wsgate-test-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
    # 203.0.113.1 (the first address of the Service range, TEST-NET-3) and the
    # kubernetes.default names are what an in-cluster
    # client would dial; 127.0.0.1/localhost are what tests dial; 192.0.2.1 is
    # what Pods on the test node (hack/k8s/node.sh) dial.
    cat >serving.ext <<'EOF'
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,IP:192.0.2.1,IP:203.0.113.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EOF
    cat >client.ext <<'EOF'
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
EOF
    issue() { # name subject extfile
      openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
        -out "$1.crt" -days 3650 -extfile "$3" 2>/dev/null
      rm -f "$1.csr"
    }
    issue apiserver "/CN=kube-apiserver" serving.ext
    issue admin "/O=system:masters/CN=wsgate-test-admin" client.ext
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    chmod 600 ./*.key
  ) || die "certificate generation failed"
}

b64() { base64 -w0 <"$1"; }

write_admin_kubeconfig() {
  local pki="${STATE}/pki"
  cat >"${STATE}/admin.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: wsgate-test
  cluster:
    server: ${APISERVER_URL}
    certificate-authority-data: $(b64 "${pki}/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(b64 "${pki}/admin.crt")
    client-key-data: $(b64 "${pki}/admin.key")
contexts:
- name: admin@wsgate-test
  context: {cluster: wsgate-test, user: admin, namespace: default}
current-context: admin@wsgate-test
EOF
  chmod 600 "${STATE}/admin.kubeconfig"
}

# ---- state ----------------------------------------------------------------

load_ports() {
  [[ -f "${STATE}/ports" ]] || die "${STATE} holds no control plane (run start first)"
  # shellcheck disable=SC1091
  source "${STATE}/ports"
  APISERVER_URL="https://127.0.0.1:${APISERVER_PORT}"
  ETCD_URL="http://127.0.0.1:${ETCD_PORT}"
}

write_env() {
  local etcd_pid="" api_pid=""
  [[ -f "${STATE}/etcd.pid" ]] && etcd_pid="$(<"${STATE}/etcd.pid")"
  [[ -f "${STATE}/kube-apiserver.pid" ]] && api_pid="$(<"${STATE}/kube-apiserver.pid")"
  cat >"${STATE}/env" <<EOF
export KUBECONFIG='${STATE}/admin.kubeconfig'
export APISERVER_URL='${APISERVER_URL}'
export APISERVER_CA='${STATE}/pki/ca.crt'
export ETCD_URL='${ETCD_URL}'
export ETCD_PID='${etcd_pid}'
export APISERVER_PID='${api_pid}'
export KUBECTL='${KUBECTL}'
export K8S_ASSETS='${ASSETS}'
EOF
}

find_assets() {
  ASSETS="$("${HERE}/assets.sh" | tail -n1)" || die "assets.sh failed"
  [[ -x "${ASSETS}/kube-apiserver" && -x "${ASSETS}/etcd" ]] || die "no kube-apiserver/etcd in ${ASSETS}"
  if [[ -x "${ASSETS}/kubectl" ]]; then
    KUBECTL="${ASSETS}/kubectl"
  else
    KUBECTL="$(command -v kubectl)" || die "no kubectl in ${ASSETS} or on PATH"
  fi
}

# ---- etcd -----------------------------------------------------------------

start_etcd() {
  pid_alive "${STATE}/etcd.pid" && die "etcd already running for ${STATE} (pid $(<"${STATE}/etcd.pid"))"
  port_in_use "${ETCD_PORT}" && die "etcd port ${ETCD_PORT} is taken"
  mkdir -p "${STATE}/etcd-data"
  chmod 700 "${STATE}/etcd-data"
  # Plain HTTP is enough: etcd listens on loopback only, and the tests run it
  # inside their own network namespace. --unsafe-no-fsync trades crash
  # durability (irrelevant for a test cluster) for much faster writes.
  "${ASSETS}/etcd" \
    --name=wsgate-test \
    --data-dir="${STATE}/etcd-data" \
    --listen-client-urls="${ETCD_URL}" \
    --advertise-client-urls="${ETCD_URL}" \
    --listen-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-advertise-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-cluster="wsgate-test=http://127.0.0.1:${ETCD_PEER_PORT}" \
    --unsafe-no-fsync \
    --log-level=warn \
    </dev/null >>"${STATE}/etcd.log" 2>&1 &
  local pid=$! i
  echo "${pid}" >"${STATE}/etcd.pid"
  log "etcd pid ${pid} on ${ETCD_URL}"
  for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
    child_alive "${pid}" || fail_with_log "etcd exited" "${STATE}/etcd.log"
    if curl -fsS --max-time 2 "${ETCD_URL}/health" 2>/dev/null | grep -q '"health":"true"'; then
      return 0
    fi
    sleep 0.1
  done
  fail_with_log "etcd not healthy after ${READY_TIMEOUT}s" "${STATE}/etcd.log"
}

# ---- kube-apiserver -------------------------------------------------------

write_apiserver_args() {
  local pki="${STATE}/pki"
  # One flag a line, so start-apiserver replays exactly the same command.
  cat >"${STATE}/kube-apiserver.args" <<EOF
--etcd-servers=${ETCD_URL}
--bind-address=${APISERVER_BIND_ADDRESS:-127.0.0.1}
--advertise-address=127.0.0.1
--secure-port=${APISERVER_PORT}
--tls-cert-file=${pki}/apiserver.crt
--tls-private-key-file=${pki}/apiserver.key
--client-ca-file=${pki}/ca.crt
--service-account-issuer=https://kubernetes.default.svc.cluster.local
--service-account-key-file=${pki}/sa.pub
--service-account-signing-key-file=${pki}/sa.key
--authorization-mode=RBAC
--service-cluster-ip-range=203.0.113.0/24
--endpoint-reconciler-type=none
--enable-priority-and-fairness=false
--allow-privileged=true
--kubelet-preferred-address-types=InternalIP
--profiling=false
--v=1
EOF
}

start_apiserver() {
  pid_alive "${STATE}/kube-apiserver.pid" && die "kube-apiserver already running for ${STATE} (pid $(<"${STATE}/kube-apiserver.pid"))"
  local i
  # After stop-apiserver the port can take a moment to be released.
  for ((i = 0; i < 50; i++)); do port_in_use "${APISERVER_PORT}" || break; sleep 0.1; done
  port_in_use "${APISERVER_PORT}" && die "apiserver port ${APISERVER_PORT} is taken"
  local -a args
  mapfile -t args <"${STATE}/kube-apiserver.args"
  echo "---- $(date -u +%FT%TZ) start" >>"${STATE}/kube-apiserver.log"
  "${ASSETS}/kube-apiserver" "${args[@]}" </dev/null >>"${STATE}/kube-apiserver.log" 2>&1 &
  local pid=$! pki="${STATE}/pki" t0=${SECONDS} out=""
  echo "${pid}" >"${STATE}/kube-apiserver.pid"
  log "kube-apiserver pid ${pid} on ${APISERVER_URL}"
  while ((SECONDS - t0 < READY_TIMEOUT)); do
    child_alive "${pid}" || fail_with_log "kube-apiserver exited" "${STATE}/kube-apiserver.log"
    out="$(curl -sS --max-time 5 --cacert "${pki}/ca.crt" --cert "${pki}/admin.crt" --key "${pki}/admin.key" \
      "${APISERVER_URL}/readyz" 2>&1)" && [[ "${out}" == ok ]] && {
      log "kube-apiserver ready after $((SECONDS - t0))s"
      return 0
    }
    sleep 0.2
  done
  log "last /readyz answer: ${out}"
  fail_with_log "kube-apiserver not ready after ${READY_TIMEOUT}s" "${STATE}/kube-apiserver.log"
}

# ---- commands -------------------------------------------------------------

cmd_start() {
  command -v curl >/dev/null || die "curl is required"
  find_assets
  mkdir -p "${STATE}"
  if [[ ! -f "${STATE}/ports" ]]; then
    local ep pp ap
    ep="${ETCD_PORT:-$(free_port)}"
    pp="${ETCD_PEER_PORT:-$(free_port "${ep}")}"
    ap="${APISERVER_PORT:-$(free_port "${ep}" "${pp}")}"
    printf 'ETCD_PORT=%s\nETCD_PEER_PORT=%s\nAPISERVER_PORT=%s\n' "${ep}" "${pp}" "${ap}" >"${STATE}/ports"
  fi
  load_ports
  pid_alive "${STATE}/etcd.pid" && die "etcd already running for ${STATE} (pid $(<"${STATE}/etcd.pid"))"
  pid_alive "${STATE}/kube-apiserver.pid" && die "kube-apiserver already running for ${STATE}"
  local p
  for p in "${ETCD_PORT}" "${ETCD_PEER_PORT}" "${APISERVER_PORT}"; do
    port_in_use "${p}" && die "port ${p} on 127.0.0.1 is taken (ports kept in ${STATE}/ports)"
  done
  gen_pki
  write_admin_kubeconfig
  write_apiserver_args
  # A half-started control plane is of no use to anyone: take it down.
  trap 'log "start failed; stopping what was started"; cmd_stop' EXIT
  start_etcd
  start_apiserver
  trap - EXIT
  write_env
  log "ready: source ${STATE}/env"
}

cmd_stop() {
  stop_process kube-apiserver
  stop_process etcd
}

cmd_stop_apiserver() {
  load_ports
  # kube-apiserver holds open watches for its whole shutdown grace; an outage test
  # wants the API gone now, so SIGKILL follows after 2 s (like a crash).
  stop_process kube-apiserver 20
  if [[ -f "${STATE}/env" ]]; then
    # shellcheck disable=SC1091
    source "${STATE}/env"
    ASSETS="${K8S_ASSETS}"
    write_env
  fi
}

cmd_start_apiserver() {
  load_ports
  [[ -f "${STATE}/kube-apiserver.args" ]] || die "${STATE} has no kube-apiserver.args (run start first)"
  pid_alive "${STATE}/etcd.pid" || die "etcd is not running for ${STATE}"
  find_assets
  start_apiserver
  write_env
}

cmd_token() {
  local ns="$1" sa="$2" out="$3" token
  load_ports
  find_assets
  local k=("${KUBECTL}" --kubeconfig "${STATE}/admin.kubeconfig")
  "${k[@]}" get namespace "${ns}" >/dev/null 2>&1 || "${k[@]}" create namespace "${ns}" >/dev/null
  "${k[@]}" -n "${ns}" get serviceaccount "${sa}" >/dev/null 2>&1 ||
    "${k[@]}" -n "${ns}" create serviceaccount "${sa}" >/dev/null
  token="$("${k[@]}" -n "${ns}" create token "${sa}" --duration=2h)" || die "TokenRequest for ${ns}/${sa} failed"
  mkdir -p "$(dirname "${out}")"
  (
    umask 077
    cat >"${out}" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: wsgate-test
  cluster:
    server: ${APISERVER_URL}
    certificate-authority-data: $(b64 "${STATE}/pki/ca.crt")
users:
- name: ${ns}-${sa}
  user:
    token: ${token}
contexts:
- name: ${sa}@wsgate-test
  context: {cluster: wsgate-test, user: ${ns}-${sa}, namespace: ${ns}}
current-context: ${sa}@wsgate-test
EOF
  )
  log "wrote ${out} for system:serviceaccount:${ns}:${sa}"
}

[[ $# -ge 2 ]] || usage
CMD="$1"
if [[ "${CMD}" == start ]]; then mkdir -p "$2"; fi
[[ -d "$2" ]] || die "no state dir $2"
STATE="$(cd "$2" && pwd)"
case "${CMD}" in
  start) [[ $# -eq 2 ]] || usage; cmd_start ;;
  stop) [[ $# -eq 2 ]] || usage; cmd_stop ;;
  stop-apiserver) [[ $# -eq 2 ]] || usage; cmd_stop_apiserver ;;
  start-apiserver) [[ $# -eq 2 ]] || usage; cmd_start_apiserver ;;
  token) [[ $# -eq 5 ]] || usage; cmd_token "$3" "$4" "$5" ;;
  *) usage ;;
esac
