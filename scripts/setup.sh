#!/usr/bin/env bash
# Installs what building and testing Poplar needs on a fresh machine that has only Rust
# (by rustup): cmake for pingora's zlib-ng, make for jemalloc, and the wasm32-wasip2 target
# for the tasks.
# Extra Debian packages to install can be named as arguments (wrk for the load scripts), as
# `command:package` where the two differ (h2load:nghttp2-client).
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v make >/dev/null 2>&1 || need+=(make)
for wanted in "$@"; do
  cmd=${wanted%%:*}; pkg=${wanted#*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "setup: adding the wasm32-wasip2 target" >&2
  rustup target add wasm32-wasip2
fi
