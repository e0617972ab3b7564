"""Turns the chart's rendered ServiceMonitor/PodMonitor/PrometheusRule objects into
a plain Prometheus configuration, the way prometheus-operator does (same job,
namespace, pod and service labels, same honor_labels, interval and timeout), so a
Prometheus without the operator scrapes what the operator's would.

    promconfig.py KUBECONFIG RULES_OUT < rendered.yaml > prometheus.yml

Only the fields the wsgate chart uses are translated (selector.matchLabels,
namespaceSelector.matchNames, one endpoint with port, path, interval,
scrapeTimeout, honorLabels); anything else is an error, so the test cannot
silently scrape something other than what the chart declares.
"""

import sys

import yaml

KNOWN_ENDPOINT = {"port", "path", "interval", "scrapeTimeout", "honorLabels"}


def label_regex_name(key):
    return "".join(c if c.isalnum() else "_" for c in key)


def job(kind, obj, kubeconfig):
    spec, meta = obj["spec"], obj["metadata"]
    endpoints = spec["endpoints"] if kind == "ServiceMonitor" else spec["podMetricsEndpoints"]
    if len(endpoints) != 1 or set(endpoints[0]) - KNOWN_ENDPOINT:
        sys.exit(f"promconfig: unsupported endpoints in {kind} {meta['name']}: {endpoints}")
    if set(spec["selector"]) - {"matchLabels"}:
        sys.exit(f"promconfig: unsupported selector in {kind} {meta['name']}")
    ep = endpoints[0]
    role = "endpoints" if kind == "ServiceMonitor" else "pod"
    obj_kind = "service" if kind == "ServiceMonitor" else "pod"
    relabel = []
    for key, value in sorted(spec["selector"]["matchLabels"].items()):
        relabel.append({
            "source_labels": [f"__meta_kubernetes_{obj_kind}_label_{label_regex_name(key)}",
                              f"__meta_kubernetes_{obj_kind}_labelpresent_{label_regex_name(key)}"],
            "regex": f"({value});true", "action": "keep"})
    if kind == "ServiceMonitor":
        relabel += [
            {"source_labels": ["__meta_kubernetes_endpoint_port_name"], "regex": ep["port"], "action": "keep"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            # The operator's job label: the Service's name.
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"},
            {"target_label": "endpoint", "replacement": ep["port"]},
        ]
    else:
        relabel += [
            {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)", "action": "drop"},
            {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": ep["port"], "action": "keep"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            # The operator's job label for a PodMonitor: <namespace>/<name>.
            {"target_label": "job", "replacement": f"{meta['namespace']}/{meta['name']}"},
            {"target_label": "endpoint", "replacement": ep["port"]},
        ]
    namespaces = spec.get("namespaceSelector", {}).get("matchNames", [meta["namespace"]])
    return {
        "job_name": f"{'serviceMonitor' if kind == 'ServiceMonitor' else 'podMonitor'}/{meta['namespace']}/{meta['name']}/0",
        "honor_labels": bool(ep.get("honorLabels", False)),
        "scrape_interval": ep.get("interval", "30s"),
        "scrape_timeout": ep.get("scrapeTimeout", "10s"),
        "metrics_path": ep.get("path", "/metrics"),
        "kubernetes_sd_configs": [{"role": role, "kubeconfig_file": kubeconfig, "namespaces": {"names": namespaces}}],
        "relabel_configs": relabel,
    }


def main():
    kubeconfig, rules_out = sys.argv[1], sys.argv[2]
    jobs, groups = [], []
    for obj in yaml.safe_load_all(sys.stdin):
        if not obj:
            continue
        if obj["kind"] in ("ServiceMonitor", "PodMonitor"):
            jobs.append(job(obj["kind"], obj, kubeconfig))
        elif obj["kind"] == "PrometheusRule":
            groups += obj["spec"]["groups"]
    if not jobs:
        sys.exit("promconfig: no ServiceMonitor or PodMonitor in the input")
    with open(rules_out, "w") as f:
        yaml.safe_dump({"groups": groups}, f, sort_keys=False)
    yaml.safe_dump({"global": {"evaluation_interval": "5s"}, "rule_files": [rules_out], "scrape_configs": jobs},
                   sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
