#!/usr/bin/env bash
# lb-allocator.sh FIRST_HOST LAST_HOST — what a cloud or MetalLB does for Services of
# type LoadBalancer, for the conformance run on the test node: every such Service
# without an address gets the next free 192.0.2.N (TEST-NET-1, N in FIRST..LAST) in
# status.loadBalancer.ingress, and the address goes on `lo` so the node routes it
# (kube-proxy's rules then lead it to the Service's pods). Polls twice a second
# until killed. Needs KUBECTL and KUBECONFIG.
set -uo pipefail
first=$1 last=$2
declare -A taken=()
while true; do
  json=$("${KUBECTL}" --kubeconfig "${KUBECONFIG}" get svc -A -o json 2>/dev/null) || { sleep 0.5; continue; }
  while read -r ip; do [[ -n "${ip}" ]] && taken[${ip}]=1; done < <(jq -r '.items[].status.loadBalancer.ingress[]?.ip // empty' <<<"${json}")
  while read -r ns name; do
    [[ -n "${ns}" ]] || continue
    ip=""
    for ((n = first; n <= last; n++)); do
      [[ -z "${taken[192.0.2.${n}]:-}" ]] && { ip="192.0.2.${n}"; break; }
    done
    [[ -n "${ip}" ]] || { echo "lb-allocator: pool 192.0.2.${first}-${last} exhausted" >&2; break; }
    ip addr add "${ip}/32" dev lo 2>/dev/null || true
    if "${KUBECTL}" --kubeconfig "${KUBECONFIG}" -n "${ns}" patch svc "${name}" --subresource=status --type=merge \
      -p "{\"status\":{\"loadBalancer\":{\"ingress\":[{\"ip\":\"${ip}\"}]}}}" >/dev/null; then
      taken[${ip}]=1
      echo "lb-allocator: ${ns}/${name} -> ${ip}"
    fi
  done < <(jq -r '.items[] | select(.spec.type == "LoadBalancer") | select((.status.loadBalancer.ingress // []) | length == 0)
    | "\(.metadata.namespace) \(.metadata.name)"' <<<"${json}")
  sleep 0.5
done
