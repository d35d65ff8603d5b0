#!/usr/bin/env bash
# The demo pages in a real browser: installs Debian's chromium when missing, the test
# project's and the pages' npm packages, builds the release binary, starts it on a free
# port, runs browser-tests/*.test.mjs (node --test, playwright-core), and stops it.
# Screenshots land in target/screenshots/, the server's log in target/browser-tests/.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

if [ ! -x /usr/bin/chromium ]; then
  echo "installing chromium (apt-get)…" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
npm ci --prefix browser-tests --no-audit --no-fund --loglevel=error
if [ ! -f js-client-demo/node_modules/@microsoft/signalr/dist/browser/signalr.min.js ] \
  || [ ! -f js-client-demo/node_modules/uplot/dist/uPlot.iife.min.js ]; then
  npm ci --prefix js-client-demo --no-audit --no-fund --loglevel=error
fi
cargo build --release --bin tidings

out="$root/target/browser-tests"
mkdir -p "$out" "$root/target/screenshots"
log="$out/server.log"
pid_file="$out/server.pid"
: >"$log"

# Port 0: the server picks a free port and prints it; a restart in the tests reuses it.
"$root/target/release/tidings" --listen 127.0.0.1:0 >>"$log" 2>&1 &
echo $! >"$pid_file"
disown # the reconnect test kills and restarts it; no job-control noise

stop() {
  if [ -s "$pid_file" ]; then
    local pid
    pid="$(cat "$pid_file")"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
}
trap stop EXIT

url=""
for _ in $(seq 1 200); do
  url="$(grep -o 'listening on http://[0-9.:]*' "$log" | head -1 | sed 's/listening on //')" || true
  [ -n "$url" ] && break
  kill -0 "$(cat "$pid_file")" 2>/dev/null || { cat "$log" >&2; echo "tidings exited" >&2; exit 1; }
  sleep 0.1
done
[ -n "$url" ] || { cat "$log" >&2; echo "tidings did not start within 20 s" >&2; exit 1; }
echo "tidings under test at $url" >&2

export TIDINGS_URL="$url"
export TIDINGS_BIN="$root/target/release/tidings"
export TIDINGS_PID_FILE="$pid_file"
export TIDINGS_LOG="$log"
export TIDINGS_SCREENSHOTS="$root/target/screenshots"
cd browser-tests
node --test --test-concurrency=1 --test-timeout=180000 ./*.test.mjs
