#!/usr/bin/env bash
# Two builds of Poplar side by side in one run, on bench.sh's scenarios: is the new one slower?
#
#   scripts/bench-ab.sh OLD_POPLAR [NEW_POPLAR]       (NEW_POPLAR: target/release/poplar)
#
# Both builds serve at once, each with its own edge and region (one worker thread each, or
# AB_THREADS; the config below, which every build since c9afd22 reads), in front of one nginx
# origin. Each round runs every scenario (static 404, inline hello, cache hit, origin route,
# edge to region) with wrk -t1 -c32 for AB_DURATION seconds (default 5) against one build and
# then the other, the order swapped every round; AB_ROUNDS rounds (default 6); AB_SCENARIOS=
# "cache origin" runs only those. Reported per scenario: each build's median requests/s and its
# edge's CPU per request (user + system, from /proc), the new/old ratio of the medians and of
# every round. The ratio of a round, not one run, is the
# measure: this machine's speed drifts by 15-25% between runs of the same binary.
#
# An old build: git worktree add /tmp/old COMMIT && (cd /tmp/old && cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
old=${1:?usage: scripts/bench-ab.sh OLD_POPLAR [NEW_POPLAR]}
new=${2:-target/release/poplar}
rounds=${AB_ROUNDS:-6}
duration=${AB_DURATION:-5}
threads=${AB_THREADS:-1}
scripts/setup.sh wrk nginx
scripts/build-tasks.sh
[ "$new" != target/release/poplar ] || cargo build --release --quiet --bin poplar

work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() {
  for _ in $(seq 600); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "bench-ab: nothing answers $1" >&2; exit 1
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

origin=$(free_port)
cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:$origin; location / { return 200 "origin says hello\n"; } }
}
NGINX
nginx -c "$work/nginx.conf"

key="bench-ab-forwarding-key-$(date +%s)"
declare -A edge_port edge_pid
for build in old new; do
  binary=$old; [ $build = new ] && binary=$new
  region=$(free_port); edge=$(free_port)
  cat > "$work/$build-region.yaml" <<YAML
role: region
listen: "127.0.0.1:$region"
threads: $threads
tasks:
  hello: { wasm: $root/tasks/dist/hello.wasm, limits: { memory: 16MiB, timeout: 1s } }
YAML
  cat > "$work/$build-edge.yaml" <<YAML
role: edge
listen: "127.0.0.1:$edge"
threads: $threads
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
  env -u RUST_BACKTRACE RUST_LOG=warn POPLAR_FORWARDING_KEY="$key" "$binary" serve -c "$work/$build-region.yaml" 2>"$work/$build-region.log" &
  pids+=($!)
  env -u RUST_BACKTRACE RUST_LOG=warn POPLAR_FORWARDING_KEY="$key" "$binary" serve -c "$work/$build-edge.yaml" 2>"$work/$build-edge.log" &
  pids+=($!)
  edge_port[$build]=$edge; edge_pid[$build]=$!
done
for build in old new; do
  wait_for "http://127.0.0.1:${edge_port[$build]}/hello"
  wait_for "http://127.0.0.1:${edge_port[$build]}/forwarded"
  curl -s -o /dev/null "http://127.0.0.1:${edge_port[$build]}/cached"
done

read -r -a scenarios <<< "${AB_SCENARIOS:-static inline cache origin forward}"
declare -A path=([static]=/none [inline]=/hello [cache]=/cached [origin]=/origin [forward]=/forwarded)
hz=$(getconf CLK_TCK)
: > "$work/results"
for round in $(seq "$rounds"); do
  order="old new"; [ $((round % 2)) -eq 0 ] && order="new old"
  for scenario in "${scenarios[@]}"; do
    for build in $order; do
      pid=${edge_pid[$build]}
      before=$(cpu_ticks "$pid")
      out=$(wrk -t1 -c32 -d"${duration}s" "http://127.0.0.1:${edge_port[$build]}${path[$scenario]}")
      after=$(cpu_ticks "$pid")
      rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
      total=$(awk '/requests in/ {print $1}' <<<"$out")
      non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
      echo "$round $scenario $build $rps $total $((after - before)) ${non2xx:-0}" >> "$work/results"
      echo "bench-ab: round $round $scenario $build: $rps requests/s" >&2
    done
  done
done

python3 - "$work/results" "$hz" "$old" "$new" "$rounds" "$duration" "$threads" <<'PY'
import statistics, sys
path, hz, old, new, rounds, duration, threads = sys.argv[1:]
hz = int(hz)
rows = {}
for line in open(path):
    r, scenario, build, rps, total, ticks, non2xx = line.split()
    rows.setdefault(scenario, {}).setdefault(build, []).append(
        (int(r), float(rps), int(total), int(ticks), int(non2xx)))
print(f"`scripts/bench-ab.sh {old} {new}`: {rounds} rounds, wrk -t1 -c32 -d{duration}s, "
      f"each build one edge (and region) on {threads} worker thread(s), the order swapped every "
      "round.\n")
print("| scenario | old req/s (median) | new req/s (median) | new / old | rounds: new / old "
      "| old CPU µs/req | new CPU µs/req |")
print("| --- | --- | --- | --- | --- | --- | --- |")
# The static scenario is a 404 by design; any other non-2xx answer spoils the comparison.
for scenario in [s for s in ["static", "inline", "cache", "origin", "forward"] if s in rows]:
    o, n = rows[scenario]["old"], rows[scenario]["new"]
    med = lambda xs: statistics.median(x[1] for x in xs)
    cpu = lambda xs: statistics.median(x[3] / hz / x[2] * 1e6 for x in xs)
    per_round = ", ".join(f"{b[1] / a[1]:.2f}" for a, b in zip(o, n))
    bad = sum(x[4] for x in o + n) if scenario != "static" else 0
    note = f" ({bad} non-2xx)" if bad else ""
    print(f"| {scenario}{note} | {med(o):,.0f} | {med(n):,.0f} | {med(n) / med(o):.2f} | "
          f"{per_round} | {cpu(o):.1f} | {cpu(n):.1f} |")
PY
