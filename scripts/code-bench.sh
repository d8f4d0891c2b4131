#!/usr/bin/env bash
# Task code benchmarks (issue 18): start-up to the first inline answer, cold and with
# compiled code on disk, for hello and a 13 MB JavaScript component, beside `wasmtime serve`;
# and the time from `poplar deploy` to a hot edge answering with the new version.
# Writes docs/BENCHMARKS.md's code-bench section. Needs npm (for the JS component) and the
# wasmtime CLI at the version Poplar embeds (scripts/bench.sh builds it into target/tools;
# without it the reference column is left empty).
#
#   scripts/code-bench.sh            CODE_BENCH_RUNS=5 by default
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build-tasks.sh
scripts/build-js-task.sh
cargo build --release --quiet --bin poplar
exec python3 scripts/code_bench.py
