#!/usr/bin/env bash
# A real Kubernetes node next to control-plane.sh's apiserver: containerd + runc,
# CNI (bridge, host-local, loopback; Debian's plugins), a locally built pause
# image, kubelet, kube-scheduler and kube-controller-manager. Pods get
# 198.51.100.0/24 (TEST-NET-2) on a bridge inside the test's network namespace.
#
#   node.sh start STATE_DIR [IMAGE.oci.tar...]   start the node, import the images, wait for Ready
#   node.sh stop STATE_DIR                       stop it: pods, shims, daemons; restore host sysctls
#
# STATE_DIR is a control-plane.sh state dir whose apiserver was started with
# APISERVER_BIND_ADDRESS=0.0.0.0 (Pods reach it on 192.0.2.1). Run as root inside
# `WSGATE_NETNS_MOUNT=1 hack/k8s/in-netns.sh` (a private network and mount
# namespace): containerd hardcodes /run/containerd and kubelet
# /var/lib/kubelet/device-plugins, so tmpfs mounts cover both there.
# Images must be used with imagePullPolicy: Never (there is no registry).
# Needs: containerd (1.6+), runc, the CNI plugins in /usr/lib/cni (Debian:
# containerd runc containernetworking-plugins) and assets.sh's node binaries
# (WSGATE_K8S_NODE=1). Files: STATE_DIR/node/.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NODE_NAME="${WSGATE_NODE_NAME:-wsgate-node}"
NODE_IP=192.0.2.1
POD_SUBNET=198.51.100.0/24
POD_GATEWAY=198.51.100.1
CNI_BIN="${WSGATE_CNI_BIN:-/usr/lib/cni}"
SANDBOX_IMAGE=localhost/pause:wsgate
# kubelet sets these global (not per-namespace) sysctls at every start; stop puts them back.
HOST_SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops)

log() { printf 'node: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

pid_alive() { # NAME: running, and its command line names this state dir
  local f="${N}/$1.pid" pid
  [[ -f "${f}" ]] || return 1
  pid="$(<"${f}")"
  tr '\0' ' ' 2>/dev/null <"/proc/${pid}/cmdline" | grep -cF -- "${STATE}/" >/dev/null
}

stop_process() { # NAME [GRACE_TENTHS]
  local name="$1" grace="${2:-100}" pid i
  pid_alive "${name}" || { rm -f "${N}/${name}.pid"; return 0; }
  pid="$(<"${N}/${name}.pid")"
  kill -TERM "${pid}" 2>/dev/null || true
  for ((i = 0; i < grace; i++)); do pid_alive "${name}" || break; sleep 0.1; done
  if pid_alive "${name}"; then
    log "${name} (pid ${pid}) ignored SIGTERM; SIGKILL"
    kill -KILL "${pid}" 2>/dev/null || true
  fi
  rm -f "${N}/${name}.pid"
}

spawn() { # NAME CMD... : background, logs to NAME.log, pid in NAME.pid
  local name="$1"; shift
  "$@" </dev/null >>"${N}/${name}.log" 2>&1 &
  echo $! >"${N}/${name}.pid"
  log "${name} pid $!"
}

wait_for() { # SECONDS WHAT CMD...
  local t="$1" what="$2" i; shift 2
  for ((i = 0; i < t * 5; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "${what} not ready after ${t}s"
}

# ---- files ----------------------------------------------------------------

write_containerd_config() {
  cat >"${N}/containerd.toml" <<EOF
version = 2
root = "${N}/containerd/root"
state = "${N}/containerd/state"
[grpc]
  address = "${SOCK}"
[ttrpc]
  address = "${SOCK}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${SANDBOX_IMAGE}"
  # CRI gives the pause container oom_score_adj -998; lowering it needs
  # CAP_SYS_RESOURCE, which CI's root lacks: without this every sandbox fails
  # ("runc create failed: ... can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  # Pod netns pins under the state dir, not the host's /var/run/netns.
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # cgroupfs, as kubelet's cgroupDriver (containerd 1.6 cannot tell kubelet).
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "${CNI_BIN}"
    conf_dir = "${N}/cni/net.d"
    max_conf_num = 1
EOF
}

write_cni_config() {
  mkdir -p "${N}/cni/net.d" "${N}/cni/ipam"
  # No ipMasq and no kube-proxy: nothing here leaves the namespace, so no iptables.
  cat >"${N}/cni/net.d/10-wsgate.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "wsgate", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "isDefaultGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "${N}/cni/ipam",
            "ranges": [[{"subnet": "${POD_SUBNET}", "gateway": "${POD_GATEWAY}"}]]}},
  {"type": "loopback"}]}
EOF
}

write_kubelet_config() {
  mkdir -p "${N}/kubelet"
  echo "nameserver 192.0.2.53" >"${N}/kubelet/resolv.conf"
  cat >"${N}/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This VM (and many CI hosts) mounts cgroup v1; kubelet 1.35 refuses to start
# on it unless told otherwise.
failCgroupV1: false
containerRuntimeEndpoint: unix://${SOCK}
cgroupDriver: cgroupfs
address: ${NODE_IP}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
# The apiserver has no kubelet client certificate: kubectl logs/exec need these.
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
# Pods must not get the host's resolver (unreachable from here).
resolvConf: ${N}/kubelet/resolv.conf
podLogsDir: ${N}/kubelet/pod-logs
volumePluginDir: ${N}/kubelet/volume-plugins
# The defaults (1e6 open files, oom_score_adj -999) need CAP_SYS_RESOURCE.
maxOpenFiles: 20000
oomScoreAdj: 0
# A fuller CI disk must neither evict the test pods nor let image GC delete the
# imported images, which cannot be pulled again.
evictionHard: {memory.available: 100Mi, nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# Shorter node status and sync periods: pod status shows up sooner.
nodeStatusUpdateFrequency: 4s
syncFrequency: 10s
EOF
}

# ---- start / stop ---------------------------------------------------------

cmd_start() {
  [[ ${EUID} -eq 0 ]] || die "a node needs root"
  [[ "/proc/self/ns/mnt" -ef /proc/1/ns/mnt ]] && die "run inside a private mount namespace (WSGATE_NETNS_MOUNT=1 hack/k8s/in-netns.sh)"
  [[ "$(ip -o addr show dev lo)" == *" ${NODE_IP}/"* ]] || die "${NODE_IP} is not on lo (run inside hack/k8s/in-netns.sh)"
  local c
  for c in containerd runc; do command -v "${c}" >/dev/null || die "${c} is missing (apt-get install containerd runc containernetworking-plugins)"; done
  [[ -x "${CNI_BIN}/bridge" && -x "${CNI_BIN}/host-local" && -x "${CNI_BIN}/loopback" ]] || die "CNI plugins missing in ${CNI_BIN}"
  # shellcheck disable=SC1091
  source "${STATE}/env"
  ASSETS="$(WSGATE_K8S_NODE=1 "${HERE}/assets.sh" | tail -n1)"
  for c in kubelet kube-scheduler kube-controller-manager; do [[ -x "${ASSETS}/${c}" ]] || die "no ${c} in ${ASSETS}"; done
  mkdir -p "${N}"
  trap 'log "start failed; stopping what was started"; cmd_stop' EXIT

  # Host side effect undone by stop (first start only, so a restart keeps the originals).
  if [[ ! -f "${N}/host-sysctls" ]]; then
    for c in "${HOST_SYSCTLS[@]}"; do echo "${c}=$(sysctl -n "${c}")"; done >"${N}/host-sysctls"
  fi

  # Paths that containerd 1.6 and kubelet hardcode: tmpfs in this mount namespace only.
  mkdir -p /run/containerd /var/lib/kubelet/device-plugins
  mountpoint -q /run/containerd || mount -t tmpfs -o mode=0711 tmpfs /run/containerd
  mountpoint -q /var/lib/kubelet/device-plugins || mount -t tmpfs tmpfs /var/lib/kubelet/device-plugins

  write_containerd_config
  write_cni_config
  spawn containerd containerd --config "${N}/containerd.toml"
  wait_for 30 containerd ctr -a "${SOCK}" version
  local img
  for img in "${IMAGES[@]}"; do
    ctr -a "${SOCK}" -n k8s.io images import "${img}" >/dev/null || die "import of ${img} failed"
  done
  [[ "$(ctr -a "${SOCK}" -n k8s.io images ls -q)" == *"${SANDBOX_IMAGE}"* ]] || die "no ${SANDBOX_IMAGE} imported (hack/image/build.sh makes pause.oci.tar)"

  write_kubelet_config
  local kc="${STATE}/admin.kubeconfig" pki="${STATE}/pki"
  # --node-ip: the namespace has no default route, so kubelet cannot guess it.
  # --root-dir/--cert-dir: keep kubelet's files out of /var/lib/kubelet.
  spawn kubelet "${ASSETS}/kubelet" --config="${N}/kubelet.yaml" --kubeconfig="${kc}" \
    --root-dir="${N}/kubelet/root" --cert-dir="${N}/kubelet/pki" \
    --hostname-override="${NODE_NAME}" --node-ip="${NODE_IP}" --v=1
  # One scheduler and one controller-manager: no leader election; no serving port.
  spawn kube-scheduler "${ASSETS}/kube-scheduler" --kubeconfig="${kc}" \
    --authentication-kubeconfig="${kc}" --authorization-kubeconfig="${kc}" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 --v=1
  # --root-ca-file: the kube-root-ca.crt ConfigMap Pods' token volumes mount;
  # --flex-volume-plugin-dir: otherwise it creates /usr/libexec/kubernetes.
  spawn kube-controller-manager "${ASSETS}/kube-controller-manager" --kubeconfig="${kc}" \
    --authentication-kubeconfig="${kc}" --authorization-kubeconfig="${kc}" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 \
    --root-ca-file="${pki}/ca.crt" --service-account-private-key-file="${pki}/sa.key" \
    --cluster-signing-cert-file="${pki}/ca.crt" --cluster-signing-key-file="${pki}/ca.key" \
    --flex-volume-plugin-dir="${N}/cm-flexvolume" --v=1

  local k=("${KUBECTL}" --kubeconfig "${kc}")
  wait_for 60 "node ${NODE_NAME}" "${k[@]}" wait --for=condition=Ready "node/${NODE_NAME}" --timeout=1s
  wait_for 60 "default ServiceAccount" "${k[@]}" -n default get serviceaccount default
  trap - EXIT
  log "node ${NODE_NAME} Ready (pods on ${POD_SUBNET})"
}

cmd_stop() {
  local f pid
  [[ -d "${N}" ]] || return 0
  # Best effort to the end: one failed step must not leave the host's sysctls changed.
  set +e
  stop_process kube-controller-manager
  stop_process kube-scheduler
  stop_process kubelet
  # Pod processes live in their own network namespaces (in-netns.sh's scan
  # misses them) but always in the kubepods cgroups.
  # (A cgroup may vanish between find and read: each step may fail.)
  while read -r f; do
    { while read -r pid; do kill -KILL "${pid}" 2>/dev/null || true; done <"${f}"; } 2>/dev/null || true
  done < <(find /sys/fs/cgroup/*/kubepods -name cgroup.procs 2>/dev/null)
  # The shims of this containerd (their command line names its socket).
  for f in /proc/[0-9]*/cmdline; do
    tr '\0' ' ' 2>/dev/null <"${f}" | grep -cF -- "-address ${SOCK} " >/dev/null || continue
    pid="${f#/proc/}"; kill -KILL "${pid%/cmdline}" 2>/dev/null || true
  done
  stop_process containerd
  # kubepods cgroups outlive their processes for a moment.
  local i
  for ((i = 0; i < 20; i++)); do
    find /sys/fs/cgroup/*/kubepods -depth -type d -exec rmdir {} + 2>/dev/null || true
    compgen -G '/sys/fs/cgroup/*/kubepods' >/dev/null || break
    sleep 0.25
  done
  if [[ -f "${N}/host-sysctls" ]]; then
    while read -r kv; do sysctl -qw "${kv}" >/dev/null || log "could not restore ${kv}"; done <"${N}/host-sysctls"
    log "restored $(tr '\n' ' ' <"${N}/host-sysctls")"
    rm -f "${N}/host-sysctls"
  fi
  compgen -G '/sys/fs/cgroup/*/kubepods' >/dev/null && log "warning: kubepods cgroups left: $(find /sys/fs/cgroup/*/kubepods -name cgroup.procs -exec cat {} + 2>/dev/null | tr '\n' ' ')"
  # Pod mounts (shm, netns pins, projected volumes) under the state dir, deepest
  # first, so the dir can be removed while this mount namespace still lives.
  local m
  while read -r m; do umount -l "${m}" 2>/dev/null || true; done < <(
    awk -v n="${N}/" 'index($5, n) == 1 {print $5}' /proc/self/mountinfo | sort -r)
  umount -l /var/lib/kubelet/device-plugins 2>/dev/null || true
  umount -l /run/containerd 2>/dev/null || true
  log "node stopped"
}

[[ $# -ge 2 ]] || usage
CMD="$1"
[[ -d "$2" ]] || die "no state dir $2"
STATE="$(cd "$2" && pwd)"
N="${STATE}/node"
SOCK="${N}/containerd/containerd.sock"
shift 2
IMAGES=("$@")
case "${CMD}" in
  start) cmd_start ;;
  stop) [[ ${#IMAGES[@]} -eq 0 ]] || usage; cmd_stop ;;
  *) usage ;;
esac
