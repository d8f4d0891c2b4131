#!/usr/bin/env bash
# Builds the example and test tasks in tasks/ into wasi:http components in tasks/dist/.
# Also builds a component nobody on this project wrote: the `http_server` example shipped
# in the published `wstd` crate, unchanged, as tasks/dist/wstd-http-server.wasm.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "build-tasks: adding the wasm32-wasip2 target" >&2
  rustup target add wasm32-wasip2
fi

cargo build --quiet --release --target wasm32-wasip2 --manifest-path tasks/Cargo.toml
mkdir -p tasks/dist
for crate in hello outbound echo json_transform spin_forever memory_hog trap stack_overflow; do
  cp -f "tasks/target/wasm32-wasip2/release/$crate.wasm" "tasks/dist/${crate//_/-}.wasm"
done

# The third-party component: wstd's own example, from the crate version the echo task uses.
wstd_manifest=$(cargo metadata --format-version 1 --manifest-path tasks/Cargo.toml |
  python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="wstd"))')
wstd_copy="$root/tasks/target/third-party/$(basename "$(dirname "$wstd_manifest")")"
if [ ! -f "$wstd_copy/Cargo.toml" ]; then
  mkdir -p "$(dirname "$wstd_copy")"
  cp -r "$(dirname "$wstd_manifest")" "$wstd_copy"
fi
cargo build --quiet --release --target wasm32-wasip2 --example http_server \
  --manifest-path "$wstd_copy/Cargo.toml" --target-dir "$root/tasks/target/third-party/target"
cp -f "$root/tasks/target/third-party/target/wasm32-wasip2/release/examples/http_server.wasm" \
  tasks/dist/wstd-http-server.wasm
echo "build-tasks: $(ls tasks/dist | wc -l) components in tasks/dist" >&2
