#!/usr/bin/env bash
# Loads a release build with wrk, one scenario after another in one run: the server's own
# 404 (a response written from request_filter: Poplar's ceiling), a cache hit, and the
# `hello` task run inline (a fresh instance per request). Prints the ratios to the ceiling.
#
#   scripts/load.sh [seconds] [connections]
#
# Both servers run with RUST_BACKTRACE unset (this environment sets it to 1, which makes
# Wasmtime capture a backtrace for every internal error) and Pingora with 1 worker thread.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-8}
connections=${2:-32}

scripts/setup.sh wrk
scripts/build-tasks.sh
cargo build --release --quiet

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/bench.yaml" <<YAML
role: edge
listen: "127.0.0.1:$port"
threads: 1
tasks:
  hello:
    wasm: $(pwd)/tasks/dist/hello.wasm
    limits: { memory: 16MiB, timeout: 1s }
routes:
  - match: { path_prefix: /hello }
    task: hello
  - match: { path_prefix: /cached }
    task: hello
    cache: { ttl: 1h }
YAML
env -u RUST_BACKTRACE RUST_LOG=warn target/release/poplar serve -c "$work/bench.yaml" 2>"$work/server.log" &
server=$!
for _ in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:$port/hello" && break
  sleep 0.1
done

run() { # name path
  local out rps p50 p99 errors
  out=$(wrk -t1 -c"$connections" -d"${duration}s" --latency "http://127.0.0.1:$port$2")
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errors=$(awk '/Non-2xx|Socket errors/ {printf "%s ", $0}' <<<"$out")
  printf '%-32s %12s %10s %10s  %s\n' "$1" "$rps" "$p50" "$p99" "${errors:-none}"
  echo "$rps" > "$work/$1.rps"
}

echo "wrk -t1 -c$connections -d${duration}s; poplar with threads: 1; RUST_BACKTRACE unset; $(nproc) cores"
printf '%-32s %12s %10s %10s  %s\n' scenario requests/s p50 p99 errors
run "404 from request_filter" /nothing
curl -s -o /dev/null "http://127.0.0.1:$port/cached?name=wrk"   # fill the entry
run "cache hit (hello, 41 B)" "/cached?name=wrk"
run "hello task inline" "/hello?name=wrk"
python3 - "$work" <<'PY'
import sys, pathlib
w = pathlib.Path(sys.argv[1])
rps = lambda name: float((w / f"{name}.rps").read_text())
ceiling = rps("404 from request_filter")
print(f"cache hit / ceiling: {rps('cache hit (hello, 41 B)') / ceiling:.2f}")
print(f"hello inline / ceiling: {rps('hello task inline') / ceiling:.2f}")
PY
echo "server RSS after the run: $(ps -o rss= -p $server) KiB"
