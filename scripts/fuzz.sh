#!/usr/bin/env bash
# Runs each cargo-fuzz target (fuzz/) for a bounded time, from its committed seed corpus.
#
#   scripts/fuzz.sh                 # every target, 300 s each
#   scripts/fuzz.sh --smoke         # every target, 10 s each (CI)
#   scripts/fuzz.sh --time 60 json  # chosen targets, 60 s each
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). libFuzzer needs nightly-only
# compiler flags; on a stable toolchain they are unlocked with RUSTC_BOOTSTRAP=1 (set here
# unless FUZZ_TOOLCHAIN names another toolchain, e.g. FUZZ_TOOLCHAIN=nightly).
#
# Limits per input: 5 s (timeout), 1 GiB RSS, 64 MiB for any single allocation (a lying length
# header turned into a huge allocation is reported as an OOM). New inputs the fuzzer finds go
# to fuzz/corpus-work/<target>/ (git-ignored); crashes to fuzz/artifacts/<target>/.
# Exit status: 0 when every target ran clean, 1 when any crashed, timed out or ran out of
# memory, 2 on a setup problem.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"

seconds=300
targets=()
while (($#)); do
    case "$1" in
        --smoke) seconds=10 ;;
        --time) seconds="$2"; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) targets+=("$1") ;;
    esac
    shift
done

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
    exit 2
fi
toolchain=()
if [[ -n "${FUZZ_TOOLCHAIN:-}" ]]; then
    toolchain=("+$FUZZ_TOOLCHAIN")
else
    export RUSTC_BOOTSTRAP=1
fi
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(cargo "${toolchain[@]}" fuzz list)
fi

cargo "${toolchain[@]}" fuzz build -O

failed=0
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus-work/$t" "artifacts/$t"
    log="$(mktemp)"
    echo "== $t: ${seconds}s"
    set +e
    cargo "${toolchain[@]}" fuzz run -O "$t" "corpus-work/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -timeout=5 -rss_limit_mb=1024 -malloc_limit_mb=64 \
        -max_len=4096 -print_final_stats=1 >"$log" 2>&1
    status=$?
    set -e
    execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)"
    rate="$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)"
    cov="$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')"
    if ((status != 0)) || grep -qE 'ERROR: libFuzzer|SUMMARY: libFuzzer|panicked at|deadly signal' "$log"; then
        failed=1
        echo "!! $t FAILED (exit $status); log: $log"
        grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -20 || true
        summary+=("$t: FAILED after ${execs:-?} execs")
    else
        summary+=("$t: ${execs:-?} execs in ${seconds}s (${rate:-?}/s), cov ${cov:-?}, 0 crashes/timeouts/OOMs")
        rm -f "$log"
    fi
done

echo
echo "fuzz summary (${seconds}s per target):"
printf '  %s\n' "${summary[@]}"
exit "$failed"
