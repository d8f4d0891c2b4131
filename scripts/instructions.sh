#!/usr/bin/env bash
# Instructions per request for Poplar, Pingora alone and nginx on each hot path, counted by
# valgrind's callgrind (stable where timings drift): scripts/instructions.py says how.
#
#   scripts/instructions.sh [--requests N] [--top K] [--paths static,origin,cache,inline]
#
# Installs valgrind and nginx from Debian's packages if missing; builds the release binary
# and examples/bare_pingora. About 5 minutes (the hello task compiles under valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh valgrind nginx
scripts/build-tasks.sh
cargo build --release --quiet --bin poplar --example bare_pingora
exec python3 scripts/instructions.py "$@"
