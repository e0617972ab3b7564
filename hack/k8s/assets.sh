#!/usr/bin/env bash
# Prints (last line of stdout) a directory holding kube-apiserver and etcd
# (and kubectl when the system's is missing or too old, see below).
#
# Order of preference:
#   1. $KUBEBUILDER_ASSETS, when it holds executable kube-apiserver and etcd;
#   2. ${WSGATE_CACHE:-/var/cache/wsgate}/k8s/<k8s-version>/, built once from
#      source through the Go module proxy and reused afterwards.
#
# Nothing prebuilt can be downloaded here, so the binaries are compiled from
# the k8s.io/kubernetes and go.etcd.io/etcd/server/v3 modules. A cold build
# takes several minutes on 2 cores; progress goes to stderr.
#
# Env:
#   WSGATE_K8S_VERSION    Kubernetes release to build (default below)
#   WSGATE_CACHE          cache root (default /var/cache/wsgate)
#   WSGATE_BUILD_KUBECTL  auto (default): build a matching kubectl when none is
#                         on PATH or it is more than one minor version off;
#                         1: always; 0: only when none is on PATH
#   WSGATE_K8S_NODE       1: also build kubelet, kube-scheduler and
#                         kube-controller-manager (a real node: hack/k8s/node.sh)
#   WSGATE_K8S_KUBE_PROXY 1: also build kube-proxy
set -euo pipefail

K8S_VERSION="${WSGATE_K8S_VERSION:-v1.35.8}"
CACHE="${WSGATE_CACHE:-/var/cache/wsgate}"

log() { printf 'assets: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "${KUBEBUILDER_ASSETS}/kube-apiserver" && -x "${KUBEBUILDER_ASSETS}/etcd" ]]; then
  log "using KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS}"
  echo "${KUBEBUILDER_ASSETS}"
  exit 0
fi

[[ "${K8S_VERSION}" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || die "WSGATE_K8S_VERSION must look like v1.34.12, got ${K8S_VERSION}"
K8S_MINOR="${BASH_REMATCH[1]}"
STAGING_VERSION="v0.${K8S_MINOR}.${BASH_REMATCH[2]}"

OUT="${CACHE}/k8s/${K8S_VERSION}"
SRC="${CACHE}/k8s/src/${K8S_VERSION}"

# A matching kubectl is built (about 40 s once the apiserver is built) unless
# the one on PATH is within the supported +/-1 minor version skew.
want_kubectl=0
case "${WSGATE_BUILD_KUBECTL:-auto}" in
  1) want_kubectl=1 ;;
  0) command -v kubectl >/dev/null 2>&1 || want_kubectl=1 ;;
  *)
    if ! command -v kubectl >/dev/null 2>&1; then
      want_kubectl=1
    else
      sys_minor=$(kubectl version --client -o json 2>/dev/null |
        sed -n 's/^[[:space:]]*"minor": "\([0-9]*\).*/\1/p' | head -n1)
      if [[ -z "${sys_minor}" ]] || (( sys_minor < K8S_MINOR - 1 || sys_minor > K8S_MINOR + 1 )); then
        want_kubectl=1
      fi
    fi
    ;;
esac

# The node's binaries, only when asked for (they take another minute or two).
node_bins=()
[[ "${WSGATE_K8S_NODE:-0}" == 1 ]] && node_bins=(kubelet kube-scheduler kube-controller-manager)
# kube-proxy, for Services' ClusterIPs and load-balancer addresses on the node
# (`make conformance`: each Gateway's Service of type LoadBalancer).
[[ "${WSGATE_K8S_KUBE_PROXY:-0}" == 1 ]] && node_bins+=(kube-proxy)

# Kubernetes binaries (module k8s.io/kubernetes) still to build.
missing_k8s() {
  local b
  [[ -x "${OUT}/kube-apiserver" ]] || echo kube-apiserver
  [[ ${want_kubectl} == 0 || -x "${OUT}/kubectl" ]] || echo kubectl
  for b in "${node_bins[@]}"; do [[ -x "${OUT}/${b}" ]] || echo "${b}"; done
}

have_all() {
  [[ -x "${OUT}/etcd" && -z "$(missing_k8s)" ]]
}

if have_all; then
  echo "${OUT}"
  exit 0
fi

command -v go >/dev/null 2>&1 || die "go is required to build the Kubernetes test binaries"
mkdir -p "${OUT}" "${SRC}/apiserver" "${SRC}/etcd"

# Two test runs may start at once; only one builds, the other waits.
exec 9>"${OUT}/.lock"
log "waiting for build lock ${OUT}/.lock"
flock 9
if have_all; then
  echo "${OUT}"
  exit 0
fi

start=$(date +%s)

# go mod download prints JSON; pick one string field without needing jq.
json_field() { sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",\{0,1\}$/\1/p" | head -n1; }

log "resolving k8s.io/kubernetes@${K8S_VERSION}"
dl=$(cd "${SRC}" && go mod download -json "k8s.io/kubernetes@${K8S_VERSION}") \
  || die "go mod download k8s.io/kubernetes@${K8S_VERSION} failed: ${dl:-}"
k8s_gomod=$(json_field GoMod <<<"${dl}")
[[ -f "${k8s_gomod}" ]] || die "no go.mod for k8s.io/kubernetes@${K8S_VERSION} (${dl})"
k8s_commit=$(json_field Hash <<<"${dl}")
k8s_time=$(json_field Time <<<"${dl}")
k8s_time="${k8s_time:-1970-01-01T00:00:00Z}"
k8s_time="${k8s_time%%.*}"; k8s_time="${k8s_time%Z}Z"

# Every staging module that k8s.io/kubernetes both requires (at v0.0.0) and
# redirects to ./staging/src must be pinned to its published v0.X.Y twin.
mapfile -t staging < <(awk '/=> \.\/staging\/src\// {print $1}' "${k8s_gomod}" | sort -u)
mapfile -t required < <(awk '/^[[:space:]]+k8s\.io\/[^ ]+ v0\.0\.0([[:space:]]|$)/ {print $1}' "${k8s_gomod}" | sort -u)
mapfile -t pinned < <(comm -12 <(printf '%s\n' "${staging[@]}") <(printf '%s\n' "${required[@]}"))
[[ ${#pinned[@]} -gt 10 ]] || die "could not read the staging module list from ${k8s_gomod}"
etcd_version=$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2; exit}' "${k8s_gomod}")
[[ -n "${etcd_version}" ]] || die "k8s.io/kubernetes@${K8S_VERSION} go.mod names no go.etcd.io/etcd/server/v3"
go_directive=$(awk '$1 == "go" {print $2; exit}' "${k8s_gomod}")

# -mod=mod lets go write go.sum for the generated modules; every module is
# still checked against the checksum database (served through the proxy).
export GOFLAGS="-mod=mod ${GOFLAGS:-}"
export CGO_ENABLED=0

mapfile -t to_build < <(missing_k8s)
if [[ ${#to_build[@]} -gt 0 ]]; then
  {
    echo "// Generated by hack/k8s/assets.sh; builds Kubernetes test binaries."
    echo "module wsgate.test/k8s-assets"
    echo
    echo "go ${go_directive}"
    echo
    echo "require k8s.io/kubernetes ${K8S_VERSION}"
    echo
    echo "replace ("
    for m in "${pinned[@]}"; do echo "	${m} => ${m} ${STAGING_VERSION}"; done
    echo ")"
  } >"${SRC}/apiserver/go.mod"

  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X ${pkg}.gitVersion=${K8S_VERSION}"
    ldflags+=" -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${K8S_MINOR}"
    ldflags+=" -X ${pkg}.gitCommit=${k8s_commit} -X ${pkg}.gitTreeState=clean"
    ldflags+=" -X ${pkg}.buildDate=${k8s_time}"
  done

  # One `go build` for all of them: the packages they share compile once and
  # the links run in parallel, where one build per binary linked one at a time.
  log "building ${to_build[*]} ${K8S_VERSION} (staging ${STAGING_VERSION}); minutes on a cold Go cache"
  rm -rf "${OUT}/.new" && mkdir -p "${OUT}/.new"
  (cd "${SRC}/apiserver" && go build -ldflags "${ldflags}" -o "${OUT}/.new/" \
    "${to_build[@]/#/k8s.io/kubernetes/cmd/}") || die "${to_build[*]} build failed"
  for bin in "${to_build[@]}"; do mv -f "${OUT}/.new/${bin}" "${OUT}/${bin}"; done
  rmdir "${OUT}/.new"
fi

if [[ ! -x "${OUT}/etcd" ]]; then
  # The etcd server binary's main package is the root of the
  # go.etcd.io/etcd/server/v3 module (server/main.go calls etcdmain.Main). It
  # gets its own go.mod so it builds with etcd's dependency versions rather
  # than the ones Kubernetes selects.
  log "building etcd ${etcd_version} (pinned by k8s.io/kubernetes@${K8S_VERSION})"
  cat >"${SRC}/etcd/go.mod" <<EOF
// Generated by hack/k8s/assets.sh; builds the etcd server.
module wsgate.test/etcd-assets

go ${go_directive}

require go.etcd.io/etcd/server/v3 ${etcd_version}
EOF
  # Only the root module's .info carries the release commit; etcd --version shows it.
  etcd_commit=$(cd "${SRC}/etcd" && go list -m -json "go.etcd.io/etcd/v3@${etcd_version}" 2>/dev/null | json_field Hash) || true
  (cd "${SRC}/etcd" && go build -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${etcd_commit:-unknown}" \
    -o "${OUT}/etcd.tmp" go.etcd.io/etcd/server/v3) \
    || die "etcd build failed"
  mv -f "${OUT}/etcd.tmp" "${OUT}/etcd"
fi

cat >"${OUT}/VERSIONS" <<EOF
kubernetes ${K8S_VERSION} (commit ${k8s_commit:-unknown}, staging ${STAGING_VERSION})
etcd ${etcd_version}
go $(go env GOVERSION)
EOF
log "done in $(( $(date +%s) - start ))s: ${OUT}"
echo "${OUT}"
