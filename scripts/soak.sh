#!/usr/bin/env bash
# Opt-in soak: 2 000 WebSocket + 200 SSE + 200 long-polling clients for 30 minutes, with a
# 50/s broadcast, group traffic and 20 clients replaced every second; then everyone leaves.
# Reports live heap, RSS drift after warm-up, threads, open descriptors and the server's live
# tokio tasks before/during/after, the broadcast p99 latency, and the canary's errors; fails
# on a leak or a canary error. Bounded: the run stops by itself.
#
#   scripts/soak.sh                  # 30 min, the sizes above
#   SOAK_SECS=120 scripts/soak.sh    # shorter
#   SOAK_WS=500 SOAK_SSE=50 SOAK_LP=50 SOAK_RATE=20 SOAK_CHURN=5 scripts/soak.sh
#
# Server and clients share one process (separate runtimes, 2 worker threads each), on
# 127.0.0.1 only; it needs about 5 000 descriptors (`ulimit -n`).
set -euo pipefail
cd "$(dirname "$0")/.."
export SOAK_SECS="${SOAK_SECS:-1800}"
export SOAK_WS="${SOAK_WS:-2000}" SOAK_SSE="${SOAK_SSE:-200}" SOAK_LP="${SOAK_LP:-200}"
export SOAK_RATE="${SOAK_RATE:-50}" SOAK_CHURN="${SOAK_CHURN:-20}"
need=$(( (SOAK_WS + SOAK_SSE + SOAK_LP) * 3 + 200 ))
if (( $(ulimit -n) < need )); then
    ulimit -n "$need" 2>/dev/null || { echo "ulimit -n is $(ulimit -n); the soak needs $need" >&2; exit 2; }
fi
exec timeout $(( SOAK_SECS + 600 )) \
    cargo test --release --test soak -- --ignored --nocapture --test-threads 1
