#!/usr/bin/env bash
# Install the Debian packages the scripts and tests need (scripts/packages.txt), if missing,
# virtiofsd, which bookworm does not package (rvmspawn runs it for --directory= and
# --bind=), from crates.io into /usr/local/bin, and the nightly toolchain and cargo-fuzz for the
# fuzz smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."

mapfile -t pkgs < <(grep -v '^\s*#' scripts/packages.txt | grep -v '^\s*$')
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "Installing: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The version is pinned so every machine tests against the same virtiofsd.
VIRTIOFSD_VERSION=1.14.0
if ! /usr/local/bin/virtiofsd --version 2>/dev/null | grep -q "$VIRTIOFSD_VERSION"; then
    echo "Installing virtiofsd $VIRTIOFSD_VERSION (cargo install, a few minutes)" >&2
    cargo install --quiet --locked --root /usr/local --version "$VIRTIOFSD_VERSION" virtiofsd
fi

# The fuzz smoke run (scripts/fuzz-smoke.sh) builds the cargo-fuzz targets with nightly.
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "Installing the nightly toolchain (for the fuzz targets)" >&2
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "Installing cargo-fuzz (cargo install, a few minutes)" >&2
    cargo install --quiet --locked cargo-fuzz
fi
