#!/usr/bin/env python3
"""Helpers of the chart tests (tests/chart/*.sh). Python 3 + PyYAML only.

  chartcheck.py render VALUES_FILE RENDERED_YAML CHART_DIR
      structural checks of `helm template` output against the values used
  chartcheck.py routes RENDERED_YAML CONFIGMAP_SUFFIX
      print data["routes.yaml"] of the ConfigMap whose name ends with the suffix
  chartcheck.py queries CHART_DIR RENDERED_YAML...
      print (JSON) every PromQL query of the dashboards and the PrometheusRules
  chartcheck.py metrics QUERIES_JSON [--skip NAME]... EXPOSITION_FILE...
      check each query's wsgate_* names and labels against /metrics expositions
  chartcheck.py ws URL [--message TEXT] [--idle SECONDS] [--expect-status N]
      a raw-socket WebSocket client: handshake (checks 101 and
      Sec-WebSocket-Accept), optional echo round trip and close; with --idle it
      ignores the proxy's pings and waits for the proxy to close the tunnel
  chartcheck.py free-ports N
      print N free TCP ports on 127.0.0.1

Exit status: 0 ok, 1 check failed, 2 usage or environment error.
"""

import base64
import hashlib
import json
import os
import re
import socket
import struct
import sys
import time
from urllib.parse import urlparse

try:
    import yaml
except ImportError:  # pragma: no cover
    print("chartcheck: PyYAML is required (python3 -m pip install pyyaml)", file=sys.stderr)
    sys.exit(2)


FAILURES = []
PASSED = []
VERBOSE = os.environ.get("CHARTCHECK_VERBOSE") == "1"


def fail(msg):
    FAILURES.append(msg)
    print(f"  FAIL {msg}")


def ok(msg):
    PASSED.append(msg)
    if VERBOSE:
        print(f"  ok   {msg}")


def check(cond, msg):
    (ok if cond else fail)(msg)
    return cond


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def deep_merge(base, over):
    out = dict(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------- render checks

def find(docs, kind, name_suffix=None, namespace=None):
    out = []
    for d in docs:
        if d.get("kind") != kind:
            continue
        md = d.get("metadata", {})
        if name_suffix is not None and not md.get("name", "").endswith(name_suffix):
            continue
        if namespace is not None and md.get("namespace") != namespace:
            continue
        out.append(d)
    return out


def cmd_render(values_file, rendered, chart):
    with open(os.path.join(chart, "values.yaml")) as f:
        defaults = yaml.safe_load(f)
    with open(values_file) as f:
        v = deep_merge(defaults, yaml.safe_load(f) or {})
    docs = load_docs(rendered)
    with open(os.path.join(chart, "files/rbac-rules.yaml")) as f:
        rules = yaml.safe_load(f)
    with open(os.path.join(chart, "files/leader-election-rules.yaml")) as f:
        lease_rules = yaml.safe_load(f)
    with open(os.path.join(chart, "files/gateway-api-rules.yaml")) as f:
        gateway_rules = yaml.safe_load(f)
    with open(os.path.join(chart, "files/gateway-service-rules.yaml")) as f:
        gateway_service_rules = yaml.safe_load(f)
    with open(os.path.join(chart, "crds/websocketroute.yaml")) as f:
        crd = yaml.safe_load(f)
    with open(os.path.join(chart, "crds/websocketpolicy.yaml")) as f:
        policy_crd = yaml.safe_load(f)
    kinds = sorted({d["kind"] for d in docs})
    print(f"  rendered {len(docs)} objects: {', '.join(kinds)}")
    for d in docs:
        md = d.get("metadata", {})
        name = md.get("name", "")
        check(re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name) and len(name) <= 253,
              f"{d['kind']} name {name!r} is a valid object name")
    release_ns = "default"

    if v["mode"] == "sidecar":
        allowed = {"ConfigMap", "PodMonitor", "PrometheusRule", "CustomResourceDefinition"}
        check(set(kinds) <= allowed, f"sidecar mode renders only {sorted(allowed)}")
        cms = find(docs, "ConfigMap", "-routes")
        if check(len(cms) == 1, "sidecar mode renders the routes ConfigMap"):
            r = yaml.safe_load(cms[0]["data"]["routes.yaml"])
            check(r["spec"]["backends"] == [{"address": f"127.0.0.1:{v['sidecar']['appPort']}"}],
                  f"route backend is 127.0.0.1:{v['sidecar']['appPort']}")
            check(r["metadata"]["name"] == v["sidecar"]["routeName"], "route name from sidecar.routeName")
            for k, val in v["sidecar"]["route"].items():
                check(r["spec"].get(k) == val, f"route spec.{k} from sidecar.route")
        if v["metrics"]["serviceMonitor"]["enabled"]:
            pm = find(docs, "PodMonitor")
            if check(len(pm) == 1, "PodMonitor rendered"):
                check(pm[0]["spec"]["selector"]["matchLabels"] == v["sidecar"]["podSelector"],
                      "PodMonitor selects sidecar.podSelector")
                check(pm[0]["spec"]["podMetricsEndpoints"][0]["port"] == "wsgate-metrics",
                      "PodMonitor scrapes port wsgate-metrics (the container snippet's metrics port name)")
        check_rules(docs, v, gateway=False)
        check_dashboards(docs, v, chart)
        return

    # ---- gateway mode
    deps = find(docs, "Deployment")
    if not check(len(deps) == 1, "one Deployment"):
        return
    dep = deps[0]
    full = dep["metadata"]["name"]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    args = c["args"]
    drain = v["drainTimeoutSeconds"]
    pre = v["lifecycle"]["preStopSleepSeconds"]
    check(args[0] == "run", "container runs `wsgate run`")
    for a in ["--listen=0.0.0.0:8080", "--metrics-listen=0.0.0.0:9090", "--admin-listen=127.0.0.1:9091", f"--drain-timeout={drain}s",
              f"--class={v['className']}", f"--log-format={v['logFormat']}",
              f"--access-log={v['accessLog']}"]:
        check(a in args, f"arg {a}")
    check(("--tls-listen=0.0.0.0:8443" in args) == v["tls"]["enabled"], "--tls-listen iff tls.enabled")
    ns_args = [a.split("=", 1)[1] for a in args if a.startswith("--namespace=")]
    check(ns_args == v["watchNamespaces"], f"--namespace flags {ns_args} == watchNamespaces")
    ls = v["limitsStore"]
    store_on = bool(ls["url"] or ls["existingSecret"]["name"])
    limit_args = [a for a in args if a.startswith("--limits-")]
    if store_on:
        want = [f"--limits-store-mode={ls['mode']}", f"--limits-store-timeout={ls['timeout']}",
                f"--limits-heartbeat={ls['heartbeat']}", f"--limits-stale-after={ls['staleAfter']}",
                f"--limits-on-store-error={ls['onStoreError']}"]
        if not ls["existingSecret"]["name"]:
            want.insert(0, f"--limits-store={ls['url']}")
        check(limit_args == want, f"--limits-* flags {limit_args} == limitsStore")
    else:
        check(limit_args == [], "no --limits-* flag without limitsStore")
    store_env = [e for e in c["env"] if e["name"] == "WSGATE_LIMITS_STORE"]
    want_env = [{"name": "WSGATE_LIMITS_STORE", "valueFrom": {"secretKeyRef": dict(ls["existingSecret"])}}] \
        if ls["existingSecret"]["name"] else []
    check(store_env == want_env, f"WSGATE_LIMITS_STORE {store_env} from limitsStore.existingSecret")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    want_ports = {"http": 8080, "metrics": 9090, **({"https": 8443} if v["tls"]["enabled"] else {})}
    check(ports == want_ports, f"container ports {ports}")
    check(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}, "liveness GET /healthz on metrics")
    check(c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}, "readiness GET /readyz on metrics")
    env = {e["name"]: e for e in c["env"]}
    check(env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
          "POD_NAME from the downward API")
    check(env.get("POD_NAMESPACE", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
          == "metadata.namespace", "POD_NAMESPACE from the downward API")
    check(env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
          == "spec.nodeName", "NODE_NAME from the downward API (k8s.node.name of traces)")
    tr = v["tracing"]
    otel = [a for a in args if a.startswith("--otel-")]
    if tr["endpoint"]:
        want = [f"--otel-endpoint={tr['endpoint']}", f"--otel-protocol={tr['protocol']}",
                f"--otel-sampling-ratio={tr['samplingRatio']}"]
        check(otel == want, f"tracing flags {otel} == {want}")
    else:
        check(otel == [], "no --otel-* flag while tracing.endpoint is empty")
    attrs = ",".join(f"{k}={val}" for k, val in sorted(tr["resourceAttributes"].items()))
    check(env.get("OTEL_RESOURCE_ATTRIBUTES", {}).get("value", "") == attrs,
          f"OTEL_RESOURCE_ATTRIBUTES {attrs!r} from tracing.resourceAttributes")
    tgp = pod["terminationGracePeriodSeconds"]
    check(tgp == drain + pre + 15 and tgp > drain,
          f"terminationGracePeriodSeconds {tgp} == drain {drain} + preStop {pre} + 15")
    if pre:
        check(c["lifecycle"]["preStop"] == {"sleep": {"seconds": pre}}, "preStop sleep hook")
    sc = c["securityContext"]
    psc = pod["securityContext"]
    check(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation: false")
    check(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem: true")
    check(sc.get("runAsNonRoot") is True and psc.get("runAsNonRoot") is True, "runAsNonRoot (pod and container)")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities drop ALL")
    check(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
          and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "seccomp RuntimeDefault")
    check(psc.get("runAsUser") == 65532, "runs as 65532 (distroless nonroot)")
    check(bool(c.get("resources", {}).get("requests")), "resource requests set")
    if v["autoscaling"]["enabled"]:
        check("replicas" not in dep["spec"], "no spec.replicas with an HPA")
        hpa = find(docs, "HorizontalPodAutoscaler")
        if check(len(hpa) == 1, "HorizontalPodAutoscaler rendered"):
            check(hpa[0]["spec"]["scaleTargetRef"]["name"] == full, "HPA targets the Deployment")
            check(len(hpa[0]["spec"]["metrics"]) >= 1, "HPA has a metric")
    else:
        check(dep["spec"].get("replicas") == v["replicaCount"], "replicas == replicaCount")
        check(not find(docs, "HorizontalPodAutoscaler"), "no HPA")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    check(all(pod_labels.get(k) == val for k, val in dep["spec"]["selector"]["matchLabels"].items()),
          "Deployment selector matches its Pod labels")

    # ServiceAccount
    sa = pod["serviceAccountName"]
    check(len(find(docs, "ServiceAccount")) == (1 if v["serviceAccount"]["create"] else 0), "ServiceAccount")

    # Services
    svc = [s for s in find(docs, "Service") if s["metadata"]["name"] == full]
    msvc = find(docs, "Service", "-metrics")
    if check(len(svc) == 1 and len(msvc) == 1, "proxy and metrics Services"):
        s = svc[0]["spec"]
        check(s["type"] == v["service"]["type"], f"Service type {s['type']}")
        check(s.get("externalTrafficPolicy", "") == (v["service"]["externalTrafficPolicy"]
                                                    if s["type"] != "ClusterIP" else ""),
              "externalTrafficPolicy from values")
        names = sorted(p["name"] for p in s["ports"])
        check(names == sorted(["http"] + (["https"] if v["tls"]["enabled"] else [])),
              f"proxy Service ports {names} (admin not exposed)")
        check(all(pod_labels.get(k) == val for k, val in s["selector"].items()), "proxy Service selects the Pods")
        ms = msvc[0]["spec"]
        check(ms["type"] == "ClusterIP" and [p["targetPort"] for p in ms["ports"]] == ["metrics"],
              "metrics Service: ClusterIP to port metrics")

    # RBAC from the rule files
    def subjects_ok(b):
        return b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": release_ns}]

    # The Gateway API's own ClusterRole (its objects are read cluster-wide) and the
    # Role for the Gateways' Services, checked on their own below.
    gw_cr = [d for d in find(docs, "ClusterRole") if d["metadata"]["name"].endswith("-gateway-api")]
    gw_crb = [d for d in find(docs, "ClusterRoleBinding") if d["metadata"]["name"].endswith("-gateway-api")]
    docs_rbac = [d for d in docs if d not in gw_cr and d not in gw_crb]
    if v["gatewayAPI"]["enabled"]:
        check(len(gw_cr) == 1 and gw_cr[0]["rules"] == gateway_rules, "Gateway API ClusterRole == files/gateway-api-rules.yaml")
        check(len(gw_crb) == 1 and subjects_ok(gw_crb[0]), "Gateway API ClusterRoleBinding binds the ServiceAccount")
        gr = find(docs, "Role", "-gateway-services", namespace=release_ns)
        check(len(gr) == 1 and gr[0]["rules"] == gateway_service_rules,
              "Gateway Services Role in the release namespace == files/gateway-service-rules.yaml")
        check(any(a.startswith("--gateway-pod-selector=") for a in args), "--gateway-pod-selector passed")
    else:
        check(not gw_cr and "--gateway-api=false" in args, "Gateway API off: no ClusterRole, --gateway-api=false")
    if v["watchNamespaces"]:
        check(not find(docs_rbac, "ClusterRole") and not find(docs_rbac, "ClusterRoleBinding"),
              "no ClusterRole/Binding with watchNamespaces (but the Gateway API's)")
        for ns in v["watchNamespaces"]:
            r = find(docs, "Role", namespace=ns)
            b = find(docs, "RoleBinding", namespace=ns)
            check(len(r) == 1 and r[0]["rules"] == rules, f"Role in {ns} == files/rbac-rules.yaml")
            check(len(b) == 1 and subjects_ok(b[0]) and b[0]["roleRef"]["name"] == r[0]["metadata"]["name"],
                  f"RoleBinding in {ns} binds the ServiceAccount")
    else:
        cr = find(docs_rbac, "ClusterRole")
        crb = find(docs_rbac, "ClusterRoleBinding")
        check(len(cr) == 1 and cr[0]["rules"] == rules, "ClusterRole rules == files/rbac-rules.yaml")
        check(len(crb) == 1 and subjects_ok(crb[0]), "ClusterRoleBinding binds the ServiceAccount")
    lr = find(docs, "Role", "-leader-election", namespace=release_ns)
    check(len(lr) == 1 and lr[0]["rules"] == lease_rules,
          "Lease Role in the release namespace == files/leader-election-rules.yaml")
    lease_arg = [a for a in args if a.startswith("--lease-name=")]
    check(lease_arg == [f"--lease-name={v['leaderElection']['leaseName'] or full}"], f"{lease_arg}")

    # PDB
    pdb = find(docs, "PodDisruptionBudget")
    if v["podDisruptionBudget"]["enabled"]:
        if check(len(pdb) == 1, "PodDisruptionBudget rendered"):
            want = ({"minAvailable": v["podDisruptionBudget"]["minAvailable"]}
                    if v["podDisruptionBudget"]["minAvailable"] is not None
                    else {"maxUnavailable": v["podDisruptionBudget"]["maxUnavailable"]})
            got = {k: pdb[0]["spec"][k] for k in ("minAvailable", "maxUnavailable") if k in pdb[0]["spec"]}
            check(got == want, f"PDB {got}")
    # CRD as a template
    crds = find(docs, "CustomResourceDefinition")
    if v["crds"]["manage"]:
        if check(len(crds) == 2, "crds.manage renders both CRDs"):
            check(crds[0]["spec"] == crd["spec"], "templated CRD spec == crds/websocketroute.yaml")
            check(crds[1]["spec"] == policy_crd["spec"], "templated CRD spec == crds/websocketpolicy.yaml")
            check(all(c["metadata"]["annotations"].get("helm.sh/resource-policy") == "keep" for c in crds),
                  "templated CRDs are kept on uninstall")
    else:
        check(not crds, "CRD not templated (it is in crds/)")
    # Monitoring
    sm = find(docs, "ServiceMonitor")
    if v["metrics"]["serviceMonitor"]["enabled"]:
        if check(len(sm) == 1, "ServiceMonitor rendered") and msvc:
            sel = sm[0]["spec"]["selector"]["matchLabels"]
            mlabels = msvc[0]["metadata"]["labels"]
            check(all(mlabels.get(k) == val for k, val in sel.items()), "ServiceMonitor selects the metrics Service")
            check(not all(svc[0]["metadata"]["labels"].get(k) == val for k, val in sel.items()),
                  "ServiceMonitor does not select the proxy Service")
            check(sm[0]["spec"]["endpoints"][0]["port"] == "metrics", "ServiceMonitor scrapes port metrics")
            check(sm[0]["spec"]["endpoints"][0]["honorLabels"] is True, "honorLabels keeps the route namespace")
    else:
        check(not sm, "no ServiceMonitor")
    check_rules(docs, v, gateway=True, job=msvc[0]["metadata"]["name"] if msvc else None)
    check_dashboards(docs, v, chart)


def check_rules(docs, v, gateway, job=None):
    pr = find(docs, "PrometheusRule")
    if not v["metrics"]["prometheusRule"]["enabled"]:
        check(not pr, "no PrometheusRule")
        return
    if not check(len(pr) == 1, "PrometheusRule rendered"):
        return
    rules = [r for g in pr[0]["spec"]["groups"] for r in g["rules"]]
    names = sorted({r["alert"] for r in rules})
    want = {"WsgateNoRoutes", "WsgateConfigReloadErrors", "WsgatePongTimeoutSpike",
            "WsgateRouteNearConnectionLimit"}
    if gateway:
        want |= {"WsgateStatusNotConverging", "WsgateControllerOutOfSync"}
    check(set(names) == want, f"alerts {names}")
    if job:
        check(all(f'job="{job}"' in r["expr"] for r in rules), f'every alert is scoped to job="{job}"')
    near = [r for r in rules if r["alert"] == "WsgateRouteNearConnectionLimit"]
    a = v["metrics"]["prometheusRule"]["alerts"]["connectionsNearLimit"]
    check(len(near) == len(a["routes"]) + (1 if a["threshold"] > 0 else 0),
          f"{len(near)} connection-limit rules (one per override + default)")
    for o in a["routes"]:
        check(any(f'route="{o["route"]}"' in r["expr"] and f'> {o["threshold"]}' in r["expr"] for r in near),
              f"override rule for {o['namespace']}/{o['route']} > {o['threshold']}")
    extra = v["metrics"]["prometheusRule"]["additionalLabels"]
    check(all(all(r["labels"].get(k) == val for k, val in extra.items()) and r["labels"].get("severity")
              for r in rules), "every alert has a severity and the additional labels")


def check_dashboards(docs, v, chart):
    cms = find(docs, "ConfigMap", "-dashboards")
    if not v["dashboards"]["enabled"]:
        check(not cms, "no dashboards ConfigMap")
        return
    if not check(len(cms) == 1, "dashboards ConfigMap rendered"):
        return
    cm = cms[0]
    check(cm["metadata"]["labels"].get("grafana_dashboard") == "1", 'label grafana_dashboard: "1"')
    if v["dashboards"]["namespace"]:
        check(cm["metadata"]["namespace"] == v["dashboards"]["namespace"], "dashboards.namespace")
    files = sorted(f for f in os.listdir(os.path.join(chart, "dashboards")) if f.endswith(".json"))
    check(sorted(cm["data"]) == files, f"ConfigMap holds {files}")
    for f in files:
        with open(os.path.join(chart, "dashboards", f)) as fh:
            check(json.loads(cm["data"][f]) == json.load(fh), f"{f} carried unchanged")


def cmd_routes(rendered, suffix):
    for d in load_docs(rendered):
        if d.get("kind") == "ConfigMap" and d["metadata"]["name"].endswith(suffix):
            sys.stdout.write(d["data"]["routes.yaml"])
            return 0
    print(f"chartcheck: no ConfigMap named *{suffix} in {rendered}", file=sys.stderr)
    return 1


# ---------------------------------------------------------------- metrics used

def walk_strings(x, key=None):
    if isinstance(x, dict):
        for k, val in x.items():
            yield from walk_strings(val, k)
    elif isinstance(x, list):
        for val in x:
            yield from walk_strings(val, key)
    elif isinstance(x, str):
        yield key, x


def cmd_queries(chart, rendered_files):
    out = []
    ddir = os.path.join(chart, "dashboards")
    for f in sorted(os.listdir(ddir)):
        if not f.endswith(".json"):
            continue
        with open(os.path.join(ddir, f)) as fh:
            dash = json.load(fh)
        seen = set()
        for key, s in walk_strings(dash):
            if "wsgate_" in s and key in ("expr", "query", "definition") and s not in seen:
                seen.add(s)
                out.append({"source": f"dashboards/{f}", "expr": s})
    for r in rendered_files:
        for d in load_docs(r):
            if d.get("kind") != "PrometheusRule":
                continue
            for g in d["spec"]["groups"]:
                for rule in g["rules"]:
                    out.append({"source": f"PrometheusRule {d['metadata']['name']} ({os.path.basename(r)}) "
                                          f"{rule.get('alert') or rule.get('record')}",
                                "expr": rule["expr"]})
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+\S+")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
# Labels Prometheus attaches to every scraped series (target labels).
TARGET_LABELS = {"job", "instance", "pod", "container", "endpoint", "service"}


def parse_exposition(paths):
    labels = {}   # name -> {label -> set(values)}
    types = {}
    for p in paths:
        with open(p) as f:
            for line in f:
                if line.startswith("# TYPE "):
                    _, _, name, typ = line.split(None, 3)
                    types[name] = typ.strip()
                    continue
                if line.startswith("#") or not line.strip():
                    continue
                m = SAMPLE.match(line)
                if not m:
                    continue
                d = labels.setdefault(m.group(1), {})
                for k, val in LABEL.findall(m.group(3) or ""):
                    d.setdefault(k, set()).add(val)
    return labels, types


SELECTOR = re.compile(r"\b(wsgate_[a-zA-Z0-9_]+)\s*(\{([^}]*)\})?")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def cmd_metrics(queries_file, expositions, skip):
    with open(queries_file) as f:
        queries = json.load(f)
    labels, types = parse_exposition(expositions)
    exported = sorted(n for n in labels if n.startswith("wsgate_"))
    print(f"  {len(exported)} wsgate_* sample names exported by {len(expositions)} exposition(s)")
    used = {}
    problems = []
    notes = []
    for q in queries:
        expr, src = q["expr"], q["source"]
        names_here = []
        for m in SELECTOR.finditer(expr):
            name = m.group(1)
            names_here.append(name)
            used.setdefault(name, set()).add(src)
            if name not in labels:
                continue
            for lab, op, val in MATCHER.findall(m.group(3) or ""):
                if lab in TARGET_LABELS:
                    continue
                if lab not in labels[name]:
                    problems.append(f"{src}: {name} has no label {lab!r} (query: {expr.strip()[:120]})")
                elif op == "=" and "$" not in val and lab not in ("namespace", "route") and val not in labels[name][lab]:
                    notes.append(f"{name}{{{lab}=\"{val}\"}} not observed in this run (used by {src})")
        present = [n for n in names_here if n in labels]
        for kw, group in GROUPING.findall(expr):
            for lab in [x.strip() for x in group.split(",") if x.strip()]:
                if lab in TARGET_LABELS:
                    continue
                if lab == "le" and any(n.endswith("_bucket") for n in names_here):
                    continue
                if present and not any(lab in labels[n] for n in present):
                    problems.append(f"{src}: `{kw} ({group})`: label {lab!r} is on none of {sorted(set(present))}")
    missing = []
    for name in sorted(used):
        if name in labels:
            kind = types.get(re.sub(r"_(bucket|sum|count)$", "", name)) or types.get(name, "?")
            print(f"  ok   {name} ({kind}; labels: {', '.join(sorted(labels[name])) or '-'})")
        elif name in skip:
            print(f"  SKIP {name}: not exported by this kind of instance (checked elsewhere)")
        else:
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            hint = ""
            if types.get(name) == "histogram":
                hint = f" ({name} is a histogram: query {name}_bucket/_sum/_count)"
            elif base != name and base in types:
                hint = f" ({base} is a {types[base]})"
            missing.append(name)
            print(f"  FAIL {name}: not exported{hint}; used by: {'; '.join(sorted(used[name]))}")
    for p in problems:
        print(f"  FAIL {p}")
    for n in sorted(set(notes)):
        print(f"  note {n}")
    unused = sorted({re.sub(r"_(bucket|sum|count)$", "", n) for n in exported}
                    - {re.sub(r"_(bucket|sum|count)$", "", n) for n in used})
    if unused:
        print(f"  note exported but used by no panel or alert: {', '.join(unused)}")
    print(f"  {len(used)} metric names used, {len(missing)} missing, {len(problems)} label problems, "
          f"{len([n for n in used if n in skip and n not in labels])} skipped")
    return 1 if missing or problems else 0


# ---------------------------------------------------------------- WebSocket probe

def ws_probe(url, message=None, idle=None, expect_status=101, timeout=10.0, headers=()):
    u = urlparse(url)
    host, port = u.hostname, u.port or 80
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    key = base64.b64encode(os.urandom(16)).decode()
    s = socket.create_connection((host, port), timeout=timeout)
    extra = "".join(f"{h}\r\n" for h in headers)
    req = (f"GET {path} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n")
    s.sendall(req.encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit(f"ws: connection closed during the handshake (got {buf!r})")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {ln.split(":", 1)[0].strip().lower(): ln.split(":", 1)[1].strip() for ln in lines[1:] if ":" in ln}
    print(f"ws: {lines[0]}")
    if status != expect_status:
        print(f"ws: expected status {expect_status}, got {status}")
        return 1
    if status != 101:
        return 0
    accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
    if hdrs.get("sec-websocket-accept") != accept:
        print(f"ws: bad Sec-WebSocket-Accept {hdrs.get('sec-websocket-accept')!r}, want {accept!r}")
        return 1
    print("ws: Sec-WebSocket-Accept matches")
    reader = FrameReader(s, rest)

    def send(opcode, payload):
        mask = os.urandom(4)
        hdr = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            hdr += bytes([0x80 | n])
        elif n < 65536:
            hdr += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            hdr += bytes([0x80 | 127]) + struct.pack(">Q", n)
        s.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    if message is not None:
        send(0x1, message.encode())
        while True:
            op, data = reader.frame()
            if op == 0x9:  # the proxy's ping: answer it
                send(0xA, data)
                continue
            break
        if op != 0x1 or data.decode() != message:
            print(f"ws: expected the echo of {message!r}, got opcode {op} {data!r}")
            return 1
        print(f"ws: echo received: {data.decode()!r}")
    if idle is not None:
        # Never answer pings: the proxy must find this leg dead and close it.
        s.settimeout(idle)
        pings = 0
        t0 = time.time()
        try:
            while True:
                op, data = reader.frame()
                if op == 0x9:
                    pings += 1
                    continue
                if op == 0x8:
                    code = struct.unpack(">H", data[:2])[0] if len(data) >= 2 else None
                    print(f"ws: proxy closed after {time.time() - t0:.1f}s with code {code} "
                          f"({pings} ping(s) ignored): {data[2:].decode(errors='replace')!r}")
                    return 0 if pings else 1
        except (socket.timeout, ConnectionError) as e:
            print(f"ws: no close from the proxy within {idle}s ({pings} pings): {e}")
            return 1
    send(0x8, struct.pack(">H", 1000))
    try:
        while True:
            op, data = reader.frame()
            if op == 0x8:
                print("ws: closed with 1000")
                break
    except (socket.timeout, ConnectionError, EOFError):
        pass
    s.close()
    return 0


class FrameReader:
    def __init__(self, sock, pending=b""):
        self.s, self.buf = sock, pending

    def need(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def frame(self):
        b0, b1 = self.need(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", self.need(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", self.need(8))[0]
        mask = self.need(4) if b1 & 0x80 else None
        data = self.need(n)
        if mask:
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        return b0 & 0x0F, data


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    print(" ".join(map(str, ports)))
    return 0


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "render" and len(args) == 3:
        cmd_render(*args)
        print(f"  {len(PASSED)} checks passed, {len(FAILURES)} failed"
              + ("" if VERBOSE else " (CHARTCHECK_VERBOSE=1 lists them)"))
        return 1 if FAILURES else 0
    if cmd == "routes" and len(args) == 2:
        return cmd_routes(*args)
    if cmd == "queries" and len(args) >= 2:
        return cmd_queries(args[0], args[1:])
    if cmd == "metrics" and len(args) >= 2:
        skip, files, it = set(), [], iter(args[1:])
        for a in it:
            if a == "--skip":
                skip.add(next(it))
            else:
                files.append(a)
        return cmd_metrics(args[0], files, skip)
    if cmd == "ws" and args:
        url, opts, it = args[0], {}, iter(args[1:])
        hdrs = []
        for a in it:
            if a == "--message":
                opts["message"] = next(it)
            elif a == "--idle":
                opts["idle"] = float(next(it))
            elif a == "--expect-status":
                opts["expect_status"] = int(next(it))
            elif a == "--header":
                hdrs.append(next(it))
            else:
                print(f"ws: unknown option {a}", file=sys.stderr)
                return 2
        try:
            return ws_probe(url, headers=hdrs, **opts)
        except (OSError, EOFError) as e:
            print(f"ws: {url}: {e}")
            return 1
    if cmd == "free-ports" and len(args) == 1:
        return free_ports(int(args[0]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
