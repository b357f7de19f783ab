#!/usr/bin/env bash
# Build the test host's outer QEMU: Debian 12's own qemu 7.2 source package with one patch
# (cr8-bql.diff beside this script), qemu-system-x86_64 only, and print its path.
#
# Why: OVMF running as a nested guest (L2 under the test host's KVM) writes CR8 in every
# interrupt stub; stock QEMU 7.2's emulator then calls cpu_interrupt() without its big lock
# and aborts in about 40% of firmware boots. The patch takes the lock there. Measured: 0
# aborts in 15 nested OVMF boots with it, 6 in 15 without (shared research,
# qemu-cr8-verify.md). Direct-boot tests do not need it, but run with it too when it exists.
#
# The binary is cached outside the clone, keyed by the patch's and this script's hash, so CI
# runs and later sessions on the same machine reuse it:
#   ${RVMSPAWN_QEMU_CACHE:-/var/cache/rvmspawn}/qemu-<hash>/qemu-system-x86_64
# A build takes about 11-15 minutes on 2 cores. Concurrent callers wait on a lock.
#
# Usage: scripts/testhost-qemu/build.sh [--print-path]
#   --print-path   only print where the binary is (or would be); build nothing
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
hash=$(cat "$here/cr8-bql.diff" "$here/build.sh" | sha256sum | cut -c1-16)
cache=${RVMSPAWN_QEMU_CACHE:-/var/cache/rvmspawn}
dest=$cache/qemu-$hash
bin=$dest/qemu-system-x86_64

if [ "${1:-}" = --print-path ]; then
    echo "$bin"
    exit 0
fi
[ $# -eq 0 ] || { echo "usage: $0 [--print-path]" >&2; exit 2; }

mkdir -p "$cache"
exec 9>"$cache/.qemu-build.lock"
flock 9
if [ -x "$bin" ]; then
    echo "$bin"
    exit 0
fi

log() { echo "testhost-qemu: $*" >&2; }
export DEBIAN_FRONTEND=noninteractive
deps=(dpkg-dev ninja-build meson libglib2.0-dev libpixman-1-dev zlib1g-dev libfdt-dev
    libslirp-dev libcap-ng-dev libattr1-dev gcc make pkg-config python3 patch xz-utils)
missing=()
for p in "${deps[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing build dependencies: ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
# Source entries through a private sources list, from the system's own Debian entries: no
# change to the machine's apt configuration.
mkdir -p apt/lists/partial apt/parts
found=0
for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    sed 's/^Types: deb$/Types: deb-src/' "$f" >"apt/parts/$(basename "$f")"
    found=1
done
if [ -f /etc/apt/sources.list ] && grep -q '^deb ' /etc/apt/sources.list; then
    sed -n 's/^deb /deb-src /p' /etc/apt/sources.list >apt/parts/sources.list
    found=1
fi
[ "$found" = 1 ] || { log "no Debian apt sources found"; exit 1; }
apt_opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$work/apt/parts"
    -o "Dir::State::Lists=$work/apt/lists")
log "fetching Debian's qemu source package"
apt-get "${apt_opts[@]}" update -qq
apt-get "${apt_opts[@]}" source -qq qemu >/dev/null
src=$(find . -maxdepth 1 -type d -name 'qemu-*' | head -n 1)
[ -n "$src" ] || { log "apt-get source qemu unpacked nothing"; exit 1; }
cd "$src"
patch -p1 <"$here/cr8-bql.diff"
mkdir b && cd b
# Debian's python3 and meson first in PATH: configure refuses a foreign python without the
# bundled meson, which the dfsg tarball lacks.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
log "configuring"
../configure --target-list=x86_64-softmmu --enable-kvm --enable-tcg --enable-slirp \
    --enable-fdt=system --enable-virtfs --disable-docs --disable-tools --disable-guest-agent \
    --disable-werror --prefix="$dest" \
    --firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu >/dev/null
log "building qemu-system-x86_64 (about 11-15 minutes)"
nice -n 19 ninja -j"$(nproc)" qemu-system-x86_64 >build.log 2>&1 || {
    tail -n 40 build.log >&2
    exit 1
}
mkdir -p "$dest.tmp"
strip -o "$dest.tmp/qemu-system-x86_64" qemu-system-x86_64
rm -rf "$dest"
mv "$dest.tmp" "$dest"
log "built $bin"
echo "$bin"
