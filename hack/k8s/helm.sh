#!/usr/bin/env bash
# Prints (last line of stdout) the path of a helm v3 binary, built once from
# the Go module proxy into ${WSGATE_CACHE:-/var/cache/wsgate}/helm/<version>/bin.
#
# Env: WSGATE_HELM_VERSION (default below), WSGATE_CACHE.
set -euo pipefail

HELM_VERSION="${WSGATE_HELM_VERSION:-v3.22.0}"
CACHE="${WSGATE_CACHE:-/var/cache/wsgate}"
BIN="${CACHE}/helm/${HELM_VERSION}/bin"

log() { printf 'helm.sh: %s\n' "$*" >&2; }

if [[ -x "${BIN}/helm" ]]; then
  echo "${BIN}/helm"
  exit 0
fi

command -v go >/dev/null 2>&1 || { log "error: go is required to build helm"; exit 1; }
mkdir -p "${BIN}"
exec 9>"${BIN}/.lock"
flock 9
if [[ ! -x "${BIN}/helm" ]]; then
  log "building helm ${HELM_VERSION} (takes a few minutes on a cold cache)"
  start=$(date +%s)
  # Stamp what helm's own Makefile stamps: the release, and the Kubernetes
  # version `helm template` assumes (client-go v0.X.Y => 1.X) in place of the
  # source's placeholders.
  gomod=$(cd "${BIN}" && go list -m -f '{{.GoMod}}' "helm.sh/helm/v3@${HELM_VERSION}") || { log "error: cannot resolve helm.sh/helm/v3@${HELM_VERSION}"; exit 1; }
  k8s_minor=$(awk '$1 == "k8s.io/client-go" {split($2, v, "."); print v[2]; exit}' "${gomod}")
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  if [[ -n "${k8s_minor}" ]]; then
    for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
      ldflags+=" -X ${pkg}.k8sVersionMajor=1 -X ${pkg}.k8sVersionMinor=${k8s_minor}"
    done
  fi
  CGO_ENABLED=0 GOBIN="${BIN}" go install -trimpath -ldflags "${ldflags}" \
    "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" || { log "error: go install helm failed"; exit 1; }
  log "built in $(( $(date +%s) - start ))s"
fi
echo "${BIN}/helm"
