#!/usr/bin/env bash
# The whole benchmark in one command (BENCHMARKS.md): installs the peers (npm, PyPI), builds
# the release binaries, runs every workload against every server (server on CPU 0, load on
# CPU 1, 5 interleaved repetitions) and writes target/bench/results.json and results.md.
#
#   scripts/bench.sh                 # full run (about 9 minutes on the 2-core CI-like machine)
#   BENCH_REPS=3 scripts/bench.sh    # fewer repetitions
#   BENCH_ONLY=tidings,floor scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${BENCH_OUT:-$ROOT/target/bench}
REPS=${BENCH_REPS:-5}
mkdir -p "$OUT"

echo "== peers" >&2
if command -v npm >/dev/null; then
  (cd bench/peers/node && npm ci --no-audit --no-fund --loglevel=error) \
    || echo "npm ci failed: socket.io / ws / bun will be reported unavailable" >&2
else
  echo "npm not found: socket.io / ws / bun will be reported unavailable" >&2
fi
if [ ! -x bench/peers/python/.venv/bin/python ]; then
  python3 -m venv bench/peers/python/.venv || echo "python3 -m venv failed" >&2
fi
bench/peers/python/.venv/bin/pip install -q -r bench/peers/python/requirements.txt \
  || echo "pip install aiosignalr failed: it will be reported unavailable" >&2

echo "== build (release)" >&2
cargo build --release --example benchhub
cargo build --release --manifest-path bench/Cargo.toml --target-dir "$ROOT/target"

# 19 900 connections need the hard fd limit (20 000 on CI-like machines) as the soft one.
ulimit -n "$(ulimit -Hn)" || true
echo "== run (fd limit $(ulimit -n), load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
ARGS=(suite --root "$ROOT" --out "$OUT" --reps "$REPS")
if [ -n "${BENCH_ONLY:-}" ]; then ARGS+=(--only "$BENCH_ONLY"); fi
"$ROOT/target/release/tidings-bench" "${ARGS[@]}"
