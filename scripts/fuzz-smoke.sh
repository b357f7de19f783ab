#!/usr/bin/env bash
# Fuzz smoke run: build every cargo-fuzz target and run each for a short time (30 s by
# default) on its seed corpus, so the targets never rot and the shallow bugs show up in every
# test run. The long campaigns stay manual (fuzz/README.md); their figures are in
# docs/testing.md.
#
#   scripts/fuzz-smoke.sh [SECONDS]
#
# Needs the nightly toolchain and cargo-fuzz (scripts/install-deps.sh installs both when
# missing). Each target starts from a fresh corpus in a temporary directory: the seeds its
# fuzz/seeds/TARGET.py writes, if it has one, plus what fuzz/corpus/TARGET holds on this
# machine (nothing on a fresh clone). Nothing is written to fuzz/corpus. A crash fails the run;
# its input is in fuzz/artifacts/TARGET/. The last lines are one summary line per target with
# libFuzzer's run count.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=${1:-30}
case $secs in '' | *[!0-9]*) echo "fuzz-smoke: SECONDS must be a number, not '$secs'" >&2; exit 2 ;; esac

if ! cargo +nightly fuzz --help >/dev/null 2>&1; then
    echo "fuzz-smoke: needs the nightly toolchain and cargo-fuzz (scripts/install-deps.sh installs them)" >&2
    exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One build of all targets (sanitizer and coverage instrumentation, as `fuzz run` builds them).
cargo +nightly fuzz build

mapfile -t targets < <(cargo +nightly fuzz list)
[ ${#targets[@]} -gt 0 ] || { echo "fuzz-smoke: no targets" >&2; exit 1; }

summary=()
failed=0
for t in "${targets[@]}"; do
    corpus=$work/$t
    mkdir -p "$corpus"
    if [ -f "seeds/$t.py" ]; then
        python3 "seeds/$t.py" "$corpus" >/dev/null
    fi
    if [ -d "corpus/$t" ]; then
        cp -r "corpus/$t/." "$corpus/"
    fi
    seeds=$(find "$corpus" -type f | wc -l)
    log=$work/$t.log
    echo "fuzz-smoke: $t for ${secs}s ($seeds seed inputs)" >&2
    # -rss_limit_mb: the targets map small guest memories; 2 GiB is far above any of them.
    if cargo +nightly fuzz run "$t" "$corpus" -- -max_total_time="$secs" -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 runs in \2 s/p' "$log" | tail -n 1)
        [ -n "$runs" ] || runs="(no run count: see below)"
        summary+=("fuzz-smoke: $t: $runs, $seeds seeds, no crash")
    else
        failed=1
        # What libFuzzer or the sanitizer said (the panic, the leak, the timeout), then the end.
        grep -E -A12 "==ERROR|panicked at|deadly signal|Timeout|out-of-memory|SUMMARY" "$log" | head -n 80 >&2 || true
        tail -n 40 "$log" >&2
        summary+=("fuzz-smoke: $t: FAILED (crash input under fuzz/artifacts/$t/)")
    fi
done
printf '%s\n' "${summary[@]}"
exit "$failed"
