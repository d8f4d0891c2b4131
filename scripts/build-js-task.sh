#!/usr/bin/env bash
# Builds tasks/js-hello (JavaScript, by componentize-js from npm) into
# tasks/dist/js-hello.wasm: a 13 MB wasi:http component with a JS engine inside, for the
# code benchmarks (scripts/code-bench.sh). Not part of the test suite: it needs npm.
set -euo pipefail
cd "$(dirname "$0")/../tasks/js-hello"
[ -f ../dist/js-hello.wasm ] && [ ../dist/js-hello.wasm -nt task.js ] && exit 0
npm install --no-audit --no-fund --silent
# wasi:http's WIT from the wasmtime-wasi-http crate Poplar builds with, at the version
# StarlingMonkey exports (0.2.10; the interfaces are the same).
wit_src=$(cargo metadata --format-version 1 --manifest-path ../../Cargo.toml |
  python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="wasmtime-wasi-http"))')
wit=$(mktemp -d)
trap 'rm -rf "$wit"' EXIT
mkdir -p "$wit/deps"
cp "$(dirname "$wit_src")"/wit/deps/*.wit "$wit/deps/"
sed -i -E 's/0\.2\.[0-9]+/0.2.10/g' "$wit"/deps/*.wit
printf 'package local:poplar;\n\nworld js-task {\n  include wasi:http/proxy@0.2.10;\n}\n' > "$wit/world.wit"
mkdir -p ../dist
node build.mjs "$wit" ../dist/js-hello.wasm
