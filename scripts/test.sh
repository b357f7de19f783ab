#!/usr/bin/env bash
# Run every check and test of the project: formatting, lints, unit tests, CLI tests without a
# VM, and the integration tests that boot real Debian guests (directly on hardware KVM, or
# inside the nested test host; see docs/testing.md).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings
# The guest test program is a workspace of its own (a static binary for the guest).
cargo fmt --manifest-path guest-tools/Cargo.toml --all -- --check
cargo clippy --manifest-path guest-tools/Cargo.toml --all-targets --release -- -D warnings
cargo build --release
# The same binary with its test hooks (cli/tests/tiny_guest.rs runs it to prove a forbidden
# system call ends the run by SIGSYS); in target/test-hooks/, never the release binary.
cargo build --profile test-hooks -p rvmspawn --features test-hooks
scripts/assets.sh
# The outer QEMU of the nested test host, patched so that UEFI firmware cannot abort it
# (scripts/testhost-qemu/build.sh; cached outside the clone, built once).
scripts/testhost-qemu/build.sh >/dev/null
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# How long every batch and step took (tests/src/lib.rs appends to it), summed up at the end.
times=target/test-step-times.txt
rm -f "$times"
set +e
cargo test --workspace --release --no-fail-fast 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
cargo test --manifest-path guest-tools/Cargo.toml --release 2>&1 | tee -a "$log"
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
# Every fuzz target built and run for 10 s on its seeds (nightly; see fuzz/README.md).
scripts/fuzz-smoke.sh 10 || rc=1
set -e
if [ -s "$times" ]; then
    echo "Test-host time by batch (seconds; every attempt from start to exit):"
    awk '$2 == "(whole" { t[$1] += $4; n[$1]++ } END { for (b in t) printf "  %-16s %7.1f  (%d attempt%s)\n", b, t[b], n[b], (n[b] > 1 ? "s" : "") }' "$times" | sort -k2 -rn
    echo "The slowest steps:"
    awk '$2 != "(whole" { printf "  %-16s %-40s %7.1f\n", $1, $2, $3 }' "$times" | sort -k3 -rn | head -n 15
fi
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$rc"
