#!/usr/bin/env python3
"""Instructions per request, per path, for Poplar, Pingora alone and nginx (valgrind's callgrind).

  scripts/instructions.sh [--requests N] [--top K] [--paths static,origin,cache,inline]
                          [--cache-sim]

Timings drift on these shared machines; instruction counts do not. Each server runs under
`valgrind --tool=callgrind` on one thread. For each path a client sends warm-up requests on one
keep-alive connection, `callgrind_control --dump` zeroes the counters, it sends N more, and a
second dump holds exactly those N requests (every thread of the server, background work
included): its total divided by N is the path's cost, and `callgrind_annotate` of that dump
gives the top functions. The origin is an nginx outside valgrind. Prints a Markdown report.
With --cache-sim callgrind also simulates the caches (this machine's geometry) and the summary
gives each path's first-level instruction and data misses and last-level misses a request: what instruction
counts cannot see, a working set that grew.
"""
import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_listening(port, proc, what, patience=600.0):
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"instructions: {what} exited {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"instructions: {what} never listened on {port}")


class Client:
    """HTTP/1.1 keep-alive requests on one connection, one at a time."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=600)
        self.buf = b""

    def get(self, path):
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench.local\r\n\r\n".encode())
        while b"\r\n\r\n" not in self.buf:
            self.recv()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        match = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
        if not match:
            raise SystemExit(f"instructions: GET {path}: no content-length in\n{head.decode()}")
        length = int(match.group(1))
        while len(self.buf) < length:
            self.recv()
        self.buf = self.buf[length:]
        if b"connection: close" in head.lower():
            raise SystemExit(f"instructions: GET {path}: the server closed the connection")
        return status

    def recv(self):
        data = self.sock.recv(65536)
        if not data:
            raise SystemExit("instructions: the server closed the connection")
        self.buf += data


def dump(pid):
    subprocess.run(["callgrind_control", "--dump", str(pid)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def newest_dump(out, known):
    files = sorted(set(os.listdir(out)) - known)
    if not files:
        raise SystemExit("instructions: callgrind wrote no dump")
    known.update(files)
    return os.path.join(out, files[-1])


def totals(path):
    """The dump's totals by event name (`Ir`, and with the cache simulation `D1mr`, ...)."""
    events = ["Ir"]
    with open(path) as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            if line.startswith(("totals:", "summary:")):
                return dict(zip(events, map(int, line.split()[1:])))
    raise SystemExit(f"instructions: no totals in {path}")


def top_functions(path, requests, k):
    """Self cost per function in a callgrind dump, read directly (callgrind_annotate 3.19 puts
    every cost of a dump taken mid-run under the thread's `clone`)."""
    names, cost, current = {}, {}, None
    after_call = False
    with open(path) as f:
        for line in f:
            if line.startswith("fn="):
                current = compressed(line[3:].strip(), names)
                after_call = False
            elif line.startswith("calls="):
                after_call = True
            elif line.startswith(("cfn=", "cfi=", "cfl=", "cob=")):
                if line.startswith("cfn="):
                    compressed(line[4:].strip(), names)
            elif line[:1].isdigit() or line[:1] in "+-*":
                parts = line.split()
                if len(parts) >= 2 and current is not None:
                    if not after_call:
                        cost[current] = cost.get(current, 0) + int(parts[1])
                after_call = False
    rows = sorted(cost.items(), key=lambda kv: -kv[1])[:k]  # k None: all
    return [(c / requests, shorten(name)) for name, c in rows]


def compressed(text, names):
    """A name in callgrind's compressed form: `(id) name` defines, `(id)` refers."""
    m = re.match(r"\((\d+)\)\s*(.*)$", text)
    if not m:
        return text
    if m.group(2):
        names[m.group(1)] = m.group(2)
    return names.get(m.group(1), text)


def shorten(name):
    name = re.sub(r"\s*\[[^\]]*\]$", "", name)  # the object file
    name = re.sub(r"<[^<>]*>", "<..>", name)
    name = re.sub(r"<[^<>]*>", "<..>", name)
    return name if len(name) <= 110 else name[:107] + "..."


def nginx_conf(path, work, name, top, servers):
    """An nginx config of one worker, no access log, keep-alive without end, and `servers`."""
    with open(path, "w") as f:
        f.write(f"""worker_processes 1;
{top}pid {work}/{name}.pid;
error_log {work}/{name}.err warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  keepalive_requests 100000000;{servers}
}}
""")


class Server:
    def __init__(self, name, argv, port, work, env=None, cache_sim=False):
        self.name = name
        self.out = os.path.join(work, f"cg-{name.replace(' ', '-')}")
        os.makedirs(self.out)
        self.known = set()
        self.log = open(os.path.join(work, f"{name.replace(' ', '-')}.log"), "wb")
        self.proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--dump-instr=no",
             f"--cache-sim={'yes' if cache_sim else 'no'}",
             f"--callgrind-out-file={self.out}/callgrind.out"] + argv,
            stdout=self.log, stderr=subprocess.STDOUT, env=env or os.environ)
        self.port = port
        wait_listening(port, self.proc, name)

    def measure(self, path, requests, warmup, k):
        client = Client(self.port)
        for _ in range(warmup):
            client.get(path)
        dump(self.proc.pid)
        newest_dump(self.out, self.known)
        for _ in range(requests):
            status = client.get(path)
        dump(self.proc.pid)
        file = newest_dump(self.out, self.known)
        every = top_functions(file, requests, None)
        copy = sum(c for c, name in every if "memcpy" in name or "memmove" in name)
        total = totals(file)
        misses = None
        if "D1mr" in total:
            get = lambda *names: sum(total.get(n, 0) for n in names) / requests
            misses = (get("I1mr"), get("D1mr", "D1mw"), get("ILmr", "DLmr", "DLmw"))
        return status, total["Ir"] / requests, copy, every[:k], misses

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--paths", default="static,origin,cache,inline")
    parser.add_argument("--poplar", default=f"{ROOT}/target/release/poplar",
                        help="the Poplar binary to count")
    parser.add_argument("--cache-sim", action="store_true",
                        help="simulate the caches too: data and last-level misses a request")
    parser.add_argument("--portable-config", action="store_true",
                        help="give Poplar only the config keys every build since c9afd22 reads "
                        "(for an older build)")
    args = parser.parse_args()
    paths = args.paths.split(",")
    work = tempfile.mkdtemp(prefix="poplar-instructions-")
    os.chmod(work, 0o755)
    env = {k: v for k, v in os.environ.items() if k != "RUST_BACKTRACE"}
    servers = []
    origin = None
    try:
        origin_port = free_port()
        nginx_conf(f"{work}/origin.conf", work, "origin", "", f"""
  server {{ listen 127.0.0.1:{origin_port}; location / {{ return 200 "origin says hello\\n"; }} }}""")
        origin = subprocess.Popen(["nginx", "-g", "daemon off;", "-c", f"{work}/origin.conf"])
        wait_listening(origin_port, origin, "the origin")

        poplar_port = free_port()
        # Keys older builds do not know: a connection that is never closed (the default
        # closes it after 1,000 requests, which would land inside the count) and a code cache.
        newer = "" if args.portable_config else (
            f"clients: {{ max_requests: 100000000 }}\ncode_cache: {{ dir: {work}/code }}\n")
        # Older builds take an origin as ip:port only.
        to_origin = f"127.0.0.1:{origin_port}" if args.portable_config else (
            f"http://127.0.0.1:{origin_port}")
        with open(f"{work}/edge.yaml", "w") as f:
            f.write(f"""role: edge
listen: "127.0.0.1:{poplar_port}"
threads: 1
admin: {{ listen: "127.0.0.1:{free_port()}" }}
{newer}placement: {{ max_inline: 1 }}
tasks:
  hello: {{ wasm: {ROOT}/tasks/dist/hello.wasm }}
routes:
  - match: {{ path_prefix: /hello }}
    task: hello
    placement: edge
  - match: {{ path_prefix: /cached }}
    origin: "{to_origin}"
    cache: {{ ttl: 1h }}
  - match: {{ path_prefix: /origin }}
    origin: "{to_origin}"
""")
        bare_static, bare_proxy, nginx_port = free_port(), free_port(), free_port()
        cache_port, proxy_port = free_port(), free_port()
        os.makedirs(f"{work}/nginx-cache")
        os.chmod(f"{work}/nginx-cache", 0o777)
        # Under valgrind: one process, in the foreground.
        nginx_conf(f"{work}/nginx.conf", work, "nginx", "master_process off;\ndaemon off;\n", f"""
  proxy_cache_path {work}/nginx-cache levels=1:2 keys_zone=hits:10m inactive=1h use_temp_path=off;
  upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 64; }}
  server {{ listen 127.0.0.1:{nginx_port}; location / {{ return 200 "hello\\n"; }} }}
  server {{
    listen 127.0.0.1:{proxy_port};
    location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
  server {{
    listen 127.0.0.1:{cache_port};
    location / {{
      proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache hits; proxy_cache_valid 200 1h;
    }}
  }}""")
        release = f"{ROOT}/target/release"
        plan = {  # path: [(server, request path)]
            "static": [("poplar", "/none"), ("pingora alone", "/"), ("nginx", "/")],
            "origin": [("poplar", "/origin/x"), ("pingora alone proxy", "/x"),
                       ("nginx proxy", "/x")],
            "cache": [("poplar", "/cached/x"), ("nginx cache", "/x")],
            "inline": [("poplar", "/hello")],
        }
        wanted = {s for p in paths for s, _ in plan[p]}
        sim = args.cache_sim
        starts = {
            "poplar": lambda: Server("poplar", [args.poplar, "serve", "-c",
                                                f"{work}/edge.yaml"], poplar_port, work, env, sim),
            "pingora alone": lambda: Server(
                "pingora alone", [f"{release}/examples/bare_pingora", "--listen",
                                  f"127.0.0.1:{bare_static}"], bare_static, work, env, sim),
            "pingora alone proxy": lambda: Server(
                "pingora alone proxy", [f"{release}/examples/bare_pingora", "--listen",
                                        f"127.0.0.1:{bare_proxy}", "--origin",
                                        f"127.0.0.1:{origin_port}"], bare_proxy, work, env, sim),
            "nginx": lambda: Server("nginx", ["nginx", "-c", f"{work}/nginx.conf"],
                                    nginx_port, work, None, sim),
        }
        running = {}
        for name in ["poplar", "pingora alone", "pingora alone proxy", "nginx"]:
            if name in wanted or (name == "nginx" and wanted & {"nginx proxy", "nginx cache"}):
                print(f"instructions: starting {name} under callgrind", file=sys.stderr)
                running[name] = starts[name]()
                servers.append(running[name])
        ports = {"nginx proxy": proxy_port, "nginx cache": cache_port}
        print(f"# Instructions per request (callgrind; {args.requests} requests after "
              f"{args.warmup} warm-up, one keep-alive connection, one thread each)\n")
        summary = []
        for path in paths:
            for server_name, request in plan[path]:
                server = running.get(server_name) or running["nginx"]
                saved = server.port
                server.port = ports.get(server_name, server.port)
                status, per, copy, top, misses = server.measure(request, args.requests,
                                                                args.warmup, args.top)
                server.port = saved
                summary.append((path, server_name, request, status, per, copy, misses))
                print(f"## {path}: {server_name} (`GET {request}`, {status}): "
                      f"{per:,.0f} instructions a request\n")
                print("| instructions a request | function |\n| ---: | --- |")
                for count, name in top:
                    print(f"| {count:,.0f} | `{name}` |")
                print()
        # glibc's memcpy copies with `rep movsb` above 2 KiB, and valgrind counts each of its
        # iterations (a byte) as an instruction: those counts are bytes moved, not work done
        # at that rate, so the last column leaves them out.
        print("## Summary\n\n| path | server | request | status | instructions a request "
              "| of them in memcpy/memmove | without memcpy/memmove |"
              + (" I1 misses a request | D1 misses a request | LL misses a request |" if sim else ""))
        print("| --- | --- | --- | --- | ---: | ---: | ---: |"
              + (" ---: | ---: | ---: |" if sim else ""))
        for path, server_name, request, status, per, copy, misses in summary:
            extra = f" {misses[0]:,.0f} | {misses[1]:,.0f} | {misses[2]:,.1f} |" if misses else ""
            print(f"| {path} | {server_name} | `GET {request}` | {status} | {per:,.0f} "
                  f"| {copy:,.0f} | {per - copy:,.0f} |{extra}")
    finally:
        for server in servers:
            server.stop()
        if origin:
            origin.terminate()
            origin.wait()
        if os.environ.get("INSTRUCTIONS_KEEP"):
            print(f"instructions: kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
