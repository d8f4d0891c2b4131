#!/usr/bin/env python3
"""Runs the HTTP cache test suite (http-cache-tests) through Poplar and nginx; writes
docs/CACHE-CONFORMANCE.md. Called by scripts/cache-conformance.sh, which installs the suite
into WORK and builds Poplar."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "CACHE-CONFORMANCE.md"
REASONS = ROOT / "scripts" / "cache-conformance-reasons.tsv"
BASELINE = ROOT / "scripts" / "cache-conformance-baseline.txt"
SHIPPED = [
    ("squid.json", "Squid"),
    ("apache.json", "Apache httpd"),
    ("trafficserver.json", "Apache Traffic Server"),
    ("varnish.json", "Varnish"),
    ("nginx.json", "nginx (shipped result)"),
    ("fastly.json", "Fastly"),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port, what, proc, patience=20.0):
    start = time.time()
    while time.time() - start < patience:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} is not listening on {port} after {patience}s")


def start(cmd, what, port, log, **kw):
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kw)
    wait_for(port, what, proc)
    return proc


def stop(proc):
    if proc and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def run_suite(suite, base, test_id=""):
    env = dict(os.environ, npm_config_base=base, npm_package_config_id=test_id, npm_config_id=test_id)
    out = subprocess.run(
        ["node", "--no-warnings", "cli.mjs"], cwd=suite, env=env, capture_output=True, text=True, timeout=600
    )
    if test_id:
        return out.stdout + out.stderr
    if out.returncode != 0 or not out.stdout.strip().startswith("{"):
        sys.exit(f"the suite failed against {base}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def poplar_config(tmp, port, origin, logs):
    text = f"""role: edge
listen: "127.0.0.1:{port}"
threads: 2
admin: {{ listen: "127.0.0.1:{free_port()}" }}
access_log: {{ to: "{logs}/poplar-access.log", format: text }}
routes:
  - match: {{ path_prefix: / }}
    origin: "127.0.0.1:{origin}"
    cache: {{}}
"""
    path = Path(tmp) / "edge.yaml"
    path.write_text(text)
    return path


def nginx_config(tmp, port, origin):
    d = Path(tmp) / "nginx"
    for sub in ["cache", "logs", "tmp", "body", "fcgi", "uwsgi", "scgi"]:
        (d / sub).mkdir(parents=True, exist_ok=True)
    # As the suite's own docker/nginx/nginx.conf, on loopback.
    # Workers started by root run as another user, who could not write the cache folder.
    user = "user root;\n" if os.geteuid() == 0 else ""
    text = f"""daemon off;
{user}worker_processes 1;
error_log {d}/logs/error.log;
pid {d}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  proxy_cache_path {d}/cache levels=1:2 keys_zone=my-cache:8m max_size=1000m inactive=600m;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://127.0.0.1:{origin};
      proxy_cache my-cache;
      proxy_cache_revalidate on;
    }}
  }}
}}
"""
    path = d / "nginx.conf"
    path.write_text(text)
    return d, path


def passed(results):
    return {k for k, v in results.items() if v is True}


def reasons():
    found = []
    if REASONS.exists():
        for line in REASONS.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                prefix, why = line.split("\t", 1)
                found.append((prefix, why.strip()))
    return found


def reason_for(test_id, table):
    best = None
    for prefix, why in table:
        if test_id.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, why)
    return best[1] if best else "work still to do"


def main():
    work = Path(sys.argv[1]).resolve()
    suite = work / "node_modules" / "http-cache-tests"
    test_id = sys.argv[2] if len(sys.argv) > 2 else ""
    binary = ROOT / "target" / "release" / "poplar"
    procs = []
    with tempfile.TemporaryDirectory(prefix="poplar-cache-tests-") as tmp:
        log = open(work / "servers.log", "w")
        try:
            origin = free_port()
            env = dict(os.environ, npm_config_protocol="http", npm_config_port=str(origin),
                       npm_config_pidfile=f"{tmp}/origin.pid")
            procs.append(start(["node", "server/server.mjs"], "the suite's origin", origin, log, cwd=suite, env=env))
            edge = free_port()
            config = poplar_config(tmp, edge, origin, work)
            procs.append(start([str(binary), "serve", "-c", str(config)], "poplar", edge, log))
            if test_id:
                print(run_suite(suite, f"http://127.0.0.1:{edge}", test_id))
                return
            poplar = run_suite(suite, f"http://127.0.0.1:{edge}")
            nginx = None
            if shutil.which("nginx"):
                port = free_port()
                prefix, conf = nginx_config(tmp, port, origin)
                procs.append(start(["nginx", "-c", str(conf), "-p", str(prefix)], "nginx", port, log))
                nginx = run_suite(suite, f"http://127.0.0.1:{port}")
        finally:
            for p in reversed(procs):
                stop(p)
            log.close()
    (work / "poplar.json").write_text(json.dumps(poplar, indent=1))
    if nginx:
        (work / "nginx.json").write_text(json.dumps(nginx, indent=1))
    write_report(suite, poplar, nginx)


def commit():
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return out.stdout.strip() + (" with changes not yet committed" if dirty else "")


def write_report(suite, poplar, nginx):
    total = len(poplar)
    ours = passed(poplar)
    rows = [("**Poplar** (this run)", len(ours), total)]
    if nginx:
        version = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
        rows.append((f"nginx `proxy_cache` (this run, {version.split('/')[-1]})", len(passed(nginx)), len(nginx)))
    shipped = {}
    for file, name in SHIPPED:
        data = json.loads((suite / "results" / file).read_text())
        shipped[name] = data
        rows.append((f"{name} (shipped with the suite)", len(passed(data)), len(data)))
    rows.sort(key=lambda r: -r[1])
    baseline = set(BASELINE.read_text().split()) if BASELINE.exists() else set()
    lost = sorted(baseline - ours)
    others = set().union(*(passed(d) for d in shipped.values()))
    table = reasons()
    lines = [
        "# HTTP caching conformance",
        "",
        "The HTTP cache test suite behind cache-tests.fyi (npm `http-cache-tests` 0.4.5), run through",
        "a Poplar edge whose one route is an origin route with `cache: {}` (the suite's own server as",
        "the origin) and, in the same run, through nginx `proxy_cache` configured as the suite's",
        "`docker/nginx/nginx.conf`. Written by `scripts/cache-conformance.sh` (about a minute; not in",
        "CI). A test counts as passed when its result is `true`, as cache-tests.fyi counts it;",
        "`check` tests (behaviour the RFC leaves open) count too.",
        "",
        f"This run: commit {commit()}, {time.strftime('%Y-%m-%d', time.gmtime())}.",
        "",
        "| cache | passed | of |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {name} | {n} | {of} |" for name, n, of in rows]
    lines += [""]
    if baseline:
        lines += [f"Passed before Poplar's own caching rules (`scripts/cache-conformance-baseline.txt`: the "
                  f"{len(baseline)} tests passed in either of two runs at 97e019f) and lost now: "
                  f"{', '.join(f'`{t}`' for t in lost) if lost else 'none'}.", ""]
    failing = sorted(k for k in poplar if k not in ours)
    lines += [
        f"## What Poplar fails ({len(failing)})",
        "",
        "Each with why it is left (`scripts/cache-conformance-reasons.tsv`, by test id prefix), and",
        "whether any of Squid, Apache, ATS, Varnish or Fastly passes it.",
        "",
        "| test | result | others pass | why left |",
        "| --- | --- | --- | --- |",
    ]
    for t in failing:
        v = poplar[t]
        result = v[0] if isinstance(v, list) and v else str(v)
        lines.append(f"| `{t}` | {result} | {'yes' if t in others else 'no'} | {reason_for(t, table)} |")
    DOC.write_text("\n".join(lines) + "\n")
    print(f"poplar {len(ours)}/{total}" + (f", nginx {len(passed(nginx))}/{len(nginx)}" if nginx else "")
          + f"; lost since the baseline: {len(lost)}; {DOC.relative_to(ROOT)} written")


if __name__ == "__main__":
    main()
