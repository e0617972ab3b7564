#!/usr/bin/env bash
# hack/image/build.sh — the wsgate container image without Docker or a registry.
#
# Builds, from the release binary, one-layer OCI image archives that containerd
# (`ctr -n k8s.io images import`), podman (`podman load`) and skopeo read:
#
#   wsgate.oci.tar  docker.io/library/wsgate:<version>  (what `docker build -t wsgate:<version> .` names)
#   echo.oci.tar    docker.io/library/wsgate-echo:<version>  (examples/echo.rs, a WebSocket echo backend)
#   pause.oci.tar   localhost/pause:wsgate   (the Pod sandbox image for the test node; static C)
#   wsgate.debug    the symbols stripped from the image's binary (objcopy --only-keep-debug);
#                   the binary carries a .gnu_debuglink to it, so `perf`/`gdb` find it beside it
#
# The runtime contract is read from the Dockerfile's last stage (USER, EXPOSE,
# ENTRYPOINT, CMD), so this image and the Dockerfile's cannot drift apart. The
# root filesystem mirrors gcr.io/distroless/cc-debian12:nonroot: the glibc and
# libgcc files the binary links (as `ldd` names them, from this Debian 12
# host, which is what distroless cc-debian12 ships), CA certificates,
# /etc/passwd with nonroot (65532), /tmp, /home/nonroot, and no shell.
#
# Usage: hack/image/build.sh [OUT_DIR]   (default $CARGO_TARGET_DIR/image)
# Prints OUT_DIR as its last line. Env: CARGO_TARGET_DIR, WSGATE_SKIP_CARGO=1
# (use the release binaries as they are), WSGATE_CPU_LOCK (a flock file that
# serialises the cargo build with other builds on a shared machine).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="${ROOT}/hack/image"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/wsgate/target}"
OUT="${1:-${CARGO_TARGET_DIR}/image}"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "${ROOT}/Cargo.toml" | head -n1)"

log() { printf 'image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
for tool in jq objcopy ldd gcc tar sha256sum; do
  command -v "${tool}" >/dev/null || die "${tool} is required"
done

if [[ "${WSGATE_SKIP_CARGO:-}" != 1 ]]; then
  log "cargo build --release --locked --bin wsgate --example echo"
  lock=()
  [[ -n "${WSGATE_CPU_LOCK:-}" ]] && lock=(flock "${WSGATE_CPU_LOCK}")
  (cd "${ROOT}" && "${lock[@]}" cargo build --release --locked --bin wsgate --example echo) || die "cargo build failed"
fi
BIN="${CARGO_TARGET_DIR}/release/wsgate"
ECHO_BIN="${CARGO_TARGET_DIR}/release/examples/echo"
[[ -x "${BIN}" && -x "${ECHO_BIN}" ]] || die "no release build in ${CARGO_TARGET_DIR}/release"
mkdir -p "${OUT}"
WORK="$(mktemp -d)"
trap 'rm -rf "${WORK}"' EXIT

# ---- the runtime contract, from the Dockerfile's final stage ----------------
final_stage="$(awk '/^FROM /{buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}' "${ROOT}/Dockerfile")"
directive() { sed -n "s/^$1[[:space:]]\{1,\}//p" <<<"${final_stage}" | tail -n1; }
user="$(directive USER)"
entrypoint="$(directive ENTRYPOINT)"
cmd="$(directive CMD)"
ports="$(directive EXPOSE)"
[[ -n "${user}" && "${entrypoint}" == \[* ]] || die "Dockerfile's final stage lacks USER or an exec-form ENTRYPOINT"
[[ -z "${cmd}" || "${cmd}" == \[* ]] || die "Dockerfile's CMD is not in exec form"
exposed="$(for p in ${ports}; do echo "${p%/tcp}/tcp"; done | jq -R . | jq -s 'map({(.): {}}) | add // {}')"
# distroless's own config: PATH, SSL_CERT_FILE and WorkingDir /home/nonroot.
distroless_env='["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"]'
jq -n --arg user "${user}" --argjson ep "${entrypoint}" --argjson cmd "${cmd:-null}" \
  --argjson ports "${exposed}" --argjson env "${distroless_env}" \
  '{User: $user, Entrypoint: $ep, Cmd: $cmd, ExposedPorts: $ports, Env: $env, WorkingDir: "/home/nonroot"}
   | with_entries(select(.value != null))' >"${WORK}/wsgate.config.json"

# ---- a distroless-like root filesystem --------------------------------------
base_rootfs() { # DIR
  local dir="$1"
  install -d -m 0755 "${dir}"/{etc,etc/ssl/certs,usr,home}
  install -d -m 1777 "${dir}/tmp"
  install -d -m 0700 "${dir}/root"
  install -d -m 0700 -o 65532 -g 65532 "${dir}/home/nonroot"
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"${dir}/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'nonroot:x:65532:' >"${dir}/etc/group"
  echo 'hosts: files dns' >"${dir}/etc/nsswitch.conf"
  install -m 0644 /etc/ssl/certs/ca-certificates.crt "${dir}/etc/ssl/certs/ca-certificates.crt"
  chmod 0644 "${dir}"/etc/{passwd,group,nsswitch.conf}
}

# Every shared object BINARY loads (and the dynamic loader), at its own path.
add_libs() { # BINARY ROOTFS
  local f
  while read -r f; do
    [[ -n "${f}" ]] || continue
    install -D -m 0755 "$(readlink -f "${f}")" "$2${f}"
  done < <(ldd "$1" | awk '/=> \//{print $3} /^\t\/[^ ]+ \(/{print $1}')
}

# wsgate: stripped binary + separate symbols.
rootfs="${WORK}/wsgate"
base_rootfs "${rootfs}"
# (The debuglink records the file's base name and CRC, so it is made as wsgate.debug.)
objcopy --only-keep-debug "${BIN}" "${WORK}/wsgate.debug"
objcopy --strip-all --add-gnu-debuglink="${WORK}/wsgate.debug" "${BIN}" "${WORK}/wsgate.stripped"
install -m 0644 "${WORK}/wsgate.debug" "${OUT}/wsgate.debug"
install -m 0755 "${WORK}/wsgate.stripped" "${rootfs}/wsgate"
add_libs "${BIN}" "${rootfs}"
"${HERE}/oci.sh" "${rootfs}" "${WORK}/wsgate.config.json" "docker.io/library/wsgate:${VERSION}" "${OUT}/wsgate.oci.tar"

# echo backend: the same base, examples/echo.rs stripped, listening on 0.0.0.0:9001.
rootfs="${WORK}/echo"
base_rootfs "${rootfs}"
objcopy --strip-all "${ECHO_BIN}" "${WORK}/echo.stripped"
install -m 0755 "${WORK}/echo.stripped" "${rootfs}/echo"
add_libs "${ECHO_BIN}" "${rootfs}"
jq -n '{User: "65532:65532", Entrypoint: ["/echo"], Cmd: ["0.0.0.0:9001"], ExposedPorts: {"9001/tcp": {}}, WorkingDir: "/home/nonroot"}' \
  >"${WORK}/echo.config.json"
"${HERE}/oci.sh" "${rootfs}" "${WORK}/echo.config.json" "docker.io/library/wsgate-echo:${VERSION}" "${OUT}/echo.oci.tar"

# pause: a static binary blocking in pause(2); nothing else in the image.
rootfs="${WORK}/pause"
install -d "${rootfs}"
gcc -static -Os -s -o "${rootfs}/pause" "${HERE}/pause.c" || die "gcc -static failed (libc6-dev provides libc.a)"
jq -n '{User: "65535:65535", Entrypoint: ["/pause"]}' >"${WORK}/pause.config.json"
"${HERE}/oci.sh" "${rootfs}" "${WORK}/pause.config.json" "localhost/pause:wsgate" "${OUT}/pause.oci.tar"

cat >"${OUT}/SIZES" <<EOF2
wsgate.oci.tar $(stat -c %s "${OUT}/wsgate.oci.tar")
wsgate-binary-stripped $(stat -c %s "${WORK}/wsgate.stripped")
wsgate-binary-release $(stat -c %s "${BIN}")
wsgate.debug $(stat -c %s "${OUT}/wsgate.debug")
echo.oci.tar $(stat -c %s "${OUT}/echo.oci.tar")
pause.oci.tar $(stat -c %s "${OUT}/pause.oci.tar")
EOF2
log "sizes (bytes): $(tr '\n' ';' <"${OUT}/SIZES")"
echo "${OUT}"
