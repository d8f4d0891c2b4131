#!/usr/bin/env bash
# How the edge's RSS follows cache.memory under cache-busting requests (docs/RELIABILITY.md).
# An origin answering 100-byte bodies with max-age=600, an edge with a 32 MiB cache in front,
# and N requests (default 100000) with distinct query strings on one keep-alive connection;
# prints the edge's RSS every quarter and the cache's entry and eviction counts.
# Loopback only: ports 18590-18592. Usage: scripts/cache-memory.sh [N] (builds target/debug/poplar).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100000}
cargo build --quiet --bin poplar
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
cat > "$dir/origin.py" <<'PY'
import asyncio
RESP = (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ncache-control: max-age=600\r\n"
        b"content-type: text/plain\r\n\r\n" + b"x" * 100)
async def handle(r, w):
    try:
        while True:
            await r.readuntil(b"\r\n\r\n")
            w.write(RESP)
            await w.drain()
    except Exception:
        w.close()
async def main():
    s = await asyncio.start_server(handle, "127.0.0.1", 18590)
    async with s:
        await s.serve_forever()
asyncio.run(main())
PY
cat > "$dir/client.py" <<'PY'
import socket, sys
n, start = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", 18591))
f = s.makefile("rb")
for i in range(start, start + n):
    s.sendall(b"GET /bust?q=%d HTTP/1.1\r\nHost: a\r\nUser-Agent: client/1.0\r\nAccept: */*\r\n\r\n" % i)
    length = 0
    while True:
        line = f.readline()
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
        if line == b"\r\n":
            break
    f.read(length)
PY
cat > "$dir/edge.yaml" <<'YAML'
role: edge
listen: "127.0.0.1:18591"
threads: 1
admin: { listen: "127.0.0.1:18592" }
cache: { memory: 32MiB }
clients: { max_requests: 10000000 }
routes:
  - match: { path_prefix: / }
    origin: "127.0.0.1:18590"
    cache: {}
YAML
python3 "$dir/origin.py" &
target/debug/poplar serve -c "$dir/edge.yaml" 2>"$dir/edge.log" &
edge=$!
sleep 3
rss() { awk '/VmRSS/ {print $2 " kB"}' "/proc/$edge/status"; }
echo "start: $(rss)"
quarter=$((n / 4))
for k in 0 1 2 3; do
  python3 "$dir/client.py" "$quarter" $((k * quarter))
  echo "after $(((k + 1) * quarter)) requests: $(rss)"
done
curl -s 127.0.0.1:18592/metrics | grep -E '^poplar_cache_(entries|evictions_total|size_bytes) '
