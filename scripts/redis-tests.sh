#!/usr/bin/env bash
# Every test that needs a real Redis: the Rust integration tests (tests/redis_*.rs) and the Node
# scale-out suite (protocol-tests/scaleout.test.mjs: three testhub processes on one Redis, Redis
# and node faults). Installs redis-server when it is missing (as root, with apt-get). Each test
# starts its own redis-server on a free loopback port, so a system service is never used.
#
#   scripts/redis-tests.sh              # release testhub (as the conformance suite uses)
#   PROFILE=debug scripts/redis-tests.sh
#
# With CI=true a missing redis-server fails the run instead of skipping the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "redis-tests: installing redis-server"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-tests: redis-server is not available" >&2
  if [ "${CI:-}" = true ]; then exit 1; fi
fi
redis-server --version || true

cargo test --test redis_backplane --test redis_eventlog --test redis_ingress

PROFILE="${PROFILE:-release}"
if [ "$PROFILE" = release ]; then
  cargo build --release --example testhub
  bin="$PWD/target/release/examples/testhub"
else
  cargo build --example testhub
  bin="$PWD/target/debug/examples/testhub"
fi
cd protocol-tests
[ -d node_modules ] || npm ci --no-audit --no-fund
TESTHUB_BIN="$bin" node --test --test-concurrency=1 --test-timeout=180000 scaleout.test.mjs
