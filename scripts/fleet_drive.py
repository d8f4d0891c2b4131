"""The workload of scripts/fleet.sh, run on the fleet's client host.

A bounded Zipf workload through every edge (four keep-alive connections each): a third of
the keys are a task pinned to the regions (/far), a third a task that runs at the edge when
hot (/greet), a third static pages from the origin, cached (/static). When a third of the
requests are done it reads every host's /metrics, asks for the region to be killed (a marker
file the shell script waits for) and labels each later request `after`. At the end it prints
one JSON summary: per edge, the answers by phase and placement, the errors, and what the
edge's /stats says of its regions and of the task's code.
"""

import argparse
import http.client
import json
import os
import random
import threading
import time
import urllib.request

KEYS = 60


def zipf_keys(n, seed):
    rng = random.Random(seed)
    weights = [1.0 / (k + 1) ** 1.1 for k in range(KEYS)]
    return rng.choices(range(KEYS), weights=weights, k=n)


def path_of(key):
    match key % 3:
        case 0:
            return f"/far/{key}"
        case 1:
            return f"/greet/{key}"
        case _:
            return f"/static/{key % 50}.html"


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


def metrics_of(host):
    try:
        with urllib.request.urlopen(f"http://{host}:9901/metrics", timeout=5) as resp:
            text = resp.read().decode()
        samples = [l for l in text.splitlines() if l.startswith("poplar_")]
        return {"samples": len(samples)}
    except Exception as e:  # a dead host says so in the summary
        return {"error": str(e)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, required=True)
    ap.add_argument("--digest", required=True)
    ap.add_argument("--edges", nargs="+", required=True)
    ap.add_argument("--hosts", nargs="+", required=True)
    ap.add_argument("--kill-marker", required=True)
    ap.add_argument("--killed-marker", required=True)
    args = ap.parse_args()
    hosts = dict(h.split("=", 1) for h in args.hosts)

    lock = threading.Lock()
    done = [0]
    metrics_before = {}
    records = []
    per_thread = args.requests // (4 * len(args.edges))
    kill_at = args.requests // 3

    def worker(edge, seed):
        conn = http.client.HTTPConnection(edge, 8080, timeout=30)
        for key in zipf_keys(per_thread, seed):
            phase = "after" if os.path.exists(args.killed_marker) else "before"
            path = path_of(key)
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
                placement = resp.getheader("x-poplar-placement") or resp.getheader(
                    "cache-status", "origin"
                )
                error = resp.getheader("x-poplar-error")
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = http.client.HTTPConnection(edge, 8080, timeout=30)
            except Exception as e:
                status, placement, error = 0, "", str(e)
                conn.close()
                conn = http.client.HTTPConnection(edge, 8080, timeout=30)
            with lock:
                records.append((edge, phase, path.split("/")[1], status, placement, error))
                done[0] += 1
                if done[0] == kill_at:
                    metrics_before.update({n: metrics_of(h) for n, h in hosts.items()})
                    open(args.kill_marker, "w").close()
            if phase == "before" and done[0] >= kill_at:
                # Requests sent between the ask and the kill are neither phase: wait for it.
                deadline = time.time() + 10
                while not os.path.exists(args.killed_marker) and time.time() < deadline:
                    time.sleep(0.01)
        conn.close()

    started = time.time()
    threads = [
        threading.Thread(target=worker, args=(edge, i * 10 + j))
        for i, edge in enumerate(args.edges)
        for j in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.time() - started

    # Then, per edge, until the task deployed to the regions runs at the edge (bounded: 60 s
    # of a request every 20 ms; an edge compiles at nice 19, so a loaded machine takes longer
    # than the workload did).
    def until_inline(edge):
        conn = http.client.HTTPConnection(edge, 8080, timeout=30)
        t0 = time.time()
        while time.time() - t0 < 60:
            conn.request("GET", "/greet/settle")
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200 and resp.getheader("x-poplar-placement") == "edge; reason=hot":
                return round(time.time() - t0, 2)
            time.sleep(0.02)
        return None

    inline_after = {edge: until_inline(edge) for edge in args.edges}

    edges = {}
    for name, host in hosts.items():
        if host not in args.edges:
            continue
        mine = [r for r in records if r[0] == host]
        phases = {}
        for _, phase, route, status, placement, error in mine:
            by = phases.setdefault(phase, {}).setdefault(route, {})
            label = f"{status} {placement}" + (f" ({error})" if error else "")
            by[label] = by.get(label, 0) + 1
        stats = get_json(f"http://{host}:9901/stats")
        edges[name] = {
            "requests": len(mine),
            # Seconds after the workload until the deployed task ran here; None: never.
            "inline_after_workload_s": inline_after[host],
            "errors": sum(1 for r in mine if r[3] != 200),
            "phases": phases,
            "regions": [
                {k: r.get(k) for k in ("name", "address", "resolved", "healthy", "forward_failures")}
                for r in stats["regions"]
            ],
            "greet": {k: stats["tasks"]["greet"].get(k) for k in ("digest", "from", "code", "hot")},
        }
    summary = {
        "requests": len(records),
        "seconds": round(elapsed, 2),
        "deployed_digest": args.digest,
        "killed": "west",
        "edges": edges,
        "metrics_before_kill": metrics_before,
        "metrics_after": {n: metrics_of(h) for n, h in hosts.items()},
    }
    print(json.dumps(summary, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
