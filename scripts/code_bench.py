#!/usr/bin/env python3
"""Task code benchmarks (issue 18), run by scripts/code-bench.sh.

1. Start to first inline answer: `poplar serve` of an edge with one pinned task, timed from
   the process's spawn to the first 200 from the task, without compiled code on disk (cold)
   and with it (warm, `code_cache`); beside it `wasmtime serve` of the same component, the
   same way (with the CLI's own compile cache, warm after the first run). For hello (80 KB)
   and js-hello (13 MB, a JS engine).
2. Deploy to hot edge: a region with a registry and an edge taking the task from it, the
   task hot at the edge (40 requests/s); `poplar deploy` of another version; the time until
   the edge first answers inline with the new version (the version alternates hello/echo).

Writes the section between `<!-- code-bench: begin -->` and `<!-- code-bench: end -->` in
docs/BENCHMARKS.md. Loopback only.
"""

import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POPLAR = os.path.join(ROOT, "target/release/poplar")
WASMTIME = os.path.join(ROOT, "target/tools/bin/wasmtime")
DIST = os.path.join(ROOT, "tasks/dist")
RUNS = int(os.environ.get("CODE_BENCH_RUNS", "5"))
TOKEN = "code-bench-deploy-token-0123456789"
KEY = "code-bench-forwarding-key-0123456789"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path, timeout=2.0):
    """(status, headers, body) or None when nothing answers."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return resp.status, dict((k.lower(), v) for k, v in resp.getheaders()), body
    except OSError:
        return None


def until_answer(port, path, started, patience=120.0):
    while time.perf_counter() - started < patience:
        got = get(port, path, timeout=0.5)
        if got and got[0] == 200:
            return time.perf_counter() - started
        time.sleep(0.0005)
    raise SystemExit(f"code-bench: nothing answered {path} on {port}")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def startup(work, task, wasm, warm):
    """Seconds from spawning `poplar serve` to the first answer of a pinned task."""
    port, admin = free_port(), free_port()
    code = os.path.join(work, f"code-{task}")
    if not warm:
        shutil.rmtree(code, ignore_errors=True)
    config = os.path.join(work, f"edge-{task}.yaml")
    with open(config, "w") as f:
        f.write(
            f'role: edge\nlisten: "127.0.0.1:{port}"\nthreads: 1\n'
            f'admin: {{ listen: "127.0.0.1:{admin}" }}\ncode_cache: {{ dir: "{code}" }}\n'
            f"placement: {{ max_inline: 4 }}\n"
            f"tasks:\n  {task}: {{ wasm: {wasm}, limits: {{ memory: 128MiB }} }}\n"
            f"routes:\n  - match: {{ path_prefix: /t }}\n    task: {task}\n"
        )
    env = dict(os.environ, RUST_LOG="error")
    env.pop("RUST_BACKTRACE", None)
    started = time.perf_counter()
    proc = subprocess.Popen([POPLAR, "serve", "-c", config], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        took = until_answer(port, "/t/x", started)
        stats = json.loads(get(admin, "/stats")[2])
        ready = stats["tasks"][task]["ready"]
    finally:
        stop(proc)
    return took, ready


def wasmtime_startup(wasm):
    port = free_port()
    env = dict(os.environ)
    env.pop("RUST_BACKTRACE", None)
    started = time.perf_counter()
    proc = subprocess.Popen([WASMTIME, "serve", "-S", "cli", "--addr", f"127.0.0.1:{port}", wasm],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return until_answer(port, "/t/x", started)
    finally:
        stop(proc)


def median_ms(values):
    return statistics.median(values) * 1000.0


def bench_startup(work):
    rows = []
    for task in ["hello", "js-hello"]:
        wasm = os.path.join(DIST, f"{task}.wasm")
        size = os.path.getsize(wasm)
        cold, warm, readies = [], [], []
        for _ in range(RUNS):
            took, ready = startup(work, task, wasm, warm=False)
            cold.append(took)
            took, ready = startup(work, task, wasm, warm=True)
            assert not ready["compiled"], f"{task}: the warm start compiled"
            warm.append(took)
            readies.append(ready["ms"])
        reference = [wasmtime_startup(wasm) for _ in range(RUNS)] if os.path.exists(WASMTIME) else []
        rows.append({
            "task": task,
            "size": size,
            "cold_ms": median_ms(cold),
            "warm_ms": median_ms(warm),
            "load_ms": statistics.median(readies),
            "wasmtime_ms": median_ms(reference) if reference else None,
        })
        print(f"code-bench: {rows[-1]}", file=sys.stderr)
    return rows


class Driver(threading.Thread):
    """Requests /greet at a steady rate, remembering each answer's time, placement and body."""

    def __init__(self, port, rate=40):
        super().__init__(daemon=True)
        self.port, self.period, self.stopped = port, 1.0 / rate, False
        self.answers = []

    def run(self):
        while not self.stopped:
            got = get(self.port, "/greet/bench")
            if got:
                self.answers.append((time.perf_counter(), got[1].get("x-poplar-placement", ""), got[2]))
            time.sleep(self.period)

    def first_inline_after(self, since, body_ok):
        for at, placement, body in self.answers:
            if at >= since and placement == "edge; reason=hot" and body_ok(body):
                return at - since
        return None


def deploy(admin, file):
    out = subprocess.run(
        [POPLAR, "deploy", "greet", file, "--region", f"http://127.0.0.1:{admin}",
         "--memory", "32MiB", "--timeout", "100ms"],
        env=dict(os.environ, POPLAR_DEPLOY_TOKEN=TOKEN), capture_output=True, check=True)
    return json.loads(out.stdout)["current"]["digest"]


def bench_deploy(work):
    region, region_admin, edge, edge_admin = (free_port() for _ in range(4))
    with open(os.path.join(work, "region.yaml"), "w") as f:
        f.write(
            f'role: region\nlisten: "127.0.0.1:{region}"\nthreads: 1\n'
            f'admin: {{ listen: "127.0.0.1:{region_admin}" }}\n'
            f'registry: {{ dir: "{work}/registry" }}\ntasks: {{}}\n'
        )
    with open(os.path.join(work, "edge.yaml"), "w") as f:
        f.write(
            f'role: edge\nlisten: "127.0.0.1:{edge}"\nthreads: 1\n'
            f'admin: {{ listen: "127.0.0.1:{edge_admin}" }}\n'
            f'code_cache: {{ dir: "{work}/edge-code" }}\n'
            f"placement: {{ hot_threshold: 5 }}\n"
            f'regions:\n  west: {{ address: "127.0.0.1:{region}" }}\n'
            f"tasks:\n  greet: {{}}\n"
            f"routes:\n  - match: {{ path_prefix: /greet }}\n    task: greet\n"
        )
    env = dict(os.environ, RUST_LOG="error", POPLAR_DEPLOY_TOKEN=TOKEN, POPLAR_FORWARDING_KEY=KEY)
    env.pop("RUST_BACKTRACE", None)
    procs = [subprocess.Popen([POPLAR, "serve", "-c", os.path.join(work, name)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for name in ["region.yaml", "edge.yaml"]]
    try:
        until_answer(edge_admin, "/stats", time.perf_counter())
        until_answer(region_admin, "/stats", time.perf_counter())
        hello, echo = os.path.join(DIST, "hello.wasm"), os.path.join(DIST, "echo.wasm")
        is_hello = lambda body: body.startswith(b"Hello, world!")
        is_echo = lambda body: body == b""
        deploy(region_admin, hello)
        driver = Driver(edge)
        driver.start()
        time.sleep(1)
        if driver.first_inline_after(0, is_hello) is None:
            time.sleep(4)
        times = []
        for i in range(RUNS * 2):
            file, ok = (echo, is_echo) if i % 2 == 0 else (hello, is_hello)
            since = time.perf_counter()
            deploy(region_admin, file)
            took = None
            while took is None and time.perf_counter() - since < 30:
                time.sleep(0.05)
                took = driver.first_inline_after(since, ok)
            if took is None:
                raise SystemExit("code-bench: a deploy never reached the edge")
            times.append(took)
            time.sleep(0.5)
        driver.stopped = True
        return {"median_ms": median_ms(times), "max_ms": max(times) * 1000.0, "deploys": len(times)}
    finally:
        for proc in procs:
            stop(proc)


def write_report(startup_rows, deployed):
    lines = [
        "<!-- code-bench: begin -->",
        f"Generated by `scripts/code-bench.sh` ({RUNS} runs each, medians; release build, loopback).",
        "",
        "Start to first inline answer of a pinned task (process spawn to the first 200):",
        "",
        "| task | wasm | cold (compiles) | warm (code_cache) | of which loading the compiled code | `wasmtime serve` (its own compile cache, warm) | warm / wasmtime serve |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in startup_rows:
        ref = r["wasmtime_ms"]
        ratio = f"{r['warm_ms'] / ref:.3f}" if ref else "-"
        ref_text = f"{ref:.1f} ms" if ref else "-"
        lines.append(
            f"| {r['task']} | {r['size'] / 1e6:.2f} MB | {r['cold_ms']:.1f} ms | {r['warm_ms']:.1f} ms | "
            f"{r['load_ms']:.1f} ms | {ref_text} | {ratio} |"
        )
    lines += [
        "",
        f"Deploy to a hot edge: `poplar deploy` of a new version to the first inline answer with it, "
        f"at an edge where the task is hot (40 requests/s): median {deployed['median_ms']:.0f} ms, "
        f"longest {deployed['max_ms']:.0f} ms, over {deployed['deploys']} deploys (hello and echo in turn; "
        "the edge polls every 2 s, and looks at once when a forward names a version it did not know).",
        "<!-- code-bench: end -->",
    ]
    path = os.path.join(ROOT, "docs/BENCHMARKS.md")
    text = open(path).read()
    section = "\n".join(lines)
    begin, end = "<!-- code-bench: begin -->", "<!-- code-bench: end -->"
    if begin in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n## Task code: start-up and deploys\n\n" + section + "\n"
    open(path, "w").write(text)
    print(section)


def main():
    work = tempfile.mkdtemp(prefix="poplar-code-bench-")
    try:
        rows = bench_startup(work)
        deployed = bench_deploy(work)
        write_report(rows, deployed)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
