#!/bin/bash
# The inside of bench-boot.sh: runs in the nested test host (which has a real
# /dev/kvm), from the repository root. Boots the guest test kernel+initramfs
# RUNS times with each VMM, interleaved (rvmspawn with the bzImage, the ELF
# vmlinux and a UKI, QEMU microvm with the vmlinux, QEMU pc with the bzImage,
# then again) so that drifting load on this shared machine hits all of them
# alike, and prints a table of medians. All VMMs get 256 MiB (the configuration
# of issue 15's figures; RVMSPAWN_BENCH_MEM_MIB sets it, 512 before 2026-12-06)
# and 1 vCPU, the same kernel, initramfs and "console=ttyS0 quiet" (rvmspawn:
# "quiet" on top of its own console setup).
#
# Two things keep the order of the boots out of the figures (measured with a
# scratch script on 2026-12-06, both VMMs alike): under the nested emulation a
# VM boots up to 40% faster (2.9-3.7 s instead of 4.3-5.3 s to /init) right
# after a few hundred MiB of the test host's memory was written and freed, as
# QEMU pc's larger footprint does for whatever boots after it; the cause lies
# in the emulator and was not pinned down. So before EVERY measured boot, of
# every VMM, the same 300 MiB are written to the test host's tmpfs and freed
# (RVMSPAWN_BENCH_CONDITION_MIB, 0 for none), and each round starts with the
# next VMM in the list.
# Usage: scripts/bench-boot-inner.sh [--directory|--firmware|--secure-boot|--console|--systemd|
#                                     --systemd-directory] [RUNS]
#
# --systemd: the real OS instead: the Debian trixie image of tests/tests/systemd.rs
# (.cache/assets/trixie/disk.raw, systemd 257, built by scripts/systemd-guest.sh) on virtio-blk,
# booted by the same kernel and initramfs (root=PARTUUID=), 1 GiB and 1 vCPU, with vsock, to
# systemd's "running" state: the guest's rvmspawn-check.service prints RVMSPAWN-SYSTEMD-STATE=
# once `systemctl is-system-running --wait` returns (about when systemd sends READY=1), and the
# VMM then gets SIGTERM (rvmspawn with RVMSPAWN_STOP_TIMEOUT=0: at once). rvmspawn -i on a fresh
# writable copy, rvmspawn -x -i (the copy-on-write overlay over the untouched image), against QEMU
# pc with the same disk on virtio-blk, a vhost-vsock device and vmspawn's console (virtconsole,
# console=hvc0), on a fresh copy and with -snapshot. The image lives in the test host's tmpfs.
# No warm-up boots (a boot takes minutes here): every VMM's binary is read once before the first
# boot instead.
#
# --systemd-directory: the same OS tree (.cache/assets/trixie/root) booted over virtio-fs instead,
# on a fresh copy in the test host's tmpfs for every boot (made before the clock starts):
# rvmspawn -D against QEMU pc with vhost-user-fs-pci, a shared memfd backend and a virtiofsd
# with vmspawn's arguments, started by a wrapper just before QEMU (as for --directory).
#
# --console: an output-heavy boot instead: the same kernel and initramfs without "quiet" (the
# whole kernel log) and a /init that writes RVMSPAWN_BENCH_CONSOLE_KIB KiB (default 1024) to
# the console before powering off (guest-init's rvmspawn.bulk=): rvmspawn with its default
# virtio console (hvc0) and with --console-transport=serial, QEMU pc with -serial stdio and
# with virtio-serial-pci + virtconsole (console=hvc0), all booting the bzImage. "to /init" is
# the guest's RVMSPAWN-GUEST-INIT line, "total" the exit after the bulk output.
#
# --directory: boot an OS tree over virtio-fs instead (a busybox tree whose
# /sbin/init prints RVMSPAWN-GUEST-INIT and powers off; the initramfs mounts it
# and switches to it): rvmspawn -D, against QEMU pc with vhost-user-fs-pci and
# a memfd memory backend, as systemd-vmspawn runs it. Both get a fresh
# virtiofsd per boot with vmspawn's arguments (rvmspawn starts its own; QEMU's
# is started by a wrapper just before it), so its start-up counts for both.
#
# --firmware: boot the UEFI path instead: .cache/assets/firmware/esp.raw (an
# ESP with systemd-boot, whose entry boots the same kernel and initramfs) on
# virtio-blk through Debian's OVMF, as the plain descriptor
# 60-edk2-x86_64.json names it (no Secure Boot, no SMM): rvmspawn -i with that
# descriptor and --efi-nvram-state=off (variables from the template every
# boot), against QEMU -M q35 with the same CODE on pflash and a fresh copy of
# the VARS template. Every boot gets its own fresh copy of the image (and
# QEMU's of VARS), made before the clock starts. No vsock for either.
#
# --secure-boot: the same image through the Secure Boot build (SMM) as
# 50-edk2-x86_64-secure.json names it: rvmspawn -i with that descriptor
# (rvmspawn-sb), rvmspawn with the plain one as above, and QEMU
# -M q35,smm=on with cfi.pflash01 secure=on and the same secboot CODE
# (qemu-q35-smm), as vmspawn runs it.
set -euo pipefail

directory=0 firmware=0 console=0 secure=0 systemd=0
case ${1:-} in
    --systemd) systemd=1; shift ;;
    --systemd-directory) systemd=2; shift ;;
    --directory) directory=1; shift ;;
    --firmware) firmware=1; shift ;;
    --secure-boot) firmware=1 secure=1; shift ;;
    --console) console=1; shift ;;
esac
runs=${1:-5}
scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$scripts")
cd "$root"

kernel=.cache/assets/guest/vmlinuz
initrd=.cache/assets/guest/initramfs.cpio.gz
rvmspawn=${RVMSPAWN_BIN:-target/release/rvmspawn}
measure=$scripts/bench-boot-measure.py

[ -c /dev/kvm ] || { echo "bench-boot: no /dev/kvm" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "bench-boot: GNU time (/usr/bin/time) is missing" >&2; exit 1; }

vmlinux=.cache/assets/guest/vmlinux
uki=.cache/assets/firmware/uki.efi
out=$(mktemp -d)
# Every VMM reads its kernel, initramfs and UKI from the test host's own tmpfs, not through
# 9p from this machine: 9p reads under emulation cost hundreds of milliseconds for the 53 MiB
# vmlinux, which would be charged to whichever file a VMM happens to read.
mkdir -p "$out/assets"
for f in kernel initrd vmlinux uki; do
    [ -f "${!f}" ] || continue
    cp "${!f}" "$out/assets/"
    printf -v "$f" '%s' "$out/assets/$(basename "${!f}")"
done
# At debug level rvmspawn prints its phases for the breakdown (a few lines).
mem=${RVMSPAWN_BENCH_MEM_MIB:-256}
condition_mib=${RVMSPAWN_BENCH_CONDITION_MIB:-300}
case $mem$condition_mib in *[!0-9]*) echo "bench-boot: RVMSPAWN_BENCH_MEM_MIB and _CONDITION_MIB are numbers" >&2; exit 2 ;; esac
rvmspawn_common=(env SYSTEMD_LOG_LEVEL=debug "$rvmspawn" -q --tpm=no --pass-ssh-key=no "--qemu-mem=${mem}M" --qemu-smp=1
    --qemu-vsock=no)
# The same kernel three ways: Debian's bzImage, the ELF inside it, and a UKI
# around that bzImage and the same initramfs (its embedded command line plus
# "quiet").
cmd_rvmspawn=("${rvmspawn_common[@]}" "--linux=$kernel" "--initrd=$initrd" quiet)
cmd_rvmspawn_vmlinux=("${rvmspawn_common[@]}" "--linux=$vmlinux" "--initrd=$initrd" quiet)
cmd_rvmspawn_uki=("${rvmspawn_common[@]}" "--linux=$uki" quiet)
# microvm needs its legacy PIT/PIC/RTC switched on explicitly: with the
# defaults Debian's kernel spends ~6 s more in timer calibration. ACPI (on by
# default) is what lets the guest power the machine off. microvm boots the
# ELF vmlinux (PVH), its fastest path; pc boots the bzImage.
qemu_common=(-enable-kvm -cpu host -m "$mem" -smp 1 -nodefaults -nographic -no-reboot
    -serial stdio -initrd "$initrd" -append "console=ttyS0 quiet")
# shellcheck disable=SC2054 # the commas belong to QEMU's -M value
cmd_microvm=(qemu-system-x86_64 -M microvm,x-option-roms=off,isa-serial=on,rtc=on,pit=on,pic=on
    "${qemu_common[@]}" -kernel "$vmlinux")
cmd_pc=(qemu-system-x86_64 -M pc "${qemu_common[@]}" -kernel "$kernel")

# qemu_dir_wrapper TREE MIB QEMU-ARGS APPEND: writes $out/qemu-dir.sh, which starts a virtiofsd
# on TREE with vmspawn's arguments (on a socket path instead of an inherited fd), then QEMU pc
# on it with MIB of shared memfd memory, QEMU-ARGS (the console and more; split on spaces) and
# the kernel command line APPEND. SIGTERM (the --systemd-directory stop) ends QEMU and
# virtiofsd, not only the wrapper.
qemu_dir_wrapper() {
    local virtiofsd
    virtiofsd=$(command -v virtiofsd) || { echo "bench-boot: virtiofsd is missing" >&2; exit 1; }
    cat >"$out/qemu-dir.sh" <<SHEOF
#!/bin/sh
sock=$out/virtiofsd.sock
rm -f "\$sock"
"$virtiofsd" --socket-path="\$sock" --shared-dir="$1" --xattr --no-announce-submounts \\
    --log-level=error --modcaps=-mknod &
v=\$!
while [ ! -S "\$sock" ]; do sleep 0.01; done
qemu-system-x86_64 -M pc,memory-backend=mem -object memory-backend-memfd,id=mem,size=$2M,share=on \\
    -enable-kvm -cpu host -m $2 -smp 1 -nodefaults -nographic -no-reboot $3 \\
    -chardev socket,id=fs0,path="\$sock" -device vhost-user-fs-pci,queue-size=1024,chardev=fs0,tag=root \\
    -kernel "$kernel" -initrd "$initrd" -append "$4" &
q=\$!
trap 'kill \$q \$v 2>/dev/null' TERM
wait \$q
rc=\$?
if [ \$rc -gt 128 ]; then wait \$q; rc=\$?; fi
kill \$v 2>/dev/null
wait \$v 2>/dev/null
exit \$rc
SHEOF
    chmod 755 "$out/qemu-dir.sh"
}

labels=(rvmspawn rvmspawn-vmlinux rvmspawn-uki qemu-microvm qemu-pc)
[ -f "$vmlinux" ] && [ -f "$uki" ] ||
    { echo "bench-boot: $vmlinux or $uki is missing (scripts/assets.sh builds them)" >&2; exit 1; }
if [ "$directory" = 1 ]; then
    tree=$out/tree
    mkdir -p "$tree/bin" "$tree/sbin" "$tree/proc" "$tree/dev" "$tree/sys"
    cp /bin/busybox "$tree/bin/busybox"
    for a in sh poweroff; do ln -s busybox "$tree/bin/$a"; done
    printf '#!/bin/sh\necho RVMSPAWN-GUEST-INIT\nexec poweroff -f\n' >"$tree/sbin/init"
    chmod 755 "$tree/sbin/init"
    cmd_rvmspawn=("$rvmspawn" -q --tpm=no --pass-ssh-key=no --qemu-mem=512M --qemu-smp=1 "--linux=$kernel" "--initrd=$initrd"
        -D "$tree" quiet)
    qemu_dir_wrapper "$tree" 512 "-serial stdio" "console=ttyS0 root=root rootfstype=virtiofs rw quiet"
    labels=(rvmspawn qemu-pc)
    cmd_pc=("$out/qemu-dir.sh")
fi
if [ "$console" = 1 ]; then
    kib=${RVMSPAWN_BENCH_CONSOLE_KIB:-1024}
    case $kib in '' | *[!0-9]*) echo "bench-boot: RVMSPAWN_BENCH_CONSOLE_KIB is a number" >&2; exit 2 ;; esac
    # A mebibyte through a UART is a million VM exits: minutes under TCG.
    export RVMSPAWN_BENCH_BOOT_TIMEOUT=${RVMSPAWN_BENCH_BOOT_TIMEOUT:-900}
    cmd_rvmspawn=("${rvmspawn_common[@]}" "--linux=$kernel" "--initrd=$initrd" "rvmspawn.bulk=$kib")
    cmd_rvmspawn_serial=("${rvmspawn_common[@]}" --console-transport=serial "--linux=$kernel"
        "--initrd=$initrd" "rvmspawn.bulk=$kib")
    console_common=(-enable-kvm -cpu host -m "$mem" -smp 1 -nodefaults -nographic -no-reboot
        -kernel "$kernel" -initrd "$initrd")
    cmd_pc=(qemu-system-x86_64 -M pc "${console_common[@]}" -serial stdio
        -append "console=ttyS0 rvmspawn.bulk=$kib")
    cmd_pc_virtio=(qemu-system-x86_64 -M pc "${console_common[@]}" -device virtio-serial-pci
        -chardev stdio,id=con -device virtconsole,chardev=con -append "console=hvc0 rvmspawn.bulk=$kib")
    labels=(rvmspawn rvmspawn-serial qemu-pc qemu-pc-virtio)
fi
if [ "$firmware" = 1 ]; then
    esp=.cache/assets/firmware/esp.raw
    [ -f "$esp" ] || { echo "bench-boot: $esp is missing (scripts/assets.sh builds it)" >&2; exit 1; }
    descriptor=/usr/share/qemu/firmware/60-edk2-x86_64.json
    # (No process substitution: the test host's /dev has no /dev/fd.)
    paths=$(python3 -c '
import json, sys
m = json.load(open(sys.argv[1]))["mapping"]
print(m["executable"]["filename"], m["nvram-template"]["filename"])' "$descriptor") ||
        { echo "bench-boot: cannot read $descriptor (Debian's ovmf package)" >&2; exit 1; }
    read -r ovmf_code ovmf_vars <<<"$paths"
    echo "bench-boot: OVMF $ovmf_code + $ovmf_vars; $(qemu-system-x86_64 --version | head -n 1)"
    # A firmware boot takes 25-40 s under TCG; give each more than the default.
    export RVMSPAWN_BENCH_BOOT_TIMEOUT=${RVMSPAWN_BENCH_BOOT_TIMEOUT:-300}
    cmd_rvmspawn=("$rvmspawn" -q --tpm=no --pass-ssh-key=no --qemu-mem=512M --qemu-smp=1 "--firmware=$descriptor"
        --efi-nvram-state=off --qemu-vsock=no -i "$out/rvmspawn.raw")
    # shellcheck disable=SC2054 # the commas belong to QEMU's -drive values
    cmd_q35=(qemu-system-x86_64 -enable-kvm -cpu host -M q35 -m 512 -smp 1 -nodefaults -nographic
        -no-reboot -serial stdio
        -drive "if=pflash,format=raw,unit=0,readonly=on,file=$ovmf_code"
        -drive "if=pflash,format=raw,unit=1,file=$out/qemu-vars.fd"
        -drive "file=$out/qemu.raw,format=raw,if=virtio")
    labels=(rvmspawn qemu-q35)
    if [ "$secure" = 1 ]; then
        sb_descriptor=/usr/share/qemu/firmware/50-edk2-x86_64-secure.json
        sb_code=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["mapping"]["executable"]["filename"])' "$sb_descriptor") ||
            { echo "bench-boot: cannot read $sb_descriptor" >&2; exit 1; }
        echo "bench-boot: Secure Boot OVMF $sb_code"
        cmd_rvmspawn_sb=("$rvmspawn" -q --tpm=no --pass-ssh-key=no --qemu-mem=512M --qemu-smp=1
            "--firmware=$sb_descriptor" --efi-nvram-state=off --qemu-vsock=no -i "$out/rvmspawn.raw")
        # shellcheck disable=SC2054 # the commas belong to QEMU's values
        cmd_q35_smm=(qemu-system-x86_64 -enable-kvm -cpu host -M q35,smm=on -m 512 -smp 1 -nodefaults
            -nographic -no-reboot -serial stdio -global driver=cfi.pflash01,property=secure,value=on
            -drive "if=pflash,format=raw,unit=0,readonly=on,file=$sb_code"
            -drive "if=pflash,format=raw,unit=1,file=$out/qemu-vars.fd"
            -drive "file=$out/qemu.raw,format=raw,if=virtio")
        labels=(rvmspawn-sb rvmspawn qemu-q35-smm)
    fi
fi
if [ "$systemd" != 0 ]; then
    [ -f .cache/assets/trixie/disk.raw ] ||
        { echo "bench-boot: .cache/assets/trixie is missing (scripts/assets.sh builds it)" >&2; exit 1; }
    # (An unbuilt rvmspawn stays where it is, to be reported as a FAILED row below.)
    if [ -x "$rvmspawn" ]; then cp "$rvmspawn" "$out/assets/rvmspawn" && rvmspawn=$out/assets/rvmspawn; fi
    cat "$(command -v qemu-system-x86_64)" >/dev/null
    export RVMSPAWN_BENCH_BOOT_TIMEOUT=${RVMSPAWN_BENCH_BOOT_TIMEOUT:-600}
    export RVMSPAWN_BENCH_MARKER=RVMSPAWN-SYSTEMD-STATE= RVMSPAWN_BENCH_STOP_AT_MARKER=1
    check=systemd.wants=rvmspawn-check.service
    rvmspawn_systemd=(env RVMSPAWN_STOP_TIMEOUT=0 SYSTEMD_LOG_LEVEL=debug "$rvmspawn" -q --tpm=no
        --pass-ssh-key=no --qemu-mem=1G --qemu-smp=1 "--linux=$kernel" "--initrd=$initrd")
fi
if [ "$systemd" = 1 ]; then
    partuuid=$(cat .cache/assets/trixie/partuuid)
    image=$out/assets/trixie.raw
    cp --sparse=always .cache/assets/trixie/disk.raw "$image"
    cmd_rvmspawn=("${rvmspawn_systemd[@]}" -i "$out/rvmspawn.raw" "$check")
    cmd_rvmspawn_x=("${rvmspawn_systemd[@]}" -x -i "$image" "$check")
    # The console as vmspawn gives it (and rvmspawn by default): virtio-serial and virtconsole,
    # console=hvc0 (2026-12-07, medians of 3, writable and -snapshot: 69.8 and 69.6 s to the
    # running state with -serial stdio, 57.5 and 46.9 s with virtconsole in another run; whole
    # runs also differ by that much). -snapshot's temporary overlay goes to $TMPDIR (the test
    # host's /var/tmp is read-only).
    # shellcheck disable=SC2054 # the commas belong to QEMU's values
    qemu_systemd=(env "TMPDIR=$out" qemu-system-x86_64 -M pc -enable-kvm -cpu host -m 1024 -smp 1 -nodefaults
        -nographic -no-reboot -kernel "$kernel" -initrd "$initrd"
        -device virtio-serial-pci -chardev stdio,id=con -device virtconsole,chardev=con
        -device vhost-vsock-pci,guest-cid=4711
        -append "root=PARTUUID=$partuuid console=hvc0 $check")
    cmd_pc=("${qemu_systemd[@]}" -drive "file=$out/qemu.raw,format=raw,if=virtio")
    cmd_pc_snapshot=("${qemu_systemd[@]}" -snapshot -drive "file=$image,format=raw,if=virtio")
    labels=(rvmspawn rvmspawn-x qemu-pc qemu-pc-snapshot)
fi
if [ "$systemd" = 2 ]; then
    tree=$out/root
    cmd_rvmspawn=("${rvmspawn_systemd[@]}" -D "$tree" "$check")
    qemu_dir_wrapper "$tree" 1024 "$(printf '%s ' -device virtio-serial-pci -chardev stdio,id=con \
        -device virtconsole,chardev=con -device vhost-vsock-pci,guest-cid=4711)" \
        "console=hvc0 root=root rootfstype=virtiofs rw $check"
    cmd_pc=("$out/qemu-dir.sh")
    labels=(rvmspawn qemu-pc)
fi
results=$out/results
# Extracted kernels are cached per user; root's cache (/var/cache) is read-only in the test
# host, so the cache lives with this run (the warm-up boot fills it).
export XDG_CACHE_HOME=$out/cache
: >"$results"

have_rvmspawn=1
if [ ! -x "$rvmspawn" ]; then
    echo "bench-boot: $rvmspawn not found or not executable (set RVMSPAWN_BIN, or cargo build --release)" >&2
    echo "rvmspawn - - - not-built" >>"$results"
    have_rvmspawn=0
fi

condition() { # the same state of the test host's memory before every boot (see the top)
    [ "$condition_mib" = 0 ] && return
    head -c "${condition_mib}M" /dev/zero >"$out/condition"
    rm -f "$out/condition"
}

boot() { # LABEL RESULTS-FILE
    local cmd
    case $1 in
        rvmspawn) cmd=("${cmd_rvmspawn[@]}") ;;
        rvmspawn-vmlinux) cmd=("${cmd_rvmspawn_vmlinux[@]}") ;;
        rvmspawn-uki) cmd=("${cmd_rvmspawn_uki[@]}") ;;
        rvmspawn-serial) cmd=("${cmd_rvmspawn_serial[@]}") ;;
        qemu-pc-virtio) cmd=("${cmd_pc_virtio[@]}") ;;
        qemu-microvm) cmd=("${cmd_microvm[@]}") ;;
        qemu-pc) cmd=("${cmd_pc[@]}") ;;
        qemu-q35) cmd=("${cmd_q35[@]}") ;;
        rvmspawn-sb) cmd=("${cmd_rvmspawn_sb[@]}") ;;
        qemu-q35-smm) cmd=("${cmd_q35_smm[@]}") ;;
        rvmspawn-x) cmd=("${cmd_rvmspawn_x[@]}") ;;
        qemu-pc-snapshot) cmd=("${cmd_pc_snapshot[@]}") ;;
    esac
    if [ "$systemd" = 2 ]; then # a fresh tree, before the clock starts
        rm -rf "$out/root" && cp -a .cache/assets/trixie/root "$out/root"
    elif [ "$systemd" = 1 ]; then # fresh writable copies, before the clock starts
        case $1 in
            rvmspawn) cp --sparse=always "$image" "$out/rvmspawn.raw" ;;
            qemu-pc) cp --sparse=always "$image" "$out/qemu.raw" ;;
        esac
    fi
    if [ "$firmware" = 1 ]; then # fresh copies, before the clock starts
        if [ "$1" = rvmspawn ] || [ "$1" = rvmspawn-sb ]; then
            cp --sparse=always "$esp" "$out/rvmspawn.raw"
        else
            cp --sparse=always "$esp" "$out/qemu.raw"
            cp "$ovmf_vars" "$out/qemu-vars.fd"
        fi
    fi
    condition
    python3 "$measure" run "$1" "$2" "$out/$1.log" -- "${cmd[@]}" || true
    rm -f "$out/rvmspawn.raw" "$out/qemu.raw" "$out/qemu-vars.fd"
}

# One unmeasured boot each first: it pulls the binaries, libraries and guest
# images over 9p into the test host's page cache, which would otherwise be
# charged to whichever VMM happens to go first.
if [ "$systemd" = 0 ]; then
    echo "bench-boot: warm-up boots (not counted)"
    for label in "${labels[@]}"; do
        case $label in rvmspawn*) [ "$have_rvmspawn" = 0 ] && continue ;; esac
        boot "$label" /dev/null
    done
fi

echo "bench-boot: $runs measured boots per VMM; columns: VMM to-init-ms total-ms peak-RSS-KiB status"
for ((i = 0; i < runs; i++)); do
    for ((j = 0; j < ${#labels[@]}; j++)); do # round i starts with VMM i (mod their number)
        label=${labels[(i + j) % ${#labels[@]}]}
        case $label in rvmspawn*) [ "$have_rvmspawn" = 0 ] && continue ;; esac
        boot "$label" "$results"
    done
done

# Show how rvmspawn failed (it is young): the end of its last console output; with --systemd*,
# any VMM's (a boot costs minutes there).
for label in "${labels[@]}"; do
    case $label in rvmspawn*) ;; *) [ "$systemd" = 0 ] && continue ;; esac
    if [ "$have_rvmspawn" = 1 ] && awk -v l="$label" '$1 == l && $5 != "ok" { bad = 1 } END { exit !bad }' "$results"; then
        echo "bench-boot: $label failed; the end of its output:"
        tail -n 20 "$out/$label.log"
    fi
done

echo
if [ "$systemd" = 2 ]; then
    echo "Debian trixie (systemd 257) from an OS tree over virtio-fs to systemd's running state"
    echo "(to-init is RVMSPAWN-SYSTEMD-STATE=, total the end of the stop that follows it), in the"
    echo "nested test host (QEMU TCG; compare ratios, not absolute times):"
elif [ "$systemd" = 1 ]; then
    echo "Debian trixie (systemd 257) from a disk image to systemd's running state (to-init is"
    echo "RVMSPAWN-SYSTEMD-STATE=, total the end of the stop that follows it), in the nested test"
    echo "host (QEMU TCG; compare ratios, not absolute times):"
elif [ "$firmware" = 1 ]; then
    echo "UEFI boot of a disk image (OVMF -> systemd-boot -> kernel) to /init, in the nested test"
    echo "host (QEMU TCG; compare ratios, not absolute times):"
elif [ "$console" = 1 ]; then
    echo "Output-heavy boot (no quiet, then $kib KiB written to the console) to /init and to the"
    echo "exit, in the nested test host (QEMU TCG; compare ratios, not absolute times):"
elif [ "$directory" = 1 ]; then
    echo "Boot of an OS tree over virtio-fs to its /sbin/init, in the nested test host (QEMU TCG;"
    echo "compare ratios, not absolute times; peak RSS is the largest process's, the VMM's):"
else
    echo "Boot to /init, in the nested test host (QEMU TCG; compare ratios, not absolute times):"
fi
python3 "$measure" summary "$results" "${labels[@]}"
rm -rf "$out"
