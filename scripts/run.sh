#!/usr/bin/env bash
# Runs the tidings server with its demo pages on http://127.0.0.1:5000 (override with
# --listen ADDR or TIDINGS_LISTEN). Installs the pages' pinned browser bundles first when
# they are missing. Extra arguments go to the server: scripts/run.sh --listen 0.0.0.0:8080
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if [ ! -f js-client-demo/node_modules/@microsoft/signalr/dist/browser/signalr.min.js ] \
  || [ ! -f js-client-demo/node_modules/uplot/dist/uPlot.iife.min.js ]; then
  echo "installing the demo's browser bundles (npm ci --prefix js-client-demo)…" >&2
  npm ci --prefix js-client-demo --no-audit --no-fund
fi
exec cargo run --release --bin tidings -- "$@"
