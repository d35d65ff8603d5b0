#!/usr/bin/env bash
# Cross-node fan-out throughput and latency over Redis against the single-node figure.
# Builds the release testhub, then runs scripts/redis-bench.mjs (arguments are passed on:
# --receivers N --messages N --size BYTES --paced N --protocol json|messagepack).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { echo "redis-server missing (apt-get install redis-server)" >&2; exit 1; }
cargo build --release --example testhub
[ -d protocol-tests/node_modules ] || (cd protocol-tests && npm ci --no-audit --no-fund)
exec node scripts/redis-bench.mjs --bin target/release/examples/testhub "$@"
