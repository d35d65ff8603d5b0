#!/usr/bin/env bash
# Runs every test of tidings on a fresh machine: installs what is missing, starts every
# server the tests use, and stops them again. `.ci/run` calls exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

step() { printf '\n==== %s\n' "$*"; }

step "toolchain and packages"
command -v cargo >/dev/null || { echo "cargo is required" >&2; exit 1; }
command -v node >/dev/null || { echo "node (20+) is required" >&2; exit 1; }
# The Redis-backed tests (tests/redis_*.rs, protocol-tests/scaleout.test.mjs) start their own
# redis-server on free ports; with CI=true they fail when it is missing.
if ! command -v redis-server >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
if [ ! -d protocol-tests/node_modules ] || [ protocol-tests/package-lock.json -nt protocol-tests/node_modules ]; then
  (cd protocol-tests && npm ci --no-audit --no-fund)
fi

step "format and lints"
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings

step "Rust tests (unit, integration, doc)"
cargo test --all-targets
cargo test --doc

step "conformance: the stock @microsoft/signalr client against the TestHub"
cargo build --release --example testhub
(cd protocol-tests && TESTHUB_BIN="$root/target/release/examples/testhub" npm test)

step "the demo page in headless Chromium (playwright-core)"
scripts/browser-tests.sh

step "all tests passed"
