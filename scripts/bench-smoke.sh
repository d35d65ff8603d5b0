#!/usr/bin/env bash
# CI smoke of the benchmark (well under 60 s once built): tidings and the raw tokio-tungstenite
# floor, small connection counts, one repetition. It checks that the server, the load
# generator and the runner work end to end and prints the numbers; it never fails on speed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${BENCH_OUT:-$ROOT/target/bench-smoke}
cargo build --release --example benchhub
cargo build --release --manifest-path bench/Cargo.toml --target-dir "$ROOT/target"
ulimit -n "$(ulimit -Hn)" || true
"$ROOT/target/release/tidings-bench" suite --root "$ROOT" --out "$OUT" --reps 1 --quick \
  --only tidings,floor
# The run must have produced measurements (not a speed threshold).
grep -q '"phase"' "$OUT/results.jsonl"
