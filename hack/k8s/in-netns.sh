#!/usr/bin/env bash
# in-netns.sh CMD [ARGS...]
#
# Runs CMD in a new, empty network namespace (unshare -n; as non-root it adds
# a user namespace, unshare -rn). Inside, `lo` is up and also carries
# 192.0.2.1-192.0.2.20/32 (TEST-NET-1, RFC 5737): EndpointSlices reject
# loopback addresses, so tests give fake pods these addresses and bind their
# backends to them. Nothing inside can reach any other network.
#
# When CMD exits, processes it left behind in the namespace (an etcd or
# kube-apiserver a crashed test never stopped) get SIGTERM, then SIGKILL after
# 10 s, so the namespace disappears with the test. Exit status is CMD's.
#
# Env: WSGATE_NETNS_ADDRS  how many 192.0.2.x addresses to add (default 20)
#      WSGATE_NETNS_MOUNT=1  (root only) also a private mount namespace, so the
#                            tmpfs and overlay mounts of a node (hack/k8s/node.sh)
#                            vanish with CMD instead of staying on the host
set -euo pipefail

if [[ $# -eq 0 ]]; then
  echo "usage: in-netns.sh CMD [ARGS...]" >&2
  exit 2
fi

if [[ "${WSGATE_IN_NETNS:-}" != "$$" ]]; then
  command -v unshare >/dev/null || { echo "in-netns: unshare (util-linux) is required" >&2; exit 1; }
  command -v ip >/dev/null || { echo "in-netns: ip (iproute2) is required" >&2; exit 1; }
  # Re-enter this script inside the new namespace; exec keeps $$, so the
  # marker tells the second pass apart from a nested call.
  export WSGATE_IN_NETNS="$$"
  if [[ ${EUID} -eq 0 && "${WSGATE_NETNS_MOUNT:-}" == 1 ]]; then
    exec unshare --net --mount --propagation private -- "${BASH_SOURCE[0]}" "$@"
  fi
  if [[ ${EUID} -eq 0 ]]; then
    exec unshare --net -- "${BASH_SOURCE[0]}" "$@"
  fi
  exec unshare --user --map-root-user --net -- "${BASH_SOURCE[0]}" "$@"
fi

unset WSGATE_IN_NETNS
ip link set lo up
n="${WSGATE_NETNS_ADDRS:-20}"
for ((i = 1; i <= n; i++)); do
  ip addr add "192.0.2.${i}/32" dev lo
done

# Leftovers are found by their network namespace: only processes started in
# here can be in it. No forks in the scan (-ef compares the nsfs inodes).
leftovers() {
  local p pid stat
  for p in /proc/[0-9]*; do
    pid="${p#/proc/}"
    [[ "${pid}" == "$$" || "${pid}" == "${BASHPID}" ]] && continue
    [[ "${p}/ns/net" -ef "/proc/$$/ns/net" ]] || continue
    # Skip zombies: they are already dead and wait for their parent.
    read -r stat <"${p}/stat" 2>/dev/null || continue
    stat="${stat##*) }"
    [[ "${stat:0:1}" == Z ]] && continue
    echo "${pid}"
  done
}

# CMD runs in the foreground so it keeps this terminal's stdin.
set +e
"$@"
rc=$?
set -e

mapfile -t pids < <(leftovers)
if [[ ${#pids[@]} -gt 0 ]]; then
  echo "in-netns: stopping ${#pids[@]} process(es) left in the namespace: ${pids[*]}" >&2
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    alive=()
    for pid in "${pids[@]}"; do
      read -r stat <"/proc/${pid}/stat" 2>/dev/null || continue
      stat="${stat##*) }"
      [[ "${stat:0:1}" == Z ]] || alive+=("${pid}")
    done
    pids=("${alive[@]}")
    [[ ${#pids[@]} -eq 0 ]] && break
    sleep 0.1
  done
  if [[ ${#pids[@]} -gt 0 ]]; then kill -KILL "${pids[@]}" 2>/dev/null || true; fi
fi
exit "${rc}"
