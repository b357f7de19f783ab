#!/usr/bin/env bash
# Build the real systemd guest of the tests (issue 17), cached in .cache/assets/trixie/:
#   root/       a Debian trixie tree (systemd 257), mmdebstrap --variant=minbase plus systemd,
#               udev, dbus and openssh-server; no kernel: the Debian cloud kernel and the
#               project's initramfs boot it (-D root/ over virtio-fs, or -i disk.raw)
#   disk.raw    a 2 GiB sparse GPT image of the same tree: one "Linux root (x86-64)"
#               partition, ext4 made with mkfs.ext4 -d (no loop mounts)
#   partuuid    that partition's unique GUID (vmspawn's root=PARTUUID= for -i)
# The tree also holds rvmspawn-check.service (started with systemd.wants=rvmspawn-check.service):
# it waits for `systemctl is-system-running --wait` and prints on the console, for
# tests/tests/systemd.rs:
#   RVMSPAWN-SYSTEMD-STATE=running|degraded|...
#   RVMSPAWN-SYSTEMD-CMDLINE=TEXT           /proc/cmdline
#   RVMSPAWN-SYSTEMD-FAILED=UNIT            one line per failed unit
#   RVMSPAWN-SYSTEMD-CREDENTIAL=VALUE       the credential rvmtest.value, if passed (and
#                                           "RVMSPAWN-JOURNAL-MARK=VALUE" to the journal, as
#                                           rvmspawn-check)
#   RVMSPAWN-SYSTEMD-MOUNT=WHERE STATE      each virtiofs mount point and the state of its
#                                           systemd mount unit (active: systemd knows it)
#   RVMSPAWN-SYSTEMD-CHECKED
# and /usr/local/bin/rvmspawn-exit N, which exits with status N (for systemd.run=).
# The first boot's catalog rebuild and the other ConditionNeedsUpdate= jobs are done here, as an
# image build does them (systemd-update-done): over virtio-fs in the emulated test host the
# catalog rebuild alone ran into its 7-minute timeout and failed.
# Rebuilt when this script changes (the stamp holds its hash); needs mmdebstrap, mkfs.ext4
# (e2fsprogs) and sfdisk (fdisk), and deb.debian.org.
set -euo pipefail
scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$scripts")
dir=$root/.cache/assets/trixie
hash=$(sha256sum "$scripts/systemd-guest.sh" | cut -c1-16)
log() { echo "systemd-guest: $*" >&2; }

if [ "$(cat "$dir/stamp" 2>/dev/null)" = "$hash" ] && [ -f "$dir/disk.raw" ]; then
    exit 0
fi
for tool in mmdebstrap mkfs.ext4 sfdisk; do
    command -v "$tool" >/dev/null || { log "error: $tool missing (scripts/install-deps.sh)"; exit 1; }
done
[ "$(id -u)" = 0 ] || { log "error: building the tree needs root (mmdebstrap --mode=root)"; exit 1; }

log "building the Debian trixie systemd guest (mmdebstrap; a few minutes)"
rm -rf "$dir"
mkdir -p "$dir"
work=$dir/work
mkdir -p "$work"

mmdebstrap --quiet --variant=minbase --mode=root \
    --include=systemd,systemd-sysv,udev,dbus,openssh-server,libpam-systemd \
    --customize-hook='echo rvmspawn-trixie >"$1/etc/hostname"' \
    --customize-hook='rm -f "$1/etc/machine-id" "$1/var/lib/dbus/machine-id"; : >"$1/etc/machine-id"' \
    --customize-hook='chroot "$1" journalctl --update-catalog' \
    --customize-hook='chroot "$1" /usr/lib/systemd/systemd-update-done' \
    trixie "$work/root" http://deb.debian.org/debian

r=$work/root
mkdir -p "$r/usr/local/bin" "$r/usr/local/sbin" "$r/etc/systemd/system"
cat >"$r/usr/local/sbin/rvmspawn-check" <<'EOF'
#!/bin/sh
# What systemd reports, on the console (see scripts/systemd-guest.sh). Every report line starts
# on a line of its own: systemd 257 writes terminal queries (DSR) to the console when it hands
# it to a service, and the tools' own output goes to pipes, so no tool probes the terminal.
say() { printf '\n%s\n' "$1"; }
state=$(systemctl is-system-running --wait 2>/dev/null)
say "RVMSPAWN-SYSTEMD-STATE=$state"
say "RVMSPAWN-SYSTEMD-CMDLINE=$(cat /proc/cmdline)"
failed=$(systemctl --failed --plain --no-legend --no-pager 2>/dev/null | cut -d' ' -f1)
for unit in $failed; do
    say "RVMSPAWN-SYSTEMD-FAILED=$unit"
done
if [ -f /run/credentials/@system/rvmtest.value ]; then
    value=$(cat /run/credentials/@system/rvmtest.value)
    say "RVMSPAWN-SYSTEMD-CREDENTIAL=$value"
    # For --forward-journal: a line in the journal the host should find.
    echo "RVMSPAWN-JOURNAL-MARK=$value" | systemd-cat -t rvmspawn-check >/dev/null 2>&1
fi
mounts=$(findmnt -rn -t virtiofs -o TARGET 2>/dev/null)
for where in $mounts; do
    [ "$where" = / ] && continue
    unit=$(systemd-escape -p --suffix=mount "$where" 2>/dev/null)
    say "RVMSPAWN-SYSTEMD-MOUNT=$where $(systemctl is-active "$unit" 2>/dev/null)"
done
say "RVMSPAWN-SYSTEMD-CHECKED"
EOF
chmod 755 "$r/usr/local/sbin/rvmspawn-check"
cat >"$r/etc/systemd/system/rvmspawn-check.service" <<'EOF'
[Unit]
Description=rvmspawn test report

[Service]
Type=simple
ExecStart=/usr/local/sbin/rvmspawn-check
StandardOutput=tty
StandardError=tty
TTYPath=/dev/console
EOF
printf '#!/bin/sh\nexit "${1:-0}"\n' >"$r/usr/local/bin/rvmspawn-exit"
chmod 755 "$r/usr/local/bin/rvmspawn-exit"
# Nothing to fetch at boot: no apt timers in a test VM.
rm -f "$r"/etc/systemd/system/timers.target.wants/apt-daily*.timer

# The disk image: a GPT with one root partition from 1 MiB to the end, the ext4 file system
# made from the tree into a file of the partition's size and copied in (sparse).
size_mib=2048
part_start=2048 # sectors
part_sectors=$(((size_mib - 2) * 2048))
truncate -s "${size_mib}M" "$work/disk.raw"
printf 'label: gpt\nstart=%d, size=%d, type=4f68bce3-e8cd-4db1-96e7-fbcaf984b709, name="root-x86-64"\n' \
    "$part_start" "$part_sectors" | sfdisk --quiet "$work/disk.raw"
mkfs.ext4 -q -L root -d "$r" "$work/root.ext4" "$((part_sectors / 2))K"
dd if="$work/root.ext4" of="$work/disk.raw" bs=1M seek=1 conv=notrunc,sparse status=none
rm -f "$work/root.ext4"
sfdisk --part-uuid "$work/disk.raw" 1 | tr 'A-F' 'a-f' >"$dir/partuuid"
mv "$work/disk.raw" "$dir/disk.raw"
mv "$r" "$dir/root"
rmdir "$work"
echo "$hash" >"$dir/stamp"
log "ready: $dir (root/, disk.raw, partuuid $(cat "$dir/partuuid"))"
