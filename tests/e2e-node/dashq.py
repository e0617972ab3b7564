"""Runs every query of the chart's Grafana dashboards against a live Prometheus.

    dashq.py PROMETHEUS_URL DASHBOARD.json... [--rate-interval 30s]

Template variables are set as a user leaving them at "All" would ($job,
$namespace, $route = .*; $__rate_interval from the scrape interval). A query
passes when it returns at least one series and every label its legendFormat names
({{route}}, {{pod}}...) is on each series; a `label_values(METRIC, LABEL)`
variable passes when METRIC has series carrying LABEL. One line per query;
exit 1 when any fails.
"""

import json
import re
import sys
import urllib.parse
import urllib.request


def query(base, expr):
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(body)
    return body["data"]["result"]


def substitute(expr, rate_interval):
    expr = expr.replace("$__rate_interval", rate_interval)
    for var in ("job", "namespace", "route"):
        expr = expr.replace(f"${var}", ".*").replace(f"${{{var}}}", ".*")
    return expr


def main():
    args = sys.argv[1:]
    rate = "30s"
    if "--rate-interval" in args:
        i = args.index("--rate-interval")
        rate = args[i + 1]
        del args[i : i + 2]
    base, files = args[0].rstrip("/"), args[1:]
    failed = 0
    for path in files:
        dash = json.load(open(path))
        checks = []
        for var in dash.get("templating", {}).get("list", []):
            q = var.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q or "")
            if m:
                checks.append((f"variable ${var['name']}", m.group(1), [m.group(2)]))
        for panel in dash.get("panels", []):
            for t in panel.get("targets", []):
                legend = re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat") or "")
                checks.append((panel.get("title", "?"), t["expr"], legend))
        for title, expr, labels in checks:
            q = substitute(expr, rate)
            try:
                result = query(base, q)
            except Exception as e:  # noqa: BLE001 - report and go on
                print(f"FAIL {title}: {q}: {e}")
                failed += 1
                continue
            missing = sorted({l for s in result for l in labels if l not in s["metric"]})
            if not result or missing:
                why = "no data" if not result else f"series lack {missing}"
                print(f"FAIL {title}: {q}: {why}")
                failed += 1
            else:
                shown = ", ".join(sorted({" ".join(f"{l}={s['metric'][l]}" for l in labels) for s in result}))[:150]
                print(f"ok   {title}: {len(result)} series {shown}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
