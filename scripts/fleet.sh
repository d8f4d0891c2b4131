#!/usr/bin/env bash
# A Poplar fleet of separate hosts on one machine: two edges, two regions and an origin, each
# in a Linux network namespace of its own, joined by veth links to a bridge in a namespace of
# their own; every address is inside those namespaces (10.203.0.0/24), none outside them.
# Regions and the origin are named by DNS (each namespace's /etc/hosts, by `ip netns exec`'s
# /etc/netns/NAME/hosts); a relay in each region's host adds its distance (this kernel has no
# netem). The script deploys a task once to each region, drives a bounded Zipf workload
# through both edges from a client host, kills a region mid-run, and prints what each edge
# did as JSON (placements, failovers, errors) with the metrics every host served.
#
#   sudo scripts/fleet.sh [--requests N] [--summary FILE]
#
# Needs root and `ip netns`; everything it creates (namespaces, /etc/netns/NAME, processes,
# a work folder) is removed at exit. tests/fleet.rs runs a short version of it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
requests=3000
summary=""
while [ $# -gt 0 ]; do
  case "$1" in
    --requests) requests=$2; shift 2 ;;
    --summary) summary=$2; shift 2 ;;
    *) echo "fleet: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "fleet: needs root (network namespaces)" >&2; exit 3; }
command -v ip >/dev/null || { echo "fleet: needs ip (iproute2)" >&2; exit 3; }

# POPLAR_BIN: the binary to run (the tests give theirs); else the debug build.
poplar=${POPLAR_BIN:-}
if [ -z "$poplar" ]; then
  cargo build --quiet --bin poplar
  poplar="$root/target/debug/poplar"
fi
[ -f tasks/dist/hello.wasm ] || scripts/build-tasks.sh

p="pf$$"                       # every namespace's name starts with this
work=$(mktemp -d)
hosts=(core client edge1 edge2 west east origin)
declare -A addr=([client]=10.203.0.41 [edge1]=10.203.0.11 [edge2]=10.203.0.12
  [west]=10.203.0.21 [east]=10.203.0.22 [origin]=10.203.0.31)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for h in "${hosts[@]}"; do
    ip netns del "$p-$h" 2>/dev/null || true
    rm -rf "/etc/netns/$p-$h"
  done
  # FLEET_KEEP=DIR keeps the configs and every host's log there.
  if [ -n "${FLEET_KEEP:-}" ]; then rm -rf "$FLEET_KEEP"; cp -r "$work" "$FLEET_KEEP"; fi
  rm -rf "$work"
}
trap cleanup EXIT

# The network: a bridge in `core`, one veth from it to each host.
for h in "${hosts[@]}"; do ip netns add "$p-$h"; ip -n "$p-$h" link set lo up; done
ip -n "$p-core" link add br0 type bridge
ip -n "$p-core" link set br0 up
for h in "${hosts[@]:1}"; do
  ip -n "$p-core" link add "v-$h" type veth peer name eth0 netns "$p-$h"
  ip -n "$p-core" link set "v-$h" master br0 up
  ip -n "$p-$h" addr add "${addr[$h]}/24" dev eth0
  ip -n "$p-$h" link set eth0 up
  mkdir -p "/etc/netns/$p-$h"
  cat > "/etc/netns/$p-$h/hosts" <<HOSTS
127.0.0.1 localhost
${addr[west]} west.fleet.internal
${addr[east]} east.fleet.internal
${addr[origin]} origin.fleet.internal
${addr[edge1]} edge1.fleet.internal
${addr[edge2]} edge2.fleet.internal
HOSTS
done
on() { local h=$1; shift; ip netns exec "$p-$h" "$@"; }

# Keys and tokens, shared by the fleet.
echo "fleet-forwarding-key-$(date +%s%N)" > "$work/forwarding.key"
export POPLAR_DEPLOY_TOKEN="fleet-deploy-token-0123456789"

# The origin: a static file server.
mkdir -p "$work/www/static"
for i in $(seq 0 49); do echo "static page $i" > "$work/www/static/$i.html"; done
ip netns exec "$p-origin" python3 -m http.server 8000 --bind "${addr[origin]}" --directory "$work/www" \
  > "$work/origin.log" 2>&1 &
pids+=($!)

# Regions: the proxy on the host's loopback, reached through a relay on its address that
# adds the distance; the deploy API on the admin listener.
declare -A delay=([west]=5 [east]=15)
for r in west east; do
  mkdir -p "$work/$r"
  cat > "$work/$r/poplar.yaml" <<YAML
role: region
listen: "127.0.0.1:8080"
threads: 2
admin: { listen: "${addr[$r]}:9901" }
forwarding: { key_file: $work/forwarding.key }
registry: { dir: $work/$r/registry }
YAML
  # Background jobs are simple commands (not the `on` function): `$!` is then the server's
  # own pid (`ip netns exec` execs it), which the kill below needs.
  POPLAR_ADMIN_TOKEN="fleet-admin-token-0123456789" ip netns exec "$p-$r" "$poplar" serve -c "$work/$r/poplar.yaml" \
    > "$work/$r.log" 2>&1 &
  pids+=($!)
  eval "${r}_pids=$!"
  ip netns exec "$p-$r" python3 scripts/fleet_relay.py --listen "${addr[$r]}:8080" --to 127.0.0.1:8080 --delay-ms "${delay[$r]}" \
    > "$work/$r-relay.log" 2>&1 &
  pids+=($!)
  eval "${r}_pids=\"\$${r}_pids $!\""
done

# Edges: each names both regions by DNS; its home is the nearer.
declare -A home=([edge1]=west [edge2]=east)
for e in edge1 edge2; do
  cat > "$work/$e.yaml" <<YAML
role: edge
listen: "${addr[$e]}:8080"
threads: 2
admin: { listen: "${addr[$e]}:9901" }
forwarding: { key_file: $work/forwarding.key }
regions:
  west: { address: "west.fleet.internal:8080" }
  east: { address: "east.fleet.internal:8080" }
health: { interval: 200ms, timeout: 1s, unhealthy_after: 1, resolve_every: 5s }
placement: { hot_threshold: 20, cool_threshold: 5 }
tasks:
  greet: {}                       # both deployed to the regions, taken from them
  far: {}
routes:
  - match: { path_prefix: /greet }
    task: greet
    region: ${home[$e]}
  - match: { path_prefix: /far }
    task: far
    placement: region
    region: ${home[$e]}
  - match: { path_prefix: /static }
    origin: "http://origin.fleet.internal:8000"
    cache: { ttl: 1m }
YAML
  POPLAR_ADMIN_TOKEN="fleet-admin-token-0123456789" ip netns exec "$p-$e" "$poplar" serve -c "$work/$e.yaml" \
    > "$work/$e.log" 2>&1 &
  pids+=($!)
done

# Up: every host answers its health path (bounded: 60 s).
up() {
  on client python3 - "$@" <<'PY'
import sys, time, urllib.request
deadline = time.time() + 60
for url in sys.argv[1:]:
    while True:
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                break
        except Exception:
            pass
        if time.time() > deadline:
            sys.exit(f"fleet: {url} never answered")
        time.sleep(0.2)
PY
}
up "http://${addr[west]}:8080/_poplar/health" "http://${addr[east]}:8080/_poplar/health" \
  "http://${addr[edge1]}:8080/_poplar/health" "http://${addr[edge2]}:8080/_poplar/health"

# Deploy once to each region: the operator's one step. greet runs at the edges when hot; far
# is pinned to the regions.
for r in west east; do
  on client "$poplar" deploy greet tasks/dist/hello.wasm --region "http://${addr[$r]}:9901" \
    --memory 32MiB --timeout 100ms > "$work/deploy-$r.json"
  on client "$poplar" deploy far tasks/dist/echo.wasm --region "http://${addr[$r]}:9901" \
    --memory 32MiB --timeout 1s > /dev/null
done
digest=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["current"]["digest"])' \
  "$work/deploy-west.json")

# The workload, from the client host; west is killed when a third of it is done.
ip netns exec "$p-client" python3 scripts/fleet_drive.py --requests "$requests" --digest "$digest" \
  --edges "${addr[edge1]}" "${addr[edge2]}" --hosts edge1="${addr[edge1]}" \
  edge2="${addr[edge2]}" west="${addr[west]}" east="${addr[east]}" \
  --kill-marker "$work/kill-now" --killed-marker "$work/killed" > "$work/summary.json" &
driver=$!
pids+=($driver)
while [ ! -e "$work/kill-now" ] && kill -0 "$driver" 2>/dev/null; do sleep 0.05; done
if [ -e "$work/kill-now" ]; then
  # The host dies: its server and its relay at once. shellcheck disable=SC2154,SC2086
  kill -9 $west_pids
  wait $west_pids 2>/dev/null || true
  touch "$work/killed"
fi
wait "$driver"
if [ -n "$summary" ]; then cp "$work/summary.json" "$summary"; fi
cat "$work/summary.json"
