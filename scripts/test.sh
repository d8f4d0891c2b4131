#!/usr/bin/env bash
# The whole test suite, from a fresh checkout: set-up, the example tasks, formatting,
# lints, every test (unit, end-to-end, and the benches run once as tests), then the image's
# build stage and the Kubernetes manifests (scripts/check-deploy.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# A one-shot CI build gains nothing from incremental state but its disk.
if [[ -n "${CI:-}" ]]; then export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"; fi

scripts/setup.sh
scripts/build-tasks.sh
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets
# A short soak (docs/RELIABILITY.md): a mixed load with abusive guests and bad requests, at
# 80% of what this build takes; fails on a healthy route's non-2xx or an unexpected error kind.
SOAK_POPLAR=target/debug/poplar scripts/soak.sh 30
# The image and the Kubernetes manifests (with the binary the tests built).
scripts/check-deploy.sh target/debug/poplar
