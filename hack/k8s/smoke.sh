#!/usr/bin/env bash
# ok() and bad() always succeed, so `COND && ok .. || bad ..` is an if-then-else.
# shellcheck disable=SC2015
#
# smoke.sh [STATE_DIR]
#
# Proves the harness end to end, inside its own network namespace: control
# plane up, real release version, RBAC on a ServiceAccount token, a CRD's CEL
# rule enforced, an EndpointSlice with a TEST-NET-1 address, data surviving a
# 10 s apiserver outage, clean stop. Prints "N passed, N failed".
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ "${WSGATE_SMOKE_INSIDE:-}" != 1 ]]; then
  WSGATE_SMOKE_INSIDE=1 exec "${HERE}/in-netns.sh" "${BASH_SOURCE[0]}" "$@"
fi

STATE="${1:-$(mktemp -d /tmp/wsgate-k8s-smoke.XXXXXX)}"
CP="${HERE}/control-plane.sh"
passed=0 failed=0
ok() { echo "ok   - $*"; passed=$((passed + 1)); }
bad() { echo "FAIL - $*"; failed=$((failed + 1)); }
cleanup() { "${CP}" stop "${STATE}" || true; }
trap cleanup EXIT

t0=$(date +%s.%N)
"${CP}" start "${STATE}"
t1=$(date +%s.%N)
echo "start-to-ready: $(awk -v a="${t0}" -v b="${t1}" 'BEGIN { printf "%.1f", b - a }')s"
# shellcheck disable=SC1091
source "${STATE}/env"
k() { "${KUBECTL}" "$@"; }

k get ns && ok "admin kubeconfig lists namespaces" || bad "kubectl get ns"
k version
want="$(basename "${K8S_ASSETS}")"
got="$(curl -fsS --cacert "${APISERVER_CA}" "${APISERVER_URL}/version" | sed -n 's/.*"gitVersion": "\([^"]*\)".*/\1/p')"
[[ "${got}" == "${want}" ]] && ok "/version reports ${got}" || bad "/version reports '${got}', want ${want}"

# --- RBAC with a least-privilege ServiceAccount token ----------------------
k create namespace smoke
"${CP}" token "${STATE}" smoke wsgate "${STATE}/wsgate.kubeconfig"
out="$("${KUBECTL}" --kubeconfig "${STATE}/wsgate.kubeconfig" get secrets 2>&1)" && rc=0 || rc=$?
echo "${out}"
[[ ${rc} -ne 0 && "${out}" == *'User "system:serviceaccount:smoke:wsgate" cannot list resource "secrets"'* ]] &&
  ok "ServiceAccount token is authenticated and forbidden to list secrets" || bad "secrets not forbidden (rc=${rc})"
k -n smoke create role read-slices --verb=get,list,watch --resource=endpointslices.discovery.k8s.io
k -n smoke create rolebinding wsgate-read-slices --role=read-slices --serviceaccount=smoke:wsgate
"${KUBECTL}" --kubeconfig "${STATE}/wsgate.kubeconfig" get endpointslices >/dev/null &&
  ok "a Role grant takes effect for the token" || bad "granted list endpointslices failed"

# --- CRD with a CEL validation rule ----------------------------------------
k apply -f - <<'EOF'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.smoke.wsgate.io}
spec:
  group: smoke.wsgate.io
  scope: Namespaced
  names: {kind: Widget, plural: widgets, singular: widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-validations:
            - rule: "self.min <= self.max"
              message: "min must not exceed max"
            properties:
              min: {type: integer}
              max: {type: integer}
EOF
k wait --for=condition=Established crd/widgets.smoke.wsgate.io --timeout=30s
widget() { printf 'apiVersion: smoke.wsgate.io/v1\nkind: Widget\nmetadata: {name: %s, namespace: smoke}\nspec: {min: %s, max: %s}\n' "$@"; }
# Discovery of a new CRD can lag a moment behind Established.
for _ in 1 2 3 4 5 6 7 8 9 10; do widget good 1 5 | k apply -f - 2>/dev/null && break; sleep 0.5; done
k -n smoke get widget good >/dev/null && ok "valid Widget accepted" || bad "valid Widget rejected"
out="$(widget bad 9 1 | k apply -f - 2>&1)" && rc=0 || rc=$?
echo "${out}"
[[ ${rc} -ne 0 && "${out}" == *"min must not exceed max"* ]] && ok "CEL rule rejects min > max" || bad "CEL rule not enforced"

# --- Service + EndpointSlice with a TEST-NET-1 address ---------------------
k -n smoke create service clusterip smoke --tcp=8080:8080
k apply -f - <<'EOF'
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: smoke-1
  namespace: smoke
  labels: {kubernetes.io/service-name: smoke}
addressType: IPv4
ports: [{name: tcp-8080, port: 8080, protocol: TCP}]
endpoints:
- addresses: ["192.0.2.10"]
  conditions: {ready: true}
EOF
[[ "$(k -n smoke get endpointslice smoke-1 -o jsonpath='{.endpoints[0].addresses[0]}')" == 192.0.2.10 ]] &&
  ok "EndpointSlice with 192.0.2.10 stored" || bad "EndpointSlice missing"
out="$(k -n smoke create -f - 2>&1 <<'EOF'
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: smoke-loopback, namespace: smoke}
addressType: IPv4
endpoints: [{addresses: ["127.0.0.1"]}]
EOF
)" && rc=0 || rc=$?
[[ ${rc} -ne 0 ]] && ok "loopback EndpointSlice address rejected (why in-netns.sh adds 192.0.2.x)" || bad "loopback address accepted"
[[ "$(ip -4 -o addr show dev lo)" == *" 192.0.2.10/32 "* ]] && ok "192.0.2.10 is on lo in this namespace" || bad "192.0.2.10 not on lo"

# --- apiserver outage -------------------------------------------------------
"${CP}" stop-apiserver "${STATE}"
curl -fsS --max-time 2 --cacert "${APISERVER_CA}" "${APISERVER_URL}/readyz" >/dev/null 2>&1 &&
  bad "apiserver still answers after stop-apiserver" || ok "apiserver down"
sleep 10
t0=$(date +%s.%N)
"${CP}" start-apiserver "${STATE}"
t1=$(date +%s.%N)
echo "restart-to-ready: $(awk -v a="${t0}" -v b="${t1}" 'BEGIN { printf "%.1f", b - a }')s"
# shellcheck disable=SC1091
source "${STATE}/env"
[[ "$(k -n smoke get endpointslice smoke-1 -o jsonpath='{.endpoints[0].addresses[0]}')" == 192.0.2.10 &&
  "$(k -n smoke get widget good -o jsonpath='{.spec.max}')" == 5 ]] &&
  ok "data survives the apiserver outage" || bad "data lost after restart"
"${KUBECTL}" --kubeconfig "${STATE}/wsgate.kubeconfig" get endpointslices >/dev/null &&
  ok "token still valid after restart (same signing key)" || bad "token rejected after restart"

trap - EXIT
"${CP}" stop "${STATE}"
if [[ -z "$(cat "${STATE}"/*.pid 2>/dev/null)" ]]; then ok "stop leaves no processes"; else bad "pid files left"; fi
echo "${passed} passed, ${failed} failed"
[[ ${failed} -eq 0 ]]
