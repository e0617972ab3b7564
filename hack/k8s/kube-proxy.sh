#!/usr/bin/env bash
# kube-proxy.sh STATE_DIR — kube-proxy in iptables mode for the node of node.sh,
# in this network namespace (run it in the background; it becomes kube-proxy).
# Reads STATE_DIR/env (control-plane.sh) for KUBECONFIG and K8S_ASSETS, which
# needs kube-proxy built (WSGATE_K8S_KUBE_PROXY=1 assets.sh). Inside a network
# namespace the conntrack table size is the host's: it is left alone.
set -euo pipefail
state="$1"
# shellcheck disable=SC1091
source "${state}/env"
cat >"${state}/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: ${KUBECONFIG}}
mode: iptables
hostnameOverride: wsgate-node
clusterCIDR: 198.51.100.0/24
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {masqueradeAll: true}
YAML
exec "${K8S_ASSETS}/kube-proxy" --config="${state}/kube-proxy.yaml"
