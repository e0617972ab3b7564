#!/usr/bin/env python3
"""Assemble bench/run.sh's per-proxy result files into a table and a JSON file.

usage: report.py WORKDIR OUT.json
       report.py --routes ROUTES.json     (one step's summary lines)
"""
import json
import os
import sys

PROXIES = ["wsgate", "nginx", "haproxy-http", "haproxy-tcp", "wsgate-limited", "wsgate-nolog"]
# PRODUCT.md "Performance targets": the reference run's figures.
REFERENCE = {
    "nginx": {"mem_kb_per_tunnel": 18.2, "cpu_s_per_million": 1.56},
    "haproxy-http": {"mem_kb_per_tunnel": 4.7, "cpu_s_per_million": 1.32},
    "haproxy-tcp": {"mem_kb_per_tunnel": 3.4, "cpu_s_per_million": 1.08},
}


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def routes_lines(d):
    """The routes-at-scale step's figures, as printed."""
    return [
        f"   {d['routes']} routes: {d['anon_kb_per_route']:.2f} KiB per route (RSS {d['rss_kb_per_route']:.2f}); live "
        f"{d['first_load_live_seconds']:.3f}s after the file was written, a reload with one route changed {d['reload_live_seconds']:.3f}s "
        f"(both include the file watcher's 150 ms settle)",
        f"   /metrics: {d['metrics_bytes_no_traffic']/2**20:.3f} MiB with no traffic, {d['metrics_bytes_one_open_tunnel_each']/2**20:.2f} MiB "
        f"with one open tunnel on each route, {d['metrics_bytes_after_one_tunnel_each']/2**20:.2f} MiB after they closed "
        f"({d['series_after_one_tunnel_each']} series, {d['metrics_gzip_bytes_after_one_tunnel_each']/2**20:.2f} MiB gzipped); "
        f"{d['anon_kb_per_route_after_traffic']:.2f} KiB per route then; tunnels {d['tunnels_ok']} ok, {d['tunnel_errors']} failed",
    ]


def collect(work):
    out = {}
    for name in PROXIES:
        d = os.path.join(work, name)
        if not os.path.isdir(d):
            continue
        st = load(os.path.join(d, "status.json")) or {"status": "failed", "reason": "no status"}
        idle = load(os.path.join(d, "idle.json"))
        tp = load(os.path.join(d, "throughput.json"))
        tpp = load(os.path.join(d, "throughput-paced.json"))
        lp = load(os.path.join(d, "latency.json"))
        hs = load(os.path.join(d, "handshakes.json"))
        r = {"status": st.get("status"), "reason": st.get("reason"), "threads": st.get("threads")}
        ramp = load(os.path.join(d, "idle-ramp.json"))
        if ramp:
            r["memory_ramp"] = {
                "tunnels": ramp["opened"],
                "ramp_seconds": ramp.get("ramp_seconds"),
                "anon_kib_per_tunnel": round(ramp["anon_kb_per_tunnel"], 3),
                "rss_kib_per_tunnel": round(ramp["rss_kb_per_tunnel"], 3),
                "anon_kib_left_after_close": ramp.get("anon_kb_left_after_close"),
                "rss_kib_left_after_close": ramp.get("rss_kb_left_after_close"),
            }
        if idle:
            r["memory_left_after_close_kib"] = {"anon": idle.get("anon_kb_left_after_close"),
                                                "rss": idle.get("rss_kb_left_after_close")}
            r["memory"] = {
                "tunnels": idle["opened"],
                "requested": idle["n"],
                "failed": idle["failed"],
                "dropped_while_settling": idle["dropped_while_settling"],
                "open_seconds": round(idle["open_seconds"], 2),
                "anon_kib_per_tunnel": round(idle["anon_kb_per_tunnel"], 3),
                "rss_kib_per_tunnel": round(idle["rss_kb_per_tunnel"], 3),
                "private_kib_per_tunnel": round(idle["private_kb_per_tunnel"], 3),
                "before": idle.get("proxy_before"),
                "after": idle.get("proxy_after"),
            }
        for key, t in (("cpu", tp), ("cpu_paced", tpp)):
            if t:
                r[key] = {
                    "cpu_s_per_million_relayed": round(t["cpu_s_per_million_relayed"], 4),
                    "relayed": t["relayed"],
                    "seconds": round(t["seconds"], 2),
                    "relayed_per_s": round(t["relayed_per_s"]),
                    "offered_rate_sent_per_s": t.get("rate", 0),
                    "proxy_cpu_s": round(t["proxy_cpu_s"], 2),
                    "proxy_cores_busy": round(t["proxy_cpu_util"], 2),
                    "machine_busy_cores": round(t.get("machine_busy_cores", 0), 2),
                    "foreign_busy_cores": round(t.get("foreign_busy_cores", 0), 2),
                    "bounded_by": t["bounded_by"],
                    "errors": t["error_count"],
                    "bad_echoes": t["bad_echoes"],
                }
        if lp:
            b = lp.get("baseline") or {}
            r["latency"] = {
                "p50_us": round(lp["p50_us"], 1), "p99_us": round(lp["p99_us"], 1),
                "p999_us": round(lp["p999_us"], 1), "samples": lp["samples"], "errors": lp["error_count"],
                "machine_busy_cores": round(lp.get("machine_busy_cores", 0), 2),
            }
            if b:
                r["latency"]["direct_p50_us"] = round(b["p50_us"], 1)
                r["latency"]["direct_p99_us"] = round(b["p99_us"], 1)
                r["latency"]["direct_p999_us"] = round(b["p999_us"], 1)
                r["latency"]["added_p50_us"] = round(lp["p50_us"] - b["p50_us"], 1)
                r["latency"]["added_p99_us"] = round(lp["p99_us"] - b["p99_us"], 1)
        if hs:
            r["handshakes"] = {
                "per_s": round(hs["per_s"]), "count": hs["handshakes"], "seconds": round(hs["seconds"], 2),
                "errors": hs["error_count"], "error_samples": hs.get("errors") or [],
                "proxy_cpu_us_per_handshake": round(hs["proxy_cpu_us_per_handshake"], 1),
                "machine_busy_cores": round(hs.get("machine_busy_cores", 0), 2),
                "foreign_busy_cores": round(hs.get("foreign_busy_cores", 0), 2),
            }
        b0, b1 = st.get("backend_stats_before") or {}, st.get("backend_stats_after_idle") or {}
        if b0 and b1:
            up = b1.get("upgrades", 0) - b0.get("upgrades", 0)
            xff = b1.get("with_x_forwarded_for", 0) - b0.get("with_x_forwarded_for", 0)
            r["backend_saw"] = {"upgrades_during_idle_phase": up, "with_x_forwarded_for": xff}
        out[name] = r
    return out


H2_PROXIES = ["wsgate", "haproxy-h2", "nginx"]


def h2_collect(work):
    """The HTTP/2 rows (run.sh's h2 step): WebSockets as extended CONNECT streams."""
    out = {}
    for name in H2_PROXIES:
        d = os.path.join(work, "h2", name)
        if not os.path.isdir(d):
            continue
        st = load(os.path.join(d, "status.json")) or {"status": "failed", "reason": "no status"}
        r = {"status": st.get("status"), "reason": st.get("reason")}
        idle = load(os.path.join(d, "idle.json"))
        if idle:
            r["memory"] = {"tunnels": idle["opened"], "requested": idle["n"], "connections": idle["h2_connections"],
                           "streams_per_connection": idle["streams_per_connection"],
                           "anon_kib_per_tunnel": round(idle["anon_kb_per_tunnel"], 3),
                           "rss_kib_per_tunnel": round(idle["rss_kb_per_tunnel"], 3),
                           "failed": idle["failed"], "dropped_while_settling": idle["dropped_while_settling"]}
        for key, f in (("cpu", "throughput.json"), ("cpu_paced", "throughput-paced.json")):
            tp = load(os.path.join(d, f))
            if tp:
                r[key] = {"cpu_s_per_million_relayed": round(tp["cpu_s_per_million_relayed"], 3),
                          "relayed_per_s": round(tp["relayed_per_s"]), "tunnels": tp["conns"],
                          "connections": tp["h2_connections"], "errors": tp["error_count"],
                          "foreign_busy_cores": round(tp.get("foreign_busy_cores", 0), 2)}
        hs = load(os.path.join(d, "handshakes.json"))
        if hs:
            r["handshakes"] = {"per_s": round(hs["per_s"]), "proxy_cpu_us_per_handshake": round(hs["proxy_cpu_us_per_handshake"], 1),
                               "workers": hs["workers"], "errors": hs["error_count"]}
        out[name] = r
    return out


def targets_22(res, h2):
    """Issue 22's targets: wsgate against HAProxy tcp (HTTP/1.1) and HAProxy h2."""
    g1 = lambda n, k, f: ((res.get(n) or {}).get(k) or {}).get(f)
    g2 = lambda n, k, f: ((h2.get(n) or {}).get(k) or {}).get(f)
    W, T, H = "wsgate", "haproxy-tcp", "haproxy-h2"
    rows = []
    def row(what, mine, theirs, limit, less=True):
        r = ratio(mine, theirs)
        ok = None if r is None else (r <= limit if less else r >= limit)
        rows.append((what, r, ok))
    row("CPU per plain handshake <= haproxy-tcp's", g1(W, "handshakes", "proxy_cpu_us_per_handshake"),
        g1(T, "handshakes", "proxy_cpu_us_per_handshake"), 1.0)
    row("CPU per relayed message <= 0.9 x haproxy-tcp's", g1(W, "cpu", "cpu_s_per_million_relayed"),
        g1(T, "cpu", "cpu_s_per_million_relayed"), 0.9)
    row("... paced", g1(W, "cpu_paced", "cpu_s_per_million_relayed"),
        g1(T, "cpu_paced", "cpu_s_per_million_relayed"), 0.9)
    row("p99 added latency <= haproxy-tcp's", g1(W, "latency", "added_p99_us"), g1(T, "latency", "added_p99_us"), 1.0)
    row("HTTP/2 CPU per relayed message <= haproxy-h2's", g2(W, "cpu", "cpu_s_per_million_relayed"),
        g2(H, "cpu", "cpu_s_per_million_relayed"), 1.0)
    row("HTTP/2 handshakes on 1 conn >= 1.2 x haproxy-h2's", g2(W, "handshakes", "per_s"), g2(H, "handshakes", "per_s"),
        1.2, less=False)
    return rows


def trailing_lines(rows):
    out = []
    for what, r, ok in rows:
        verdict = "n/a" if ok is None else ("met" if ok else "MISSED")
        shown = "—" if r is None else f"{r:.2f} x"
        out.append(f"  {what:<50}: {shown}  -> {verdict}")
    return out


EDGE = ["wsgate", "wsgate-pp2", "wsgate-cidr"]


def edge_collect(work):
    """run.sh's edge step: handshakes of wsgate as is, with PROXY protocol v2
    (wsgate-pp2) and with a 1,000-entry clientAccess list (wsgate-cidr); medians
    of the passes."""
    out = {}
    for name in EDGE:
        d = os.path.join(work, "edge", name)
        if not os.path.isdir(d):
            continue
        runs = [load(os.path.join(d, f)) for f in sorted(os.listdir(d))
                if f.startswith("handshakes-") and f.endswith(".json")]
        runs = [r for r in runs if r]
        st = load(os.path.join(d, "status.json")) or {}
        if not runs:
            out[name] = {"status": st.get("status", "failed"), "reason": st.get("reason")}
            continue
        out[name] = {"status": "ok", "passes": len(runs),
                     "per_s": round(median([r["per_s"] for r in runs])),
                     "proxy_cpu_us_per_handshake": round(median([r["proxy_cpu_us_per_handshake"] for r in runs]), 1),
                     "errors": sum(r["error_count"] for r in runs)}
    base = out.get("wsgate") or {}
    for name in ("wsgate-pp2", "wsgate-cidr"):
        r = out.get(name) or {}
        if r.get("status") == "ok" and base.get("status") == "ok":
            r["handshakes_vs_wsgate"] = round(r["per_s"] / base["per_s"] - 1, 4)
            r["cpu_per_handshake_vs_wsgate"] = round(r["proxy_cpu_us_per_handshake"] / base["proxy_cpu_us_per_handshake"] - 1, 4)
    return out


def edge_lines(edge):
    """The client's-address table, as printed."""
    if not edge:
        return []
    lines = ["", "The client's address (issue 19): handshakes/s and CPU µs per handshake, median of the passes"]
    what = {"wsgate": "as is", "wsgate-pp2": "--proxy-protocol v2 (a v2 header on every connection)",
            "wsgate-cidr": "clientAccess deny list of 1,000 CIDRs (no match: the whole list walked)"}
    for name, r in edge.items():
        if r.get("status") != "ok":
            lines.append(f"  {name:<12} {r.get('status')}: {(r.get('reason') or '')[:150]}")
            continue
        vs = ""
        if "handshakes_vs_wsgate" in r:
            ok = abs(r["handshakes_vs_wsgate"]) <= 0.05 and r["cpu_per_handshake_vs_wsgate"] <= 0.05
            vs = (f"  ({r['handshakes_vs_wsgate']:+.1%} handshakes/s, {r['cpu_per_handshake_vs_wsgate']:+.1%} CPU; "
                  f"target within 5% -> {'met' if ok else 'MISSED'})")
        err = f", {r['errors']} errors" if r.get("errors") else ""
        lines.append(f"  {name:<12} {r['per_s']:>6}/s  {r['proxy_cpu_us_per_handshake']:>6.1f} µs  {what[name]}{err}{vs}")
    return lines


def fleet_lines(fleet):
    """bench/fleet.sh's rows (issue 21), as printed."""
    if not fleet:
        return []
    lines = ["", "Fleet-wide limits (issue 21): handshakes/s and CPU µs per handshake, median of the passes; Redis on loopback"]
    for mode, what in (("off", "no fleet cap"), ("on", "fleet cap (route + client address)")):
        r = fleet.get(mode)
        if r:
            lines.append(f"  {mode:<4} {r['per_s']:>6}/s  {r['proxy_cpu_us_per_handshake']:>6.1f} µs  {what}")
    if "handshakes_on_vs_off" in fleet:
        ok = fleet["handshakes_on_vs_off"] >= -0.10
        lines.append(f"  with the cap: {fleet['handshakes_on_vs_off']:+.1%} handshakes/s, "
                     f"{fleet['cpu_per_handshake_on_vs_off']:+.1%} CPU per handshake "
                     f"(target: handshakes within 10% -> {'met' if ok else 'MISSED'})")
    for key, what in (("steady_state", "8 client addresses"),
                      ("steady_state_one_address_per_tunnel", "one address per tunnel")):
        st = fleet.get(key) or {}
        if st:
            lines.append(f"  steady state, {st['tunnels']} tunnels, {what} ({st['keys']} keys): "
                         f"{st['redis_ops_per_s_per_1000_tunnels']} Redis commands/s per 1,000 tunnels "
                         f"({st['evalsha_per_s_per_1000_tunnels']} EVALSHA/s)")
    return lines


def h2_lines(h2):
    """The HTTP/2 table, as printed."""
    if not h2:
        return []
    lines = ["", "HTTP/2 toward the client (h2c, WebSockets as RFC 8441 extended CONNECT streams; HTTP/1.1 to the backend)"]
    hdr = ["proxy", "KiB/idle tunnel (100/conn)", "CPU-s/M relayed", "CPU-s/M paced", "handshakes/s on 1 conn (CPU µs each)"]
    rows = []
    for name, r in h2.items():
        if r.get("status") == "n/a":
            rows.append([name] + [r.get("reason") or "n/a"] * 4)
            continue
        if r.get("status") != "ok":
            rows.append([name, "—", "—", "—", "—"])
            lines.append(f"  {name}: {r.get('status')}: {(r.get('reason') or '')[:150]}")
            continue
        m, c, cp, hs = (r.get(k) or {} for k in ("memory", "cpu", "cpu_paced", "handshakes"))
        rows.append([
            name,
            "—" if not m else f"{m['anon_kib_per_tunnel']:.2f} (rss {m['rss_kib_per_tunnel']:.2f})",
            "—" if not c else f"{c['cpu_s_per_million_relayed']:.2f} ({c['relayed_per_s']/1000:.0f}k/s)",
            "—" if not cp else f"{cp['cpu_s_per_million_relayed']:.2f} ({cp['relayed_per_s']/1000:.0f}k/s)",
            "—" if not hs else f"{hs['per_s']} ({hs['proxy_cpu_us_per_handshake']:.0f})",
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(hdr, *rows)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(hdr, widths)))
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))
    w = (h2.get("wsgate") or {}).get("memory")
    if w:
        verdict = "met" if w["anon_kib_per_tunnel"] <= 1 else "MISSED"
        lines.append(f"  target: wsgate <= 1 KiB per idle tunnel at 100 tunnels per HTTP/2 connection: "
                     f"{w['anon_kib_per_tunnel']:.2f} KiB ({w['tunnels']} tunnels on {w['connections']} connections)  -> {verdict}")
    for name, r in h2.items():
        for k in ("cpu", "cpu_paced", "handshakes"):
            if (r.get(k) or {}).get("errors"):
                lines.append(f"  warning: {name}: {r[k]['errors']} errors in {k}")
        m = r.get("memory") or {}
        if m and (m["failed"] or m["dropped_while_settling"]):
            lines.append(f"  warning: {name}: {m['failed']} tunnels failed to open, {m['dropped_while_settling']} dropped while settling")
    return lines


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def merge(items):
    """Median of every numeric leaf over rounds; other leaves from the first round."""
    items = [x for x in items if x is not None]
    if not items:
        return None
    if all(isinstance(x, dict) for x in items):
        keys = []
        for x in items:
            keys += [k for k in x if k not in keys]
        if "pids" in keys:  # raw /proc readings: keep the first round's
            return items[0]
        return {k: merge([x.get(k) for x in items]) for k in keys}
    if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in items):
        m = median(items)
        return round(m, 4) if isinstance(m, float) else m
    return items[0]


def collect_rounds(work):
    rounds = sorted((d for d in os.listdir(work) if d.startswith("round")), key=lambda d: int(d[5:]))
    per_round = [collect(os.path.join(work, d)) for d in rounds]
    res = {}
    for name in PROXIES:
        got = [r[name] for r in per_round if name in r]
        if not got:
            continue
        ok = [x for x in got if x.get("status") == "ok"]
        res[name] = merge(ok) if ok else got[0]
        if ok:
            res[name]["rounds_ok"] = len(ok)
    return res, per_round


def g(res, name, *keys):
    v = res.get(name)
    for k in keys:
        if not isinstance(v, dict) or k not in v:
            return None
        v = v[k]
    return v


def fmt(v, spec="{:.2f}", none="—"):
    return none if v is None else spec.format(v)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def main():
    work, out_path = sys.argv[1], sys.argv[2]
    meta = load(os.path.join(work, "meta.json")) or {}
    res, per_round = collect_rounds(work)
    h2 = h2_collect(work)
    edge = edge_collect(work)
    fleet = load(os.path.join(work, "fleet.json"))

    W = "wsgate"
    routes = load(os.path.join(work, "routes.json"))
    mem = lambda n: g(res, n, "memory", "anon_kib_per_tunnel")
    memramp = lambda n: g(res, n, "memory_ramp", "anon_kib_per_tunnel")
    cpu = lambda n: g(res, n, "cpu", "cpu_s_per_million_relayed")
    p99add = lambda n: g(res, n, "latency", "added_p99_us")
    p99 = lambda n: g(res, n, "latency", "p99_us")
    hsps = lambda n: g(res, n, "handshakes", "per_s")
    cpup = lambda n: g(res, n, "cpu_paced", "cpu_s_per_million_relayed")
    hscpu = lambda n: g(res, n, "handshakes", "proxy_cpu_us_per_handshake")

    comparisons = {}
    for other in ["nginx", "haproxy-http", "haproxy-tcp"]:
        comparisons["wsgate_vs_" + other] = {
            "memory_ratio": ratio(mem(W), mem(other)),
            "cpu_ratio": ratio(cpu(W), cpu(other)),
            "cpu_paced_ratio": ratio(cpup(W), cpup(other)),
            "p99_added_diff_us": None if p99add(W) is None or p99add(other) is None else p99add(W) - p99add(other),
            "handshakes_ratio": ratio(hsps(W), hsps(other)),
            "cpu_per_handshake_ratio": ratio(hscpu(W), hscpu(other)),
        }

    def verdict(ok):
        return None if ok is None else ("met" if ok else "MISSED")

    targets = {
        "memory_per_idle_tunnel_kib<=1.5": {"wsgate": mem(W), "verdict": verdict(None if mem(W) is None else mem(W) <= 1.5)},
        "memory_per_idle_tunnel_ramp_kib<=1.5": {"wsgate": memramp(W),
                                                 "verdict": verdict(None if memramp(W) is None else memramp(W) <= 1.5)},
        "routes_memory_kib_per_route<=4": {"wsgate": routes and routes["anon_kb_per_route"],
                                          "verdict": verdict(None if not routes else routes["anon_kb_per_route"] <= 4)},
        "routes_metrics_mib<=4": {"no_traffic": routes and routes["metrics_bytes_no_traffic"] / 2**20,
                                  "one_open_tunnel_each": routes and routes["metrics_bytes_one_open_tunnel_each"] / 2**20,
                                  "after_one_tunnel_each": routes and routes["metrics_bytes_after_one_tunnel_each"] / 2**20,
                                  "verdict": verdict(None if not routes else
                                                     routes["metrics_bytes_after_one_tunnel_each"] <= 4 * 2**20)},
        "routes_reload_live_s<=0.5": {"first_load": routes and routes["first_load_live_seconds"],
                                      "reload": routes and routes["reload_live_seconds"],
                                      "verdict": verdict(None if not routes else
                                                         max(routes["first_load_live_seconds"], routes["reload_live_seconds"]) <= 0.5)},
        "cpu<=0.8*haproxy_tcp": {"ratio": comparisons["wsgate_vs_haproxy-tcp"]["cpu_ratio"],
                                 "paced_ratio": comparisons["wsgate_vs_haproxy-tcp"]["cpu_paced_ratio"],
                                 "verdict": verdict(None if comparisons["wsgate_vs_haproxy-tcp"]["cpu_ratio"] is None
                                                    else comparisons["wsgate_vs_haproxy-tcp"]["cpu_ratio"] <= 0.8)},
        "p99_added<=haproxy_http": {"wsgate_us": p99add(W), "haproxy_http_us": p99add("haproxy-http"),
                                    "verdict": verdict(None if p99add(W) is None or p99add("haproxy-http") is None
                                                       else p99add(W) <= p99add("haproxy-http"))},
        "handshakes_per_s>=1.2*nginx": {"ratio": comparisons["wsgate_vs_nginx"]["handshakes_ratio"],
                                        "cpu_per_handshake_ratio": comparisons["wsgate_vs_nginx"]["cpu_per_handshake_ratio"],
                                        "verdict": verdict(None if comparisons["wsgate_vs_nginx"]["handshakes_ratio"] is None
                                                           or comparisons["wsgate_vs_nginx"]["cpu_per_handshake_ratio"] is None
                                                           else comparisons["wsgate_vs_nginx"]["handshakes_ratio"] >= 1.2
                                                           and comparisons["wsgate_vs_nginx"]["cpu_per_handshake_ratio"] <= 1.0)},
    }

    doc = {
        "meta": meta,
        "conventions": {
            "memory": "(sum over the proxy's processes of smaps_rollup 'Anonymous' after N idle tunnels are open and settled "
                      "minus before, after a warm-up) / tunnels open; KiB (the kernel's kB); VmRSS and Private deltas also given; "
                      "kernel socket buffers are not included. Each tunnel carried one 16-byte message each way before going idle.",
            "cpu": "proxy utime+stime (all its processes and threads, /proc/PID/stat) per million relayed 1 KiB binary messages; "
                   "a relayed message is one message crossing the proxy in one direction, so each client message echoed by the backend counts 2. "
                   "'cpu' = unpaced (each tunnel keeps `window` messages in flight, as fast as the machine goes: proxies batch reads); "
                   "'cpu_paced' = the same fixed offered rate for every proxy (each tunnel sends on its own schedule: about one message per wake-up).",
            "latency": "paced request/response round trips of 1 KiB messages (each worker: one round trip via the proxy and one straight "
                       "to the backend per interval, alternating order); added = proxy percentile minus direct percentile.",
            "handshakes": "parallel loops of: TCP connect, HTTP upgrade (101 + Sec-WebSocket-Accept checked by the client), Close 1000, "
                          "wait for the peer's Close, TCP close; completed cycles per second.",
        },
        "proxies": res,
        "per_round": per_round if len(per_round) > 1 else None,
        "reference_from_PRODUCT_md": REFERENCE,
        "comparisons": comparisons,
        "targets": targets,
        "routes": routes,
        "http2": h2,
        "client_address": edge,
        "fleet_limits": fleet,
    }
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")

    # ---- print ----
    p = print
    p()
    nr = meta.get("rounds", 1)
    p(f"wsgate benchmark ({meta.get('mode', '?')} mode{f', median of {nr} rounds' if nr > 1 else ''}) — {meta.get('date', '')}, kernel {meta.get('kernel', '')}, "
      f"{meta.get('cpus', '?')} x {meta.get('cpu_model', '?')}")
    p(f"nginx {meta.get('nginx_version', '?')}, haproxy {meta.get('haproxy_version', '?')}, "
      f"wsgate {meta.get('wsgate_bin') or '(none)'} (sha256 {meta.get('wsgate_sha256_16') or '?'}…) from {meta.get('wsgate_source') or '?'}; repo HEAD {meta.get('wsgate_commit', '?')}")
    tpm = meta.get("throughput", {})
    lat = meta.get("latency", {})
    hsm = meta.get("handshakes", {})
    p(f"idle tunnels N={meta.get('n')} (settle {meta.get('settle')}); throughput {tpm.get('conns')} tunnels x window {tpm.get('window')}, "
      f"<= {tpm.get('messages')} msgs sent (x2 relayed) or {tpm.get('duration')}; latency {lat.get('conns')} tunnels, "
      f"{lat.get('count')} round trips, 1 every {lat.get('interval')} per tunnel; handshakes {hsm.get('workers')} workers for {hsm.get('duration')}")
    p()
    hdr = ["proxy", "KiB/idle tunnel", "CPU-s/M relayed", "CPU-s/M paced", "p50 µs (+added)", "p99 µs (+added)",
           "handshakes/s (CPU µs each)"]
    rows = []
    models = []
    for name in PROXIES:
        if name not in res:
            continue
        r = res[name]
        if r.get("status") != "ok":
            rows.append([name, "—", "—", "—", "—", "—", "—"])
            models.append(f"  {name}: {r.get('status')}: {(r.get('reason') or '')[:150]}")
            continue
        models.append(f"  {name}: {r.get('threads') or ''}")
        m = r.get("memory") or {}
        memcell = "—" if not m else f"{m['anon_kib_per_tunnel']:.2f} (rss {m['rss_kib_per_tunnel']:.2f})"
        if m and m["tunnels"] < m["requested"]:
            memcell += f" [{m['tunnels']}/{m['requested']} open]"
        c = r.get("cpu") or {}
        cpucell = "—" if not c else f"{c['cpu_s_per_million_relayed']:.2f} ({c['relayed_per_s']/1000:.0f}k/s)"
        cp = r.get("cpu_paced") or {}
        cpupcell = "—" if not cp else f"{cp['cpu_s_per_million_relayed']:.2f} ({cp['relayed_per_s']/1000:.0f}k/s)"
        l = r.get("latency") or {}
        p50cell = "—" if not l else f"{l['p50_us']:.0f} ({l.get('added_p50_us', 0):+.0f})"
        p99cell = "—" if not l else f"{l['p99_us']:.0f} ({l.get('added_p99_us', 0):+.0f})"
        h = r.get("handshakes") or {}
        hcell = "—" if not h else f"{h['per_s']:.0f} ({h['proxy_cpu_us_per_handshake']:.0f})" + (f" [{h['errors']} err]" if h["errors"] else "")
        rows.append([name, memcell, cpucell, cpupcell, p50cell, p99cell, hcell])
    widths = [max(len(str(x[i])) for x in rows + [hdr]) for i in range(len(hdr))]
    line = lambda cells: "  ".join(str(c).ljust(widths[i]) for i, c in enumerate(cells)).rstrip()
    p(line(hdr))
    p(line(["-" * w for w in widths]))
    for row in rows:
        p(line(row))
    if len(per_round) > 1:
        p()
        p("per round (KiB/tunnel | CPU-s/M | CPU-s/M paced | p99 added µs | handshakes/s):")
        for name in PROXIES:
            vals = []
            for r in per_round:
                x = r.get(name) or {}
                vals.append(" | ".join([
                    fmt(g(r, name, "memory", "anon_kib_per_tunnel")), fmt(g(r, name, "cpu", "cpu_s_per_million_relayed")),
                    fmt(g(r, name, "cpu_paced", "cpu_s_per_million_relayed")), fmt(g(r, name, "latency", "added_p99_us"), "{:+.0f}"),
                    fmt(g(r, name, "handshakes", "per_s"), "{:.0f}")]))
            if any(name in r for r in per_round):
                p(f"  {name:13s} " + "   //   ".join(vals))
    p()
    p("thread models:")
    for mline in models:
        p(mline)
    p()
    p("reference run in PRODUCT.md: nginx 18.2 KB/tunnel, 1.56 CPU-s/M; haproxy-http 4.7 KB, 1.32 s; haproxy-tcp 3.4 KB, 1.08 s")
    p()
    p("wsgate vs the others (ratio = wsgate / other; latency = difference of added p99)")
    hdr2 = ["vs", "memory ratio", "CPU ratio", "CPU ratio paced", "p99 added diff µs", "handshakes ratio", "CPU/handshake ratio"]
    rows2 = []
    for other in ["nginx", "haproxy-http", "haproxy-tcp"]:
        c = comparisons["wsgate_vs_" + other]
        rows2.append([other, fmt(c["memory_ratio"]), fmt(c["cpu_ratio"]), fmt(c["cpu_paced_ratio"]),
                      fmt(c["p99_added_diff_us"], "{:+.0f}"), fmt(c["handshakes_ratio"]), fmt(c["cpu_per_handshake_ratio"])])
    widths = [max(len(str(x[i])) for x in rows2 + [hdr2]) for i in range(len(hdr2))]
    p(line(hdr2))
    p(line(["-" * w for w in widths]))
    for row in rows2:
        p(line(row))
    p()
    for line in h2_lines(h2):
        p(line)
    for line in edge_lines(edge):
        p(line)
    for line in fleet_lines(fleet):
        p(line)
    p()
    p("PRODUCT.md targets for wsgate (keepalive on)")
    t = targets
    p(f"  memory per idle tunnel <= 1.5 KiB          : {fmt(mem(W), '{:.2f} KiB')}  -> {t['memory_per_idle_tunnel_kib<=1.5']['verdict'] or 'n/a'}")
    t2 = targets["memory_per_idle_tunnel_ramp_kib<=1.5"]
    p(f"  ... the same tunnels arriving in a ramp    : {fmt(memramp(W), '{:.2f} KiB')}  -> {t2['verdict'] or 'n/a'}")
    left = (res.get(W) or {}).get("memory_left_after_close_kib") or {}
    if left.get("rss") is not None:
        p(f"  RSS back near baseline after close         : {left['rss']/1024:+.1f} MiB over the pre-open reading (burst)")
    p(f"  CPU per message <= 0.8 x haproxy-tcp       : {fmt(t['cpu<=0.8*haproxy_tcp']['ratio'], '{:.2f} x')} (paced: {fmt(t['cpu<=0.8*haproxy_tcp']['paced_ratio'], '{:.2f} x')})  -> {t['cpu<=0.8*haproxy_tcp']['verdict'] or 'n/a'}")
    p(f"  p99 added latency <= haproxy-http's        : {fmt(p99add(W), '{:+.0f} µs')} vs {fmt(p99add('haproxy-http'), '{:+.0f} µs')}  -> {t['p99_added<=haproxy_http']['verdict'] or 'n/a'}")
    t3 = t['handshakes_per_s>=1.2*nginx']
    p(f"  handshakes/s >= 1.2 x nginx's, CPU <= its : {fmt(t3['ratio'], '{:.2f} x')}, CPU {fmt(t3['cpu_per_handshake_ratio'], '{:.2f} x')}  -> {t3['verdict'] or 'n/a'}")
    if routes:
        p(f"  {routes['routes']} routes: <= 4 KiB per route           : {routes['anon_kb_per_route']:.2f} KiB  -> "
          f"{targets['routes_memory_kib_per_route<=4']['verdict']}")
        p(f"  {routes['routes']} routes: /metrics <= 4 MiB            : none {routes['metrics_bytes_no_traffic']/2**20:.3f}, one open tunnel each "
          f"{routes['metrics_bytes_one_open_tunnel_each']/2**20:.2f}, after they closed {routes['metrics_bytes_after_one_tunnel_each']/2**20:.2f} MiB"
          f"  -> {targets['routes_metrics_mib<=4']['verdict']}")
        p(f"  {routes['routes']} routes: reload live <= 0.5 s         : load {routes['first_load_live_seconds']:.3f} s, reload "
          f"{routes['reload_live_seconds']:.3f} s  -> {targets['routes_reload_live_s<=0.5']['verdict']}")
    p()
    p("Where wsgate trailed (issue 22) — ratios from this run; TLS and storm targets: bench/tls.sh, bench/storm.sh")
    for line in trailing_lines(targets_22(res, h2)):
        p(line)
    if meta.get("wsgate_note"):
        p(f"  wsgate: {meta['wsgate_note']}")
    warn = []
    for name, r in res.items():
        m = r.get("memory") or {}
        if m and (m["failed"] or m["dropped_while_settling"]):
            warn.append(f"{name}: {m['failed']} tunnels failed to open, {m['dropped_while_settling']} dropped while settling")
        for k in ("cpu", "cpu_paced", "latency", "handshakes"):
            e = (r.get(k) or {}).get("errors")
            if e:
                warn.append(f"{name}: {e} errors in {k}")
            fb = (r.get(k) or {}).get("foreign_busy_cores")
            # Connection churn makes kernel threads busy too, so handshakes are not judged.
            if fb and fb > 0.25 and k != "handshakes":
                warn.append(f"{name}: {fb:.2f} cores busy outside proxy, backend and client during {k} (other work on the machine?): figures skewed")
        bs = r.get("backend_saw")
        if bs and name != "haproxy-tcp" and bs["upgrades_during_idle_phase"] and bs["with_x_forwarded_for"] < bs["upgrades_during_idle_phase"]:
            warn.append(f"{name}: only {bs['with_x_forwarded_for']}/{bs['upgrades_during_idle_phase']} upgrades reached the backend with X-Forwarded-For")
    if (meta.get("machine_busy_cores_at_start") or 0) > 0.15:
        warn.append(f"machine was {meta['machine_busy_cores_at_start']:.2f} cores busy before the run started (someone else's load)")
    if warn:
        p()
        p("warnings:")
        for w in warn:
            p("  " + w)
    p()
    p(f"JSON: {out_path}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--routes":
        print("\n".join(routes_lines(load(sys.argv[2]))))
    else:
        main()
