#!/usr/bin/env bash
# Run every check and test of the project: formatting, lints, unit tests, CLI tests without a
# VM, and the integration tests that boot real Debian guests (directly on hardware KVM, or
# inside the nested test host; see docs/testing.md).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings
cargo build --release
scripts/assets.sh
cargo test --workspace --release
