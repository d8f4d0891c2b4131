"""Turns scripts/bench.sh's results into the ratio table, docs/BENCHMARKS.md's generated
section and docs/bench.svg. Standard library only."""

import datetime
import pathlib
import statistics
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- bench.sh: begin -->", "<!-- bench.sh: end -->"

# scenario: (poplar row, reference row, target requests/s ratio, p99 must be no worse)
# (inline, cache and origin: issue 15's targets; origin's stretch is 1.0)
TARGETS = {
    "static": ("poplar (404 from request_filter)", "nginx return 200", None, False),
    "inline": ("poplar hello inline", "wasmtime serve -S cli", 2.0, True),
    "cache": ("poplar cache hit", "nginx proxy_cache hit", 1.3, True),
    "origin": ("poplar origin route", "nginx proxy_pass", 0.8, True),
    "forward": ("poplar edge to region", "poplar region, direct", 0.6, False),
    "https": ("poplar cache hit, HTTPS", "nginx proxy_cache hit, HTTPS", 1.2, True),
    "https-origin": ("poplar origin route, HTTPS", "nginx proxy_pass, HTTPS", 1.0, True),
    "handshake": ("poplar, TLS handshake per request", "nginx, TLS handshake per request", 1.0, False),
    "h2": ("poplar cache hit, HTTP/2", "nginx proxy_cache hit, HTTP/2", 1.2, False),
    # Poplar against itself: what the access log and a scraped admin endpoint cost.
    "log": ("poplar cache hit, access log on", "poplar cache hit, no access log", 0.95, False),
    "metrics": ("poplar cache hit, scraped each second", "poplar cache hit, no admin", 0.97, False),
}

# scenario: (poplar row, Pingora-alone row, nginx row)
BARE = {
    "static": ("poplar (404 from request_filter)", "pingora alone, 200 from request_filter", "nginx return 200"),
    "origin": ("poplar origin route", "pingora alone, proxy", "nginx proxy_pass"),
}


def ms(latency: str) -> float:
    for unit, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if latency.endswith(unit):
            return float(latency[: -len(unit)]) * scale
    return float("nan")


def medians(lines):
    """One row per server: the median of its rounds for each measure, the spread of its
    requests/s, every round's socket errors, its largest RSS (all its processes)."""
    runs = {}
    for line in lines:
        scenario, server, rps, p50, p99, errors, rss, user, sys_ = line.split("\t")
        runs.setdefault((scenario, server), []).append(
            dict(rps=float(rps), p50=ms(p50), p99=ms(p99), errors=errors, rss=int(rss),
                 user=float(user), sys=float(sys_)))
    rows = []
    for (scenario, server), rs in runs.items():
        errors = sorted({r["errors"] for r in rs} - {"none"})
        rows.append(dict(scenario=scenario, server=server, rounds=len(rs),
                         rps=statistics.median(r["rps"] for r in rs),
                         rps_min=min(r["rps"] for r in rs), rps_max=max(r["rps"] for r in rs),
                         p50=statistics.median(r["p50"] for r in rs), p99=statistics.median(r["p99"] for r in rs),
                         errors="; ".join(errors) or "none", rss_mib=max(r["rss"] for r in rs) / 1024,
                         user=statistics.median(r["user"] for r in rs), sys=statistics.median(r["sys"] for r in rs)))
    return rows


def main() -> None:
    results, duration, connections, cores, kernel, wrk, nginx, wasmtime = sys.argv[1:9]
    mixed_file = sys.argv[9] if len(sys.argv) > 9 else None
    rate, mixed_connections, rounds = (sys.argv[10:13] + ["?", "?", "1"])[:3]
    rows = medians(pathlib.Path(results).read_text().splitlines())
    by_server = {r["server"]: r for r in rows}

    verdicts = []
    for scenario, (ours, ref, target, p99_rule) in TARGETS.items():
        a, b = by_server.get(ours), by_server.get(ref)
        if not a or not b:
            continue
        ratio = a["rps"] / b["rps"]
        met = target is None or (ratio >= target and (not p99_rule or a["p99"] <= b["p99"]))
        goal = "-" if target is None else f">= {target}" + (", p99 no worse" if p99_rule else "")
        verdicts.append((scenario, ratio, a["p99"], b["p99"], goal, "-" if target is None else ("met" if met else "NOT MET")))

    print()
    print(f"{'scenario':<10} {'poplar / reference':>20} {'p99 poplar':>11} {'p99 ref':>9}  target")
    for scenario, ratio, p99a, p99b, goal, verdict in verdicts:
        print(f"{scenario:<10} {ratio:>20.2f} {p99a:>9.2f}ms {p99b:>7.2f}ms  {goal} {verdict}")

    today = datetime.date.today().isoformat()
    table = ["| scenario | server | requests/s (median) | lowest - highest | p50 | p99 | socket errors | server RSS "
             "| server CPU per request: user + system |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        table.append(f"| {r['scenario']} | {r['server']} | {r['rps']:,.0f} | {r['rps_min']:,.0f} - "
                     f"{r['rps_max']:,.0f} | {r['p50']:.2f} ms | {r['p99']:.2f} ms | {r['errors']} | "
                     f"{r['rss_mib']:.0f} MiB | {r['user']:.1f} + {r['sys']:.1f} µs |")
    ratios = ["| scenario | Poplar / reference, requests/s | p99 Poplar | p99 reference | target | |",
              "| --- | --- | --- | --- | --- | --- |"]
    for scenario, ratio, p99a, p99b, goal, verdict in verdicts:
        ratios.append(f"| {scenario} | {ratio:.2f} | {p99a:.2f} ms | {p99b:.2f} ms | {goal} | {verdict} |")
    # What Poplar costs over Pingora alone, and where Pingora alone stands against nginx.
    for scenario, (ours, bare, ref) in BARE.items():
        a, b, c = by_server.get(ours), by_server.get(bare), by_server.get(ref)
        if a and b and c:
            ratios.append(f"| {scenario}: Poplar / Pingora alone | {a['rps'] / b['rps']:.2f} | {a['p99']:.2f} ms | "
                          f"{b['p99']:.2f} ms | - | - |")
            ratios.append(f"| {scenario}: Pingora alone / nginx | {b['rps'] / c['rps']:.2f} | {b['p99']:.2f} ms | "
                          f"{c['p99']:.2f} ms | - | - |")
    section = "\n".join([
        BEGIN,
        f"Generated by `scripts/bench.sh {duration} {connections}` on {today}: {cores} cores, Linux {kernel}, "
        f"wrk {wrk} (`-t1 -c{connections} -d{duration}s`, {rounds} rounds with the servers of a scenario taking "
        f"turns; each measure is the median of a server's rounds), nginx {nginx} (1 worker), wasmtime-cli {wasmtime} "
        "(`serve -S cli` with `TOKIO_WORKER_THREADS=1`; its default, a worker per core, in the row marked "
        "so), Poplar release build with `threads: 1`: every server 1 worker thread, every server with "
        "`RUST_BACKTRACE` unset; the origin is a separate nginx with 1 worker. "
        "Client and servers share the machine.",
        "",
        *table,
        "",
        *ratios,
        "",
        *mixed_table(mixed_file, duration, rate, mixed_connections),
        # A run of the mixed scenario alone has no wrk rows to chart.
        *(["![throughput and p99 per scenario](bench.svg)"] if rows else []),
        END,
    ])
    doc = ROOT / "docs" / "BENCHMARKS.md"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## Side by side: `scripts/bench.sh`\n\n" + section + "\n"
    doc.write_text(text)
    if rows:
        (ROOT / "docs" / "bench.svg").write_text(svg(rows))
    print(f"\nwrote {doc.relative_to(ROOT)}" + (" and docs/bench.svg" if rows else ""))


def mixed_table(path, duration, rate, connections):
    """Scenario 6: auto placement against an edge that runs everything inline (loading on a
    miss, LRU within the same code budget) and all in a region, under Zipf traffic."""
    if not path or not pathlib.Path(path).exists() or not pathlib.Path(path).read_text().strip():
        return []
    rows = [(line.split("\t") + [""] * 12)[:12] for line in pathlib.Path(path).read_text().splitlines()]
    warmup = rows[0][11] or duration
    lines = [f"Mixed: 1,000 distinct tasks (builds of hello, 84 KB, and one in 50 of a 13 MB JavaScript "
             f"component whose compiled code is 37 MB), Zipf (exponent 1.1) over them, regions behind relays "
             f"adding 20 ms and 60 ms round trips; each policy offered {rate} requests/s on a fixed schedule "
             f"(`MIXED_RATE`, {connections} connections), {warmup} s to warm up (`MIXED_WARMUP`), then "
             f"{duration} s measured (wrk's timeout 60 s: a request waiting for a load is measured). "
             "Every edge holds at most 128 MiB of compiled code and starts with an empty code cache: `auto` "
             "(Poplar's placement), `edge-lru` (examples/lru_edge.rs: every task inline, a request for a "
             "task not resident waits while it is compiled or loaded from disk, one load per core at a "
             "time, least recently used out first; Poplar's engine and execution) and `region` "
             "(everything forwarded). Edge CPU: the edge process's user + system time over the measured "
             "window.", "",
             "| placement | requests/s | p50 | p99 | mean | errors | edge RSS | edge CPU | start | where requests ran "
             "| p99 by where answered (the edge's clock: arrival to end of response; requests) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    seen = {}
    for mode, rps, p50, p99s, rss, placements, errors, start, by_site, mean, cpu, _ in rows:
        seen[mode] = dict(p50=ms(p50), p99=ms(p99s), mean=ms(mean))
        lines.append(f"| {mode} | {float(rps or 0):,.0f} | {ms(p50):.2f} ms | {ms(p99s):.2f} ms | {ms(mean):.2f} ms | "
                     f"{errors} | {int(rss or 0) / 1024:.0f} MiB | {cpu or '-'} | {start} | {placements} | {by_site} |")
    if {"auto", "edge-lru", "region"} <= seen.keys():
        a, e, r = seen["auto"], seen["edge-lru"], seen["region"]
        checks = [
            (f"auto's p99 at most half of edge-lru's ({a['p99']:.2f} ms vs {e['p99']:.2f} ms)", a["p99"] <= e["p99"] / 2),
            (f"auto's p50 within 1.2x of edge-lru's ({a['p50']:.2f} ms vs {e['p50']:.2f} ms)", a["p50"] <= 1.2 * e["p50"]),
            (f"auto's mean below both ({a['mean']:.2f} ms vs {e['mean']:.2f} ms and {r['mean']:.2f} ms)",
             a["mean"] < min(e["mean"], r["mean"])),
        ]
        lines.append("")
        for text, met in checks:
            lines.append(f"- {text}: {'met' if met else 'NOT MET'}")
            print(f"mixed: {text}: {'met' if met else 'NOT MET'}")
    return lines + [""]


def svg(rows) -> str:
    """Two horizontal bar charts: requests/s and p99, one bar per server."""
    bar_h, gap, left, width = 18, 6, 260, 300
    height = 60 + len(rows) * (bar_h + gap)
    max_rps = max(r["rps"] for r in rows)
    max_p99 = max(r["p99"] for r in rows)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + 2 * width + 120}" height="{height}" '
           'font-family="sans-serif" font-size="11">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{left}" y="20" font-weight="bold">requests/s</text>',
           f'<text x="{left + width + 60}" y="20" font-weight="bold">p99 latency (ms)</text>']
    for i, r in enumerate(rows):
        y = 35 + i * (bar_h + gap)
        colour = "#2f7d4f" if r["server"].startswith("poplar") else "#8a8f98"
        w1 = width * r["rps"] / max_rps
        w2 = width * r["p99"] / max_p99 if max_p99 > 0 else 0
        out += [f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{r["scenario"]}: {r["server"]}</text>',
                f'<rect x="{left}" y="{y}" width="{w1:.1f}" height="{bar_h}" fill="{colour}"/>',
                f'<text x="{left + w1 + 4:.1f}" y="{y + 13}">{r["rps"]:,.0f}</text>',
                f'<rect x="{left + width + 60}" y="{y}" width="{w2:.1f}" height="{bar_h}" fill="{colour}"/>',
                f'<text x="{left + width + 64 + w2:.1f}" y="{y + 13}">{r["p99"]:.2f}</text>']
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
