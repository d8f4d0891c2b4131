#!/usr/bin/env bash
# Starts the demo: an origin and an edge running the example tasks, on loopback.
# Extra arguments go to `poplar demo` (see `poplar demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/build-tasks.sh
cargo build --release --quiet
exec target/release/poplar demo "$@"
