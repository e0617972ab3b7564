#!/usr/bin/env bash
# tests/chart/lint.sh — static checks of charts/wsgate (no cluster needed).
#
#   - `helm lint --strict` and `helm template` with every tests/chart/values/*.yaml,
#     and structural checks of each rendering (chartcheck.py render): hardened
#     Pod, flags, probes, derived grace period, RBAC == files/*-rules.yaml,
#     Services, PDB/HPA, monitoring objects, dashboards ConfigMap;
#   - values the schema must refuse, each with the message expected;
#   - charts/wsgate/crds/*.yaml == crds/*.yaml;
#   - the Dockerfile and .dockerignore: the allowlisted build context holds what
#     `cargo check --locked` needs (no engine here: the image itself is not built).
#
# Prints one line per check and a summary; exits 1 on any failure.
# Env: WSGATE_CACHE, CARGO_TARGET_DIR, HELM (a helm binary; else hack/k8s/helm.sh),
#      WSGATE_LINT_SKIP_DOCKER=1 skips the build-context check (it runs cargo).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CHART="${ROOT}/charts/wsgate"
HERE="${ROOT}/tests/chart"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/wsgate/target}"
T0=${SECONDS}
passed=0 failed=0
failures=()
pass() { echo "ok   - $*"; passed=$((passed + 1)); }
flunk() { echo "FAIL - $*"; failed=$((failed + 1)); failures+=("$*"); }

command -v python3 >/dev/null && python3 -c 'import yaml' 2>/dev/null || { echo "lint.sh: python3 with PyYAML is required" >&2; exit 2; }
HELM="${HELM:-$("${ROOT}/hack/k8s/helm.sh" | tail -n1)}" || { echo "lint.sh: no helm" >&2; exit 2; }
WORK="$(mktemp -d /tmp/wsgate-chart-lint.XXXXXX)"
trap 'rm -rf "${WORK}"' EXIT

echo "== helm lint and template ($(${HELM} version --short))"
for vf in "${HERE}"/values/*.yaml; do
  name="$(basename "${vf}" .yaml)"
  if out="$("${HELM}" lint --strict "${CHART}" -f "${vf}" 2>&1)"; then
    pass "helm lint --strict (${name})"
  else
    flunk "helm lint --strict (${name})"; echo "${out}" | sed 's/^/    /'
  fi
  if "${HELM}" template wsgate "${CHART}" -f "${vf}" --include-crds=false >"${WORK}/${name}.yaml" 2>"${WORK}/${name}.err"; then
    pass "helm template (${name})"
    if out="$(python3 "${HERE}/chartcheck.py" render "${vf}" "${WORK}/${name}.yaml" "${CHART}")"; then
      pass "rendering checks (${name})"
    else
      flunk "rendering checks (${name})"
    fi
    echo "${out}" | sed 's/^/  /'
  else
    flunk "helm template (${name})"; sed 's/^/    /' "${WORK}/${name}.err"
  fi
done

echo "== the schema refuses bad values"
# Each case: --set argument | text the error must contain.
refuse() {
  local set="$1" want="$2" out
  if out="$("${HELM}" template wsgate "${CHART}" --set "${set}" 2>&1 >/dev/null)"; then
    flunk "--set ${set} was accepted"
  elif [[ "${out}" == *"${want}"* ]]; then
    pass "--set ${set} refused: $(grep -F -- "${want}" <<<"${out}" | head -n1 | sed 's/^ *//')"
  else
    flunk "--set ${set} refused without '${want}':"; echo "${out}" | sed 's/^/    /'
  fi
}
refuse 'replicaCount=two' "at '/replicaCount': got string, want integer"
refuse 'tracing.samplingRatio=2' "at '/tracing/samplingRatio': maximum"
refuse 'tracing.protocol=http/json' "at '/tracing/protocol': value must be one of"
refuse 'mode=ingress' "at '/mode': value must be one of 'gateway', 'sidecar'"
refuse 'replicas=3' "additional properties 'replicas' not allowed"
refuse 'drainTimeoutSeconds=-5' "at '/drainTimeoutSeconds': minimum"
refuse 'service.type=External' "at '/service/type': value must be one of"
refuse 'service.externalTrafficPolicy=Local,service.type=ClusterIP' "at '/service/type': value must be one of 'NodePort', 'LoadBalancer'"
refuse 'watchNamespaces[0]=Team_A' "at '/watchNamespaces/0'"
refuse 'image.pullPolicy=Sometimes' "at '/image/pullPolicy'"
refuse 'sidecar.appPort=70000' "at '/sidecar/appPort': maximum"
refuse 'sidecar.route.backends[0].address=10.0.0.1:80' "at '/sidecar/route': additional properties 'backends' not allowed"
refuse 'metrics.prometheusRule.alerts.pongTimeouts.ratio=2' "at '/metrics/prometheusRule/alerts/pongTimeouts/ratio': maximum"
refuse 'autoscaling.enabled=true,autoscaling.targetCPUUtilizationPercentage=null' "missing property 'targetCPUUtilizationPercentage'"
refuse 'limitsStore.mode=replicated' "at '/limitsStore/mode': value must be one of"
refuse 'limitsStore.url=http://redis:6379' "at '/limitsStore/url'"
# Template-time guard (not expressible in the schema).
refuse 'mode=sidecar,metrics.serviceMonitor.enabled=true' "set sidecar.podSelector"

echo "== PromQL of the dashboards and alerts parses (Prometheus' own parser)"
# tests/chart/promql is a tiny Go program around github.com/prometheus/prometheus/promql/parser;
# built once into the cache, keyed by its sources.
pq_key="$(cat "${HERE}/promql/go.mod" "${HERE}/promql/go.sum" "${HERE}/promql/main.go" | sha256sum | cut -c1-16)"
PQ="${WSGATE_CACHE:-/var/cache/wsgate}/tools/promqlcheck-${pq_key}"
if [[ ! -x "${PQ}" ]]; then
  mkdir -p "$(dirname "${PQ}")"
  (cd "${HERE}/promql" && go build -o "${PQ}.tmp" . && mv "${PQ}.tmp" "${PQ}") 2>"${WORK}/promql-build.log" ||
    { flunk "cannot build tests/chart/promql (go build):"; tail -n 20 "${WORK}/promql-build.log" | sed 's/^/    /'; }
fi
if [[ -x "${PQ}" ]]; then
  if python3 "${HERE}/chartcheck.py" queries "${CHART}" "${WORK}/monitoring.yaml" "${WORK}/sidecar-monitoring.yaml" >"${WORK}/queries.json" &&
    out="$("${PQ}" <"${WORK}/queries.json")"; then
    pass "every dashboard and alert query parses: $(tail -n1 <<<"${out}" | sed 's/^ *//')"
  else
    flunk "invalid PromQL in the dashboards or alerts:"; echo "${out:-}" | sed 's/^/    /'
  fi
fi

echo "== CRDs in the chart == crds/"
for f in websocketroute.yaml websocketpolicy.yaml; do
  if cmp -s "${CHART}/crds/${f}" "${ROOT}/crds/${f}"; then
    pass "charts/wsgate/crds/${f} is identical to crds/${f}"
  else
    flunk "charts/wsgate/crds/${f} differs from crds/${f} (make crd):"
    diff -u "${ROOT}/crds/${f}" "${CHART}/crds/${f}" | head -n 40 | sed 's/^/    /'
  fi
done
if [[ "$(ls "${CHART}/crds" | tr '\n' ' ')" == "websocketpolicy.yaml websocketroute.yaml " ]]; then
  pass "charts/wsgate/crds holds only websocketroute.yaml and websocketpolicy.yaml"
else
  flunk "unexpected files in charts/wsgate/crds: $(ls "${CHART}/crds" | tr '\n' ' ')"
fi
"${HELM}" show crds "${CHART}" >"${WORK}/shown-crds.yaml" 2>&1
if python3 - "${WORK}/shown-crds.yaml" "${ROOT}/crds/websocketpolicy.yaml" "${ROOT}/crds/websocketroute.yaml" <<'EOF'
import re, sys, yaml
# helm show crds prints the files one after another, a blank line between them.
text = open(sys.argv[1]).read()
a = [yaml.safe_load(d) for d in re.split(r"\n(?=apiVersion: apiextensions)", text) if d.strip()]
b = [yaml.safe_load(open(f)) for f in sys.argv[2:]]
sys.exit(0 if a == b else 1)
EOF
then pass "helm show crds == crds/*.yaml"; else flunk "helm show crds differs"; fi

echo "== Dockerfile and build context"
df="${ROOT}/Dockerfile"
grep -Eq '^FROM rust:[0-9.${}A-Z_]+-bookworm AS build' "${df}" && grep -q '^ARG RUST_VERSION=' "${df}" &&
  pass "builder stage is rust:<version>-bookworm" || flunk "builder stage is not rust:<version>-bookworm"
grep -q 'cargo build --release --locked' "${df}" && pass "builder runs cargo build --release --locked" || flunk "no cargo build --release --locked"
grep -Eq '^FROM gcr.io/distroless/cc-debian12:nonroot$' "${df}" && pass "runtime is distroless cc-debian12:nonroot" || flunk "runtime stage"
grep -Eq '^USER (65532|nonroot)' "${df}" && pass "USER 65532" || flunk "no USER 65532"
grep -Eq '^EXPOSE 8080 8443 9090$' "${df}" && pass "EXPOSE 8080 8443 9090" || flunk "EXPOSE"
grep -Fxq 'ENTRYPOINT ["/wsgate"]' "${df}" && pass 'ENTRYPOINT ["/wsgate"] (exec form, no shell)' || flunk "ENTRYPOINT"
rust_min="$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' "${ROOT}/Cargo.toml")"
rust_img="$(sed -n 's/^ARG RUST_VERSION=//p' "${df}")"
if [[ -n "${rust_min}" ]] && [[ "$(printf '%s\n%s\n' "${rust_min}" "${rust_img}" | sort -V | head -n1)" == "${rust_min}" ]]; then
  pass "image Rust ${rust_img} >= rust-version ${rust_min}"
else
  flunk "image Rust ${rust_img} < Cargo.toml rust-version ${rust_min}"
fi
# The context is an allowlist (`*` then `!path` lines): rebuild it and check
# that every COPY source is in it and that it compiles on its own.
ctx="${WORK}/context"
mkdir -p "${ctx}"
if [[ "$(grep -v '^#' "${ROOT}/.dockerignore" | grep -v '^$' | head -n1)" != '*' ]]; then
  flunk ".dockerignore is not an allowlist starting with '*'"
else
  while read -r line; do
    p="${line#!}"; p="${p%/}"
    [[ -e "${ROOT}/${p}" ]] && cp -a "${ROOT}/${p}" "${ctx}/${p}"
  done < <(grep '^!' "${ROOT}/.dockerignore")
  missing=0
  while read -r src; do
    [[ -e "${ctx}/${src}" ]] || { flunk "COPY ${src}: not in the build context"; missing=1; }
  done < <(awk '/^COPY / && !/--from/ { for (i = 2; i < NF; i++) print $i }' "${df}")
  [[ ${missing} == 0 ]] && pass "every COPY source is in the .dockerignore allowlist ($(ls "${ctx}" | tr '\n' ' '))"
  if [[ "${WSGATE_LINT_SKIP_DOCKER:-}" == 1 ]]; then
    echo "skip - cargo check of the build context (WSGATE_LINT_SKIP_DOCKER=1)"
  elif out="$(cd "${ctx}" && cargo check --locked --bin wsgate --quiet 2>&1)"; then
    pass "the build context alone compiles (cargo check --locked --bin wsgate)"
  else
    flunk "the build context does not compile on its own:"; echo "${out}" | tail -n 20 | sed 's/^/    /'
  fi
fi

echo
for f in "${failures[@]}"; do echo "  failed: ${f}"; done
echo "time: $((SECONDS - T0))s"
echo "lint.sh: ${passed} passed, ${failed} failed"
[[ ${failed} == 0 ]]
