#!/usr/bin/env bash
# HTTP caching conformance (issue 13): the cache-tests.fyi suite (npm http-cache-tests, pinned
# below) through a Poplar origin route with `cache: {}` and, in the same run, through nginx
# `proxy_cache` (when nginx is installed) for reference. Writes docs/CACHE-CONFORMANCE.md with
# the counts beside the results the suite ships for Squid, Apache, ATS, Varnish and Fastly,
# every test Poplar fails with why, and any test passed at the baseline that is lost.
# About a minute: not part of CI.
#
#   scripts/cache-conformance.sh                 the whole suite
#   scripts/cache-conformance.sh freshness-none  one test, its exchange printed (poplar only)
set -euo pipefail
cd "$(dirname "$0")/.."
SUITE_VERSION=0.4.5
work=target/cache-tests
mkdir -p "$work"
if [[ ! -f "$work/node_modules/http-cache-tests/package.json" ]] ||
    ! grep -q "\"version\": \"$SUITE_VERSION\"" "$work/node_modules/http-cache-tests/package.json"; then
    (cd "$work" && npm install --silent --no-audit --no-fund --prefix . "http-cache-tests@$SUITE_VERSION")
fi
scripts/setup.sh
cargo build --release --quiet --bin poplar
exec python3 scripts/cache_conformance.py "$work" "$@"
