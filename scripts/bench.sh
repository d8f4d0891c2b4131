#!/usr/bin/env bash
# Poplar side by side with what an operator would otherwise deploy, in one run on one machine:
#
#   1. static: a response written from request_filter   vs  nginx `return 200`
#   2. inline hot task (hello)                           vs  `wasmtime serve -S cli`, same component
#   3. cache hit on a task route                         vs  nginx `proxy_cache` hit of the same response
#   4. origin route (plain reverse proxy)                vs  nginx `proxy_pass`, same origin
#   5. forwarded task, edge to region                    vs  the same task asked of the region directly
#   (1 and 4 also run Pingora alone, examples/bare_pingora.rs: what Poplar adds to Pingora)
#   https: cache hit over HTTPS, keep-alive                vs  nginx `proxy_cache` over HTTPS
#   https-origin: origin route over HTTPS, keep-alive      vs  nginx `proxy_pass` over HTTPS
#   handshake: a new TLS connection per request (cache hit) vs nginx, the same
#   h2: cache hit over HTTP/2, h2load 4 connections x 32 streams vs nginx `http2`
#   (TLS: the same certificate, conf/certs/localhost.pem, ECDSA P-256; TLS 1.3 both)
#   log: cache hit with the access log on (text, to a file)   vs  the same edge config without
#   metrics: cache hit with /metrics scraped every second      vs  the same edge config without an admin
#   6. mixed: requests spread over 1,000 distinct tasks (builds of hello, and one in 50 of a
#      13 MB JavaScript component, told apart by a custom section, so each is compiled and
#      held on its own) with a Zipf distribution (scripts/zipf.lua), two regions behind relays
#      adding 20 ms and 60 ms round trips (examples/relay.rs): placement auto vs an edge that
#      runs everything inline, loading on a miss and evicting the least recently used
#      (examples/lru_edge.rs) vs all in a region; every edge within the same 128 MiB of
#      resident code, each offered the same fixed request rate (MIXED_RATE, default 2000/s,
#      over 512 connections)
#   7. code: start-up to the first inline answer (hello, a 13 MB JS component; cold and with
#      compiled code on disk) beside `wasmtime serve`, and `poplar deploy` to a hot edge
#      answering with the new version (scripts/code_bench.py; also scripts/code-bench.sh)
#
# Scenarios 1-5 run wrk with the same settings, one after another, in BENCH_ROUNDS rounds
# (default 3); each server's median is reported. Every server gets 1 worker
# thread: Poplar `threads: 1`, nginx 1 worker, wasmtime serve TOKIO_WORKER_THREADS=1 (also
# measured with its default, a tokio worker per core, for reference); the origin is a separate
# nginx with 1 worker. Every server runs with RUST_BACKTRACE unset. Prints one table and the
# ratios, and writes docs/BENCHMARKS.md's generated section and docs/bench.svg.
#
#   scripts/bench.sh [seconds] [connections]        (defaults: 8 s, 32 connections)
#   BENCH_SCENARIOS="inline mixed" scripts/bench.sh  runs only those (the report then only
#                                                    has them: do not commit it)
#   BENCH_DEFAULTS=1 scripts/bench.sh                every measured server at its defaults
#                                                    instead: Poplar and Pingora alone a
#                                                    thread per core, nginx `worker_processes
#                                                    auto`, wasmtime serve a tokio worker per
#                                                    core (the origin and the region keep 1;
#                                                    the report is not committed either)
#
# Needs wrk, nginx and h2load (installed from Debian's packages if missing) and wasmtime-cli at the
# version Poplar embeds (built with `cargo install` into target/tools if missing: ~15 min once).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
duration=${1:-8}
connections=${2:-32}
wasmtime_version=48.0.8

scripts/setup.sh wrk nginx h2load:nghttp2-client
scripts/build-tasks.sh
cargo build --release --quiet --bin poplar --example relay --example bare_pingora --example lru_edge
wasmtime="$root/target/tools/bin/wasmtime"
if ! "$wasmtime" --version 2>/dev/null | grep -q "$wasmtime_version"; then
  echo "bench: building wasmtime-cli $wasmtime_version (once)" >&2
  cargo install --quiet wasmtime-cli --version "$wasmtime_version" --locked --root "$root/target/tools"
fi

# One worker each, or (BENCH_DEFAULTS=1) every measured server's own default.
if [[ -n "${BENCH_DEFAULTS:-}" ]]; then
  edge_threads="" nginx_workers=auto pingora_threads=$(nproc) wasmtime_env=()
else
  edge_threads="threads: 1" nginx_workers=1 pingora_threads=1 wasmtime_env=(TOKIO_WORKER_THREADS=1)
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$work/nginx-ref.pid" ] && kill "$(cat "$work/nginx-ref.pid")" 2>/dev/null || true
  [ -f "$work/nginx-origin.pid" ] && kill "$(cat "$work/nginx-origin.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # url (patience: tenths of a second, default 200)
  for _ in $(seq "${patience:-200}"); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "bench: nothing answers $1" >&2; exit 1
}

edge=$(free_port); region=$(free_port); origin=$(free_port); wasmserve=$(free_port)
bare_static=$(free_port); bare_proxy=$(free_port)
nginx_static=$(free_port); nginx_proxy=$(free_port); nginx_cache=$(free_port)
edge_tls=$(free_port); nginx_tls=$(free_port)
edge_log=$(free_port); edge_metrics=$(free_port); metrics_admin=$(free_port); edge_plain=$(free_port)
cert="$root/conf/certs/localhost.pem"; cert_key="$root/conf/certs/localhost.key"
key="bench-forwarding-key-$(date +%s)"

# The origin: its own nginx, one worker.
mkdir -p "$work/cache"
# nginx started as root runs its workers as another user: they must reach the cache.
chmod 755 "$work"; chmod 777 "$work/cache"
cat > "$work/nginx-origin.conf" <<NGINX
worker_processes 1;
pid $work/nginx-origin.pid;
error_log $work/nginx-origin.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:$origin; location / { return 200 "origin says hello\n"; } }
}
NGINX
# The reference nginx: one worker, the three scenarios on three ports.
cat > "$work/nginx-ref.conf" <<NGINX
worker_processes $nginx_workers;
pid $work/nginx-ref.pid;
error_log $work/nginx-ref.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  proxy_cache_path $work/cache levels=1:2 keys_zone=hits:10m max_size=100m inactive=1h use_temp_path=off;
  upstream origin { server 127.0.0.1:$origin; keepalive 64; }
  upstream poplar { server 127.0.0.1:$edge; keepalive 64; }
  server { listen 127.0.0.1:$nginx_static; location / { return 200 "hello\n"; } }
  server {
    listen 127.0.0.1:$nginx_proxy;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
  server {
    listen 127.0.0.1:$nginx_cache;
    location / {
      proxy_pass http://poplar; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache hits; proxy_cache_valid 200 1h;
    }
  }
  server {
    listen 127.0.0.1:$nginx_tls ssl http2;
    ssl_certificate $cert; ssl_certificate_key $cert_key; ssl_protocols TLSv1.2 TLSv1.3;
    # nginx closes a connection after 1,000 requests by default, and h2load does not open
    # another: as Poplar, no limit.
    keepalive_requests 100000000;
    location /cached {
      proxy_pass http://poplar; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache hits; proxy_cache_valid 200 1h;
    }
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGINX

cat > "$work/region.yaml" <<YAML
role: region
listen: "127.0.0.1:$region"
threads: 1
tasks:
  hello: { wasm: $root/tasks/dist/hello.wasm, limits: { memory: 16MiB, timeout: 1s } }
YAML
cat > "$work/edge.yaml" <<YAML
role: edge
listen:
  - address: "127.0.0.1:$edge"
  - address: "127.0.0.1:$edge_tls"
    tls: { certificates: [{ cert: $cert, key: $cert_key }] }
$edge_threads
regions:
  region: { address: "127.0.0.1:$region" }
tasks:
  hello: { wasm: $root/tasks/dist/hello.wasm, limits: { memory: 16MiB, timeout: 100ms } }
routes:
  - match: { path_prefix: /hello }
    task: hello
    placement: edge
  - match: { path_prefix: /cached }
    task: hello
    placement: edge
    cache: { ttl: 1h }
  - match: { path_prefix: /forwarded }
    task: hello
    placement: region
  - match: { path_prefix: /origin }
    origin: "127.0.0.1:$origin"
YAML

# One small edge three times: plain, with the access log on, and with an admin endpoint
# scraped (the same routes, so only the log or the admin differs).
edge_routes() {
  cat <<YAML
$edge_threads
tasks:
  hello: { wasm: $root/tasks/dist/hello.wasm, limits: { memory: 16MiB, timeout: 100ms } }
routes:
  - match: { path_prefix: /cached }
    task: hello
    placement: edge
    cache: { ttl: 1h }
YAML
}
{ echo "role: edge"; echo "listen: \"127.0.0.1:$edge_plain\""; edge_routes; } > "$work/edge-plain.yaml"
{ echo "role: edge"; echo "listen: \"127.0.0.1:$edge_log\""; echo "access_log: { to: $work/access.log, format: text }"; edge_routes; } > "$work/edge-log.yaml"
{ echo "role: edge"; echo "listen: \"127.0.0.1:$edge_metrics\""; echo "admin: { listen: \"127.0.0.1:$metrics_admin\" }"; edge_routes; } > "$work/edge-metrics.yaml"

nginx -c "$work/nginx-origin.conf"
nginx -c "$work/nginx-ref.conf"
env -u RUST_BACKTRACE RUST_LOG=warn POPLAR_FORWARDING_KEY="$key" target/release/poplar serve -c "$work/region.yaml" 2>"$work/region.log" &
pids+=($!); region_pid=$!
env -u RUST_BACKTRACE RUST_LOG=warn POPLAR_FORWARDING_KEY="$key" target/release/poplar serve -c "$work/edge.yaml" 2>"$work/edge.log" &
pids+=($!); edge_pid=$!
env -u RUST_BACKTRACE "${wasmtime_env[@]}" "$wasmtime" serve -S cli --addr "127.0.0.1:$wasmserve" tasks/dist/hello.wasm 2>"$work/wasmtime.log" >/dev/null &
pids+=($!); wasmtime_pid=$!
wasmserve_default=$(free_port)
env -u RUST_BACKTRACE "$wasmtime" serve -S cli --addr "127.0.0.1:$wasmserve_default" tasks/dist/hello.wasm 2>"$work/wasmtime-default.log" >/dev/null &
pids+=($!); wasmtime_default_pid=$!
target/release/examples/bare_pingora --threads "$pingora_threads" --listen "127.0.0.1:$bare_static" 2>"$work/bare-static.log" &
pids+=($!); bare_static_pid=$!
target/release/examples/bare_pingora --threads "$pingora_threads" --listen "127.0.0.1:$bare_proxy" --origin "127.0.0.1:$origin" 2>"$work/bare-proxy.log" &
pids+=($!); bare_proxy_pid=$!
env -u RUST_BACKTRACE RUST_LOG=warn target/release/poplar serve -c "$work/edge-plain.yaml" 2>"$work/edge-plain.log" &
pids+=($!); edge_plain_pid=$!
env -u RUST_BACKTRACE RUST_LOG=warn target/release/poplar serve -c "$work/edge-log.yaml" 2>"$work/edge-log.log" &
pids+=($!); edge_log_pid=$!
env -u RUST_BACKTRACE RUST_LOG=warn target/release/poplar serve -c "$work/edge-metrics.yaml" 2>"$work/edge-metrics.log" &
pids+=($!); edge_metrics_pid=$!
wait_for "http://127.0.0.1:$edge/hello"
wait_for "http://127.0.0.1:$edge_plain/cached?name=wrk"
wait_for "http://127.0.0.1:$edge_log/cached?name=wrk"
wait_for "http://127.0.0.1:$edge_metrics/cached?name=wrk"
# A Prometheus stand-in: one scrape a second, for the whole run.
( while :; do curl -s -o /dev/null "http://127.0.0.1:$metrics_admin/metrics"; sleep 1; done ) &
pids+=($!)
wait_for "http://127.0.0.1:$bare_static/"
wait_for "http://127.0.0.1:$bare_proxy/"
wait_for "http://127.0.0.1:$wasmserve/hello"
wait_for "http://127.0.0.1:$wasmserve_default/hello"
wait_for "http://127.0.0.1:$nginx_static/"
curl -s -o /dev/null "http://127.0.0.1:$edge/cached?name=wrk"
curl -s -o /dev/null "http://127.0.0.1:$nginx_cache/cached?name=wrk"
curl -s -o /dev/null "http://127.0.0.1:$nginx_cache/cached?name=wrk"
curl -sk -o /dev/null "https://127.0.0.1:$nginx_tls/cached?name=wrk"
curl -sk -o /dev/null "https://127.0.0.1:$nginx_tls/cached?name=wrk"

# Signatures for asking the region directly, as an edge signs (v2, docs/SECURITY.md): a
# region accepts each signature once, so every request of the run has its own, made just
# before it (valid for the region's 30 s clock skew). One "timestamp id signature" per line,
# read by scripts/signed.lua.
signatures() { # file
  python3 - "$key" "$region" "$1" <<'PY'
import hashlib, hmac, sys, time
key, region, out = sys.argv[1].encode(), sys.argv[2], sys.argv[3]
ts = int(time.time())
host = f"127.0.0.1:{region}"
empty = hashlib.sha256(b"").hexdigest()
headers = hashlib.sha256(f"host:{host}\n".encode()).hexdigest()
with open(out, "w") as f:
    for i in range(600_000):
        rid = f"bench-{ts}-{i}"
        text = f"poplar-v2\n{ts}\n{rid}\nGET\n/forwarded?name=wrk\nhello\n{host}\n{empty}\n{headers}"
        f.write(f"{ts} {rid} v2={hmac.new(key, text.encode(), hashlib.sha256).hexdigest()}\n")
PY
}

results="$work/results.tsv"
: > "$results"
scenarios=${BENCH_SCENARIOS:-static inline cache origin forward https https-origin handshake h2 log metrics mixed code}
# Scenarios 1-5 run `rounds` times, their servers taking turns within a round, and the report
# takes each server's median: one run alone moves 10% or more on this shared machine.
rounds=${BENCH_ROUNDS:-3}
wanted() { [[ " $scenarios " == *" $1 "* ]]; }
# A server's processes: the one started and its children (nginx's worker under its master).
processes() { echo "$1" $(pgrep -P "$1" || true); }
# User and system CPU time of a server so far, in clock ticks (fields 14 and 15 of
# /proc/PID/stat, counted after the parenthesised name).
cpu_ticks() {
  local p u=0 s=0 fields
  for p in $(processes "$1"); do
    fields=($(sed 's/.*) //' "/proc/$p/stat"))
    u=$((u + fields[11])); s=$((s + fields[12]))
  done
  echo "$u $s"
}
run() { # scenario, server, pid, url, [wrk script], [request header]
  wanted "$1" || return 0
  local args=(-t1 -c"$connections" -d"${duration}s" --latency)
  [ -n "${5:-}" ] && args+=(-s "$5")
  [ -n "${6:-}" ] && args+=(-H "$6")
  local out before after
  before=($(cpu_ticks "$3"))
  out=$(wrk "${args[@]}" "$4")
  after=($(cpu_ticks "$3"))
  local rps p50 p99 errors
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errors=$(awk '/Socket errors|Non-2xx/ {print}' <<<"$out" | tr -s ' ' | tr '\n' ' ')
  record "$1" "$2" "$3" "$rps" "$p50" "$p99" "$errors" "$(awk '/requests in/ {print $1}' <<<"$out")"
}
# HTTP/2: h2load, 4 connections of 32 streams each, for `duration` seconds.
run_h2() { # scenario, server, pid, url
  wanted "$1" || return 0
  local out before after
  before=($(cpu_ticks "$3"))
  out=$(h2load -c4 -m32 -D"$duration" "$4" 2>&1)
  after=($(cpu_ticks "$3"))
  local rps mean max errors requests
  rps=$(awk '/^finished in/ {print $4}' <<<"$out")
  # h2load reports no percentiles: the mean and the largest request time stand in.
  read -r mean max < <(awk '/^time for request:/ {print $6, $5}' <<<"$out")
  requests=$(awk '/^requests:/ {print $8}' <<<"$out")
  errors=$(awk '/^requests:/ && ($10 + $12 > 0) {print $10 " failed, " $12 " errored"}' <<<"$out")
  record "$1" "$2" "$3" "$rps" "$mean" "$max" "$errors" "$requests"
}
record() { # scenario, server, pid, rps, p50, p99, errors, requests
  local rss user sys
  rss=$(ps -o rss= -p "$(processes "$3" | tr ' ' ,)" | awk '{s += $1} END {print s}')
  # The server's CPU per request, user and system, in microseconds (`before` and `after`
  # are the caller's).
  read -r user sys < <(python3 -c "t, n = $(getconf CLK_TCK), max(${8:-0}, 1)
print(f'{($((after[0] - before[0]))) * 1e6 / t / n:.1f} {($((after[1] - before[1]))) * 1e6 / t / n:.1f}')")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$4" "$5" "$6" "${7:-none}" "$rss" "$user" "$sys" >> "$results"
  printf '%-10s %-34s %10s %9s %9s %8s KiB %6s+%-6s us/req  %s\n' "$1" "$2" "$4" "$5" "$6" "$rss" "$user" "$sys" "${7:-}"
}
nginx_ref_pid=$(cat "$work/nginx-ref.pid")
echo "wrk -t1 -c$connections -d${duration}s, one scenario after another, $rounds rounds; $(nproc) cores; RUST_BACKTRACE unset"
printf '%-10s %-34s %10s %9s %9s %12s %s\n' scenario server requests/s p50 p99 "server RSS" "server CPU user+sys"
for round in $(seq "$rounds"); do
  run static "poplar (404 from request_filter)" "$edge_pid" "http://127.0.0.1:$edge/none"
  run static "nginx return 200" "$nginx_ref_pid" "http://127.0.0.1:$nginx_static/"
  run static "pingora alone, 200 from request_filter" "$bare_static_pid" "http://127.0.0.1:$bare_static/"
  run inline "poplar hello inline" "$edge_pid" "http://127.0.0.1:$edge/hello?name=wrk"
  run inline "wasmtime serve -S cli" "$wasmtime_pid" "http://127.0.0.1:$wasmserve/hello?name=wrk"
  run inline "wasmtime serve, default threads" "$wasmtime_default_pid" "http://127.0.0.1:$wasmserve_default/hello?name=wrk"
  run cache "poplar cache hit" "$edge_pid" "http://127.0.0.1:$edge/cached?name=wrk"
  run cache "nginx proxy_cache hit" "$nginx_ref_pid" "http://127.0.0.1:$nginx_cache/cached?name=wrk"
  run origin "poplar origin route" "$edge_pid" "http://127.0.0.1:$edge/origin"
  run origin "nginx proxy_pass" "$nginx_ref_pid" "http://127.0.0.1:$nginx_proxy/origin"
  run origin "pingora alone, proxy" "$bare_proxy_pid" "http://127.0.0.1:$bare_proxy/origin"
  run forward "poplar edge to region" "$edge_pid" "http://127.0.0.1:$edge/forwarded?name=wrk"
  if wanted forward; then signatures "$work/signed.txt"; fi
  export SIGNED_FILE="$work/signed.txt"
  run forward "poplar region, direct" "$region_pid" "http://127.0.0.1:$region/forwarded?name=wrk" scripts/signed.lua
  run https "poplar cache hit, HTTPS" "$edge_pid" "https://127.0.0.1:$edge_tls/cached?name=wrk"
  run https "nginx proxy_cache hit, HTTPS" "$nginx_ref_pid" "https://127.0.0.1:$nginx_tls/cached?name=wrk"
  run https-origin "poplar origin route, HTTPS" "$edge_pid" "https://127.0.0.1:$edge_tls/origin"
  run https-origin "nginx proxy_pass, HTTPS" "$nginx_ref_pid" "https://127.0.0.1:$nginx_tls/origin"
  run handshake "poplar, TLS handshake per request" "$edge_pid" "https://127.0.0.1:$edge_tls/cached?name=wrk" "" "Connection: close"
  run handshake "nginx, TLS handshake per request" "$nginx_ref_pid" "https://127.0.0.1:$nginx_tls/cached?name=wrk" "" "Connection: close"
  run_h2 h2 "poplar cache hit, HTTP/2" "$edge_pid" "https://127.0.0.1:$edge_tls/cached?name=wrk"
  run_h2 h2 "nginx proxy_cache hit, HTTP/2" "$nginx_ref_pid" "https://127.0.0.1:$nginx_tls/cached?name=wrk"
  run log "poplar cache hit, access log on" "$edge_log_pid" "http://127.0.0.1:$edge_log/cached?name=wrk"
  run log "poplar cache hit, no access log" "$edge_plain_pid" "http://127.0.0.1:$edge_plain/cached?name=wrk"
  run metrics "poplar cache hit, scraped each second" "$edge_metrics_pid" "http://127.0.0.1:$edge_metrics/cached?name=wrk"
  run metrics "poplar cache hit, no admin" "$edge_plain_pid" "http://127.0.0.1:$edge_plain/cached?name=wrk"
done

# 6. Mixed: 1,000 distinct tasks of realistic sizes, Zipf traffic at a fixed rate, far
# regions, and every edge policy within the same budget of resident code.
tasks=1000
rate=${MIXED_RATE:-2000}
# Long enough for auto to compile what turns hot (a JS component takes seconds at nice 19).
warmup=${MIXED_WARMUP:-30}
budget=$((128 << 20))
mixed_connections=512
mixed="$work/mixed.tsv"
: > "$mixed"
if wanted mixed; then
scripts/build-js-task.sh
python3 - tasks/dist/hello.wasm tasks/dist/js-hello.wasm "$work/variants" "$tasks" <<'PY'
# Build i of a task: the same component plus a custom section naming i. Every build has its
# own digest, so Poplar (like any wasm host) compiles and keeps each one on its own. Most are
# hello (84 KB); one in 50 (ranks 7, 57, 107, ...: one of them among the hottest) is the
# 13 MB JavaScript component, whose compiled code is 37 MB. Each gets a `t<i>.limits` for
# examples/lru_edge.rs (memory, deadline in ms).
import pathlib, sys
hello, js = (pathlib.Path(p).read_bytes() for p in sys.argv[1:3])
out, n = pathlib.Path(sys.argv[3]), int(sys.argv[4])
def leb(v):
    b = bytearray()
    while True:
        byte, v = v & 0x7F, v >> 7
        b.append(byte | (0x80 if v else 0))
        if not v:
            return bytes(b)
out.mkdir(parents=True)
name = b"poplar-bench-build"
for i in range(n):
    base = js if i % 50 == 7 else hello
    payload = leb(len(name)) + name + str(i).encode()
    (out / f"t{i}.wasm").write_bytes(base + b"\x00" + leb(len(payload)) + payload)
    (out / f"t{i}.limits").write_text(f"{128 << 20 if base is js else 16 << 20} 50\n")
PY
limits_of() { if (( $1 % 50 == 7 )); then echo "{ memory: 128MiB, timeout: $2 }"; else echo "{ memory: 16MiB, timeout: $2 }"; fi; }
for r in near far; do
  {
    echo "role: region"; echo "listen: \"127.0.0.1:$(free_port)\""; echo "threads: 1"
    echo "code_cache: { dir: \"$work/region-code\", max_size: 8GiB }"
    echo "tasks:"
    for i in $(seq 0 $((tasks - 1))); do
      echo "  t$i: { wasm: $work/variants/t$i.wasm, limits: $(limits_of "$i" 1s) }"
    done
  } > "$work/region-$r.yaml"
done
region_near=$(awk -F'"' '/^listen/ {print $2}' "$work/region-near.yaml")
region_far=$(awk -F'"' '/^listen/ {print $2}' "$work/region-far.yaml")
echo
echo "mixed: starting two regions with $tasks distinct tasks each (the first compiles them all, the second loads what it compiled)"
for r in near far; do
  env -u RUST_BACKTRACE RUST_LOG=warn POPLAR_FORWARDING_KEY="$key" target/release/poplar serve -c "$work/region-$r.yaml" 2>"$work/region-$r.log" &
  pids+=($!)
  [ "$r" = near ] && patience=30000 wait_for "http://$region_near/_poplar/health"
done
patience=30000 wait_for "http://$region_far/_poplar/health"
relay_near=$(free_port); relay_far=$(free_port)
target/release/examples/relay --listen "127.0.0.1:$relay_near" --to "$region_near" --delay-ms 20 & pids+=($!)
target/release/examples/relay --listen "127.0.0.1:$relay_far" --to "$region_far" --delay-ms 60 & pids+=($!)
echo "mixed: $tasks tasks, Zipf 1.1, regions 20 ms and 60 ms away; $rate requests/s offered over $mixed_connections connections, ${warmup}s to warm up then ${duration}s measured; every edge holds at most $((budget >> 20)) MiB of compiled code"
printf '%-9s %10s %9s %9s %9s %9s %10s %8s  %s\n' placement requests/s p50 p99 mean errors "edge RSS" "edge CPU" "placements"
for mode in auto edge-lru region; do
  port=$(free_port); admin=$(free_port)
  if [ "$mode" = edge-lru ]; then
    started=$(date +%s.%N)
    env -u RUST_BACKTRACE RUST_LOG=warn target/release/examples/lru_edge --listen "127.0.0.1:$port" \
      --tasks "$work/variants" --budget "$budget" --code-cache "$work/edge-code-$mode" 2>"$work/edge-$mode.log" &
    mixed_pid=$!
    patience=3000 wait_for "http://127.0.0.1:$port/none"
  else
    {
      echo "role: edge"; echo "listen: \"127.0.0.1:$port\""; echo "threads: 1"
      echo "admin: { listen: \"127.0.0.1:$admin\" }"
      echo "code_cache: { dir: \"$work/edge-code-$mode\", max_size: 8GiB }"
      echo "placement: { hot_threshold: 5, max_inline: 64, max_resident: 256, max_resident_memory: $((budget >> 20))MiB }"
      echo "regions:"
      echo "  near: { address: \"127.0.0.1:$relay_near\" }"
      echo "  far: { address: \"127.0.0.1:$relay_far\" }"
      echo "tasks:"
      for i in $(seq 0 $((tasks - 1))); do
        echo "  t$i: { wasm: $work/variants/t$i.wasm, limits: $(limits_of "$i" 50ms) }"
      done
      echo "routes:"
      for i in $(seq 0 $((tasks - 1))); do
        echo "  - { match: { path_prefix: /t/$i }, task: t$i, placement: $mode }"
      done
    } > "$work/edge-$mode.yaml"
    started=$(date +%s.%N)
    env -u RUST_BACKTRACE RUST_LOG=warn POPLAR_FORWARDING_KEY="$key" target/release/poplar serve -c "$work/edge-$mode.yaml" 2>"$work/edge-$mode.log" &
    mixed_pid=$!
    patience=3000 wait_for "http://127.0.0.1:$port/_poplar/none"
  fi
  start=$(python3 -c "import time; print(f'{time.time() - $started:.1f}s')")
  # The same load for as long again first, unmeasured: auto's promotions settle, and every
  # policy is measured warm.
  ZIPF_TASKS=$tasks ZIPF_RATE=$rate wrk -t1 -c"$mixed_connections" -d"${warmup}s" --timeout 60s -s scripts/zipf.lua "http://127.0.0.1:$port" >/dev/null
  placements="-"; by_site="-"
  [ "$mode" != edge-lru ] && curl -s "http://127.0.0.1:$admin/stats" > "$work/stats-before.json"
  cpu_before=$(awk '{print $14 + $15}' "/proc/$mixed_pid/stat")
  # A request waiting for a load is measured, not dropped at wrk's 2 s timeout.
  out=$(ZIPF_TASKS=$tasks ZIPF_RATE=$rate wrk -t1 -c"$mixed_connections" -d"${duration}s" --timeout 60s --latency -s scripts/zipf.lua "http://127.0.0.1:$port")
  cpu=$(awk -v before="$cpu_before" -v hz="$(getconf CLK_TCK)" '{printf "%.1fs", ($14 + $15 - before) / hz}' "/proc/$mixed_pid/stat")
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  mean=$(awk '$1=="Latency" && NF > 3 {print $2; exit}' <<<"$out")
  errors=$(awk '/Non-2xx/ {print $NF} /Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' <<<"$out" | awk '{s += $1} END {print s + 0}')
  rss=$(ps -o rss= -p "$mixed_pid" | tr -d ' ')
  # Placements counted, and the p99 of the edge's own response times by where requests were
  # answered, both over the measured window (the difference of two /stats snapshots).
  [ "$mode" != edge-lru ] && IFS=$'\t' read -r placements by_site < <(curl -s "http://127.0.0.1:$admin/stats" | python3 -c 'import json,sys,collections
def count(stats):
    c = collections.Counter()
    for t in stats["placements"].values():
        c.update(t)
    return c
def buckets(stats, site):
    return collections.Counter({le: n for le, n in stats["latency"].get(site, {}).get("buckets", [])})
before, after = json.load(open(sys.argv[1])), json.load(sys.stdin)
c = count(after)
c.subtract(count(before))
sites = []
for site in ("edge", "region", "cache"):
    b = buckets(after, site)
    b.subtract(buckets(before, site))
    total = sum(b.values())
    if total:
        seen, rank = 0, 0.99 * total
        for le in sorted(b):
            seen += b[le]
            if seen >= rank:
                sites.append(f"{site} {le / 1000:.2f} ms ({total})")
                break
print(" ".join(f"{k}={v}" for k, v in sorted(c.items()) if v), ", ".join(sites), sep="\t")' "$work/stats-before.json")
  kill "$mixed_pid"; wait "$mixed_pid" 2>/dev/null || true
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$rps" "$p50" "$p99" "$rss" "$placements" "$errors" "$start" "$by_site" "$mean" "$cpu" "$warmup" >> "$mixed"
  printf '%-9s %10s %9s %9s %9s %9s %7s KiB %8s  %s; p99 by where answered: %s\n' "$mode" "$rps" "$p50" "$p99" "$mean" "$errors" "$rss" "$cpu" "$placements" "$by_site"
done
fi

python3 scripts/bench_report.py "$results" "$duration" "$connections" "$(nproc)" "$(uname -r)" \
  "$(wrk --version 2>&1 | head -1 | awk '{print $2}')" "$(nginx -v 2>&1 | sed 's/.*nginx\///')" "$wasmtime_version" "$mixed" "$rate" "$mixed_connections" "$rounds"

# 7. Task code: start to first inline answer, cold and warm, beside wasmtime serve; deploy to
# a hot edge (scripts/code_bench.py writes its own section of docs/BENCHMARKS.md).
if wanted code; then
  scripts/build-js-task.sh
  python3 scripts/code_bench.py
fi
