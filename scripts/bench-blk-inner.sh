#!/bin/bash
# The inside of bench-blk.sh: runs in the nested test host (which has a real
# /dev/kvm), from the repository root. Usage: scripts/bench-blk-inner.sh [ROUNDS]
#
# The disk is a raw file (sparse when created, then written through once so
# that every block is allocated and reads reach real data) on ext4 on a RAM
# disk (brd). Not on the test host's tmpfs: Linux 6.1's tmpfs refuses O_DIRECT,
# which QEMU's cache=none needs; not on the 9p host root: that would measure
# 9p. brd and ext4 are modules of the test-host kernel, loaded here from the
# unpacked kernel package in .cache/assets/extract/. On this ext4 rvmspawn
# does the guest's reads and writes with O_DIRECT (devices/src/virtio/block.rs),
# so qemu-cache-none is its like-for-like comparison.
#
# Each round boots the guest once per VMM, interleaved (rvmspawn,
# qemu-cache-none, qemu-writeback, rvmspawn, ...) so that drifting load hits
# all alike. Each boot's /init (rvmspawn.blkbench=1, see
# scripts/initramfs/guest-init) runs fio: 4 KiB random reads at iodepth 32,
# then 1 MiB sequential writes at iodepth 4, both O_DIRECT with libaio. All
# VMMs get 1 GiB of RAM, 1 vCPU, the same bzImage and initramfs.
set -euo pipefail

rounds=${1:-3}
runtime=${RVMSPAWN_BENCH_BLK_RUNTIME:-10}
disk_mb=${RVMSPAWN_BENCH_BLK_DISK_MB:-1024}
scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$scripts")
cd "$root"

kernel=.cache/assets/guest/vmlinuz
initrd=.cache/assets/bench-blk/initramfs.cpio
rvmspawn=${RVMSPAWN_BIN:-target/release/rvmspawn}
measure=$scripts/bench-blk-measure.py
# Runs one VMM with a timeout, logs its output, notes its time and peak RSS.
boot_measure=$scripts/bench-boot-measure.py

die() { echo "bench-blk: $*" >&2; exit 1; }
[ -c /dev/kvm ] || die "no /dev/kvm"
[ -f "$initrd" ] || die "$initrd is missing (scripts/assets.sh --bench-blk builds it)"

# --- the disk: a file on ext4 on a RAM disk -------------------------------------
kver=$(uname -r)
modules=$root/.cache/assets/extract/$kver
[ -d "$modules/lib/modules/$kver" ] ||
    die "no unpacked modules for the running kernel $kver in $modules (not in the test host?)"
if [ ! -b /dev/ram0 ]; then
    # rd_size in KiB: the disk, ext4's overhead, some slack.
    modprobe -d "$modules" -S "$kver" brd rd_nr=1 rd_size=$(((disk_mb + disk_mb / 8 + 64) * 1024)) ||
        die "cannot load brd"
fi
modprobe -d "$modules" -S "$kver" ext4 || die "cannot load ext4"
mnt=$(mktemp -d /tmp/bench-blk.XXXXXX)
mkfs.ext4 -q -F -E nodiscard /dev/ram0
mount -o noatime /dev/ram0 "$mnt"
disk=$mnt/disk.raw
truncate -s "${disk_mb}M" "$disk"
echo "bench-blk: writing the ${disk_mb} MiB disk once"
start=$SECONDS
dd if=/dev/zero of="$disk" bs=1M count="$disk_mb" conv=notrunc,fsync status=none
echo "bench-blk: disk ready in $((SECONDS - start)) s"

# --- the VMMs -------------------------------------------------------------------
# root=/dev/vda: rvmspawn -i would otherwise look for a GPT partition to
# name as root=; /init never mounts it (everything runs from the initramfs).
guest_args=(quiet root=/dev/vda rvmspawn.blkbench=1 "rvmspawn.blkbench.runtime=$runtime")
cmd_rvmspawn=("$rvmspawn" -q --tpm=no --pass-ssh-key=no --qemu-mem=1G --qemu-smp=1 "--linux=$kernel" "--initrd=$initrd"
    -i "$disk" "${guest_args[@]}")
qemu_common=(-M pc -enable-kvm -cpu host -m 1024 -smp 1 -nodefaults -nographic -no-reboot
    -serial stdio -kernel "$kernel" -initrd "$initrd" -append "console=ttyS0 ${guest_args[*]}")
# if=virtio on -M pc is virtio-blk-pci; no cache= means QEMU's default, writeback.
cmd_qemu_none=(qemu-system-x86_64 "${qemu_common[@]}"
    -drive "file=$disk,if=virtio,format=raw,cache=none")
cmd_qemu_wb=(qemu-system-x86_64 "${qemu_common[@]}"
    -drive "file=$disk,if=virtio,format=raw")

labels=(rvmspawn qemu-cache-none qemu-writeback)
out=$(mktemp -d)
results=$out/results
: >"$results"

have_rvmspawn=1
if [ ! -x "$rvmspawn" ]; then
    echo "bench-blk: $rvmspawn not found or not executable (set RVMSPAWN_BIN, or cargo build --release)" >&2
    echo "rvmspawn 0 - - - - - - not-built" >>"$results"
    have_rvmspawn=0
fi

boot() { # LABEL ROUND
    local cmd
    case $1 in
        rvmspawn) cmd=("${cmd_rvmspawn[@]}") ;;
        qemu-cache-none) cmd=("${cmd_qemu_none[@]}") ;;
        qemu-writeback) cmd=("${cmd_qemu_wb[@]}") ;;
    esac
    rm -f "$out/boot" "$out/boot.log"
    RVMSPAWN_BENCH_BOOT_TIMEOUT=${RVMSPAWN_BENCH_BLK_TIMEOUT:-240} \
        python3 "$boot_measure" run "$1" "$out/boot" "$out/boot.log" -- "${cmd[@]}" >/dev/null || true
    python3 "$measure" record "$1" "$2" "$out/boot" "$out/boot.log" "$results" || true
    cat "$out/boot.log" >>"$out/$1.log"
}

echo "bench-blk: $rounds rounds, fio jobs of ${runtime} s; columns: VMM round" \
    "randread-IOPS randread-KiB/s seqwrite-IOPS seqwrite-KiB/s total-ms peak-RSS-KiB status"
for ((i = 1; i <= rounds; i++)); do
    start=$SECONDS
    for label in "${labels[@]}"; do
        [ "$label" = rvmspawn ] && [ "$have_rvmspawn" = 0 ] && continue
        boot "$label" "$i"
    done
    echo "bench-blk: round $i took $((SECONDS - start)) s"
done

# Show how rvmspawn failed (it is young): the end of its last output.
if [ "$have_rvmspawn" = 1 ] && awk '$1 == "rvmspawn" && $9 != "ok" { bad = 1 } END { exit !bad }' "$results"; then
    echo "bench-blk: rvmspawn failed; the end of its output:"
    tail -n 20 "$out/rvmspawn.log"
fi

echo
echo "fio in the guest on a virtio disk (raw file on ext4 on a RAM disk), nested test host"
echo "(QEMU TCG; compare ratios, not absolute figures); medians of $rounds rounds:"
python3 "$measure" summary "$results" "${labels[@]}"
rm -rf "$out"
umount "$mnt"
rmdir "$mnt"
