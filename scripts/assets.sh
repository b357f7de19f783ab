#!/bin/bash
# Build the kernels and initramfs images that integration tests and benchmarks
# boot, into .cache/assets/ of the repository (see scripts/README-testhost.md):
#   guest/vmlinuz            Debian cloud kernel (bzImage), what rvmspawn boots
#   guest/vmlinux            the ELF inside it (PVH note checked), for PVH boot
#   guest/initramfs.cpio.gz  busybox + /init printing RVMSPAWN-* lines
#                            + /bin/rvmspawn-guest
#   guest/rvmspawn-guest     the static test program from guest-tools/ (notify,
#                            vsock CID and streams); runs on the host side too
#   gui/vmlinuz              Debian generic kernel (bzImage): the cloud kernel has
#                            no DRM; for the graphical console's tests
#   gui/initramfs.cpio.gz    the guest initramfs, its modules from the generic
#                            kernel, plus virtio-gpu (DRM, fbdev emulation:
#                            /dev/fb0, fbcon) and virtio_input (evdev nodes)
#   testhost/vmlinuz         Debian generic kernel for the nested test host
#   testhost/vmlinux         the ELF inside it, which testhost.sh boots (PVH)
#   testhost/initramfs.cpio.gz  busybox + kvm-amd, vhost, 9p... + /init
#   firmware/uki.efi         a UKI (systemd-stub + guest kernel + initramfs),
#                            booted through OVMF by tests/tests/firmware.rs
#   firmware/esp.raw         GPT disk image, one ESP: systemd-boot, a Type #1
#                            entry for the guest kernel + initramfs
#   firmware/esp-nvram.raw   the same, defaulting to the EFI-variable entry
#                            (see build_firmware); tests boot copies, never these
#   bench-blk/initramfs.cpio    (only with --bench-blk) the guest initramfs
#                               plus Debian's fio and its libraries, for
#                               bench-blk.sh; uncompressed (see build_bench_blk)
#   bench-net/initramfs.cpio    (only with --bench-net) the guest initramfs
#                               plus Debian's iperf3 and its libraries, for
#                               bench-net.sh; uncompressed (see build_bench_net)
# Idempotent: each asset has a stamp recording the kernel version and a hash
# of the inputs (these scripts; for the guest also guest-tools/), and is
# rebuilt only when the stamp differs.
# Kernel versions come from the meta packages, so a Debian point release is
# picked up by itself. Needs the packages in scripts/packages.txt, a
# working `apt-get download` (after apt-get update) the first time, and cargo
# (with the x86_64-unknown-linux-gnu target and glibc's static libc.a, which
# libc6-dev has) for rvmspawn-guest.
#
# Options: -q           quiet (only errors); used by testhost.sh on every run.
#          --bench-blk  also build bench-blk/ (needs fio installed).
#          --bench-net  also build bench-net/ (needs iperf3 installed).
set -euo pipefail

quiet=0 bench_blk=0 bench_net=0
for arg in "$@"; do
    case $arg in
        -q) quiet=1 ;;
        --bench-blk) bench_blk=1 ;;
        --bench-net) bench_net=1 ;;
        *) echo "usage: $0 [-q] [--bench-blk] [--bench-net]" >&2; exit 2 ;;
    esac
done

scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$scripts")
assets=$root/.cache/assets

log() { [ "$quiet" = 1 ] || echo "assets: $*" >&2; }
die() { echo "assets: error: $*" >&2; exit 1; }

# Modules the test host loads: KVM itself, what rvmspawn's devices need on the
# host side (vhost-vsock, vhost-net, tun, bridges/veth for network tests), and
# virtio-pci + 9p for the shared root. Dependencies are added automatically.
TESTHOST_MODULES=(virtio_pci 9pnet_virtio 9p kvm kvm_amd tun vhost_net vhost_vsock
    bridge veth overlay)
# Modules of the cloud kernel for the guest initramfs: virtio over PCI, the
# console (virtio_console first: hvc0, the default console, exists only once it
# is loaded; guest-init then opens /dev/console again),
# the block device, the entropy source, virtio-vsock and virtio-fs (all =m in
# Debian's cloud kernel; virtio, virtio_ring, the virtio-pci libraries, vsock,
# vmw_vsock_virtio_transport_common and fuse come as dependencies), and
# virtio-net (with failover and net_failover; loaded whether or not the
# machine has a NIC, like the others).
# button and evdev: the ACPI power button as an input device (rvmspawn's graceful stop; read
# by the guest test program, or by systemd-logind in a systemd guest).
GUEST_MODULES=(virtio_pci virtio_console virtio_blk virtio_rng vmw_vsock_virtio_transport virtiofs virtio_net button evdev)
# Loaded by the guest's /init only when it was booted through UEFI and a test
# asks for EFI variables (rvmspawn.efi=1 and the efivar switches): efivarfs
# (=m in the cloud kernel) refuses to load without EFI runtime services.
GUEST_EFI_MODULES=(efivarfs)
# Added to GUEST_MODULES in the gui guest (generic kernel): the virtio GPU (module file
# virtio-gpu.ko; drm, drm_kms_helper, drm_shmem_helper and virtio_dma_buf come as
# dependencies) and the virtio keyboard and tablet.
GUI_MODULES=(virtio_gpu virtio_input)

mkdir -p "$assets"
# Serialise concurrent callers (two testhost.sh runs at once) on a lock.
exec 9>"$assets/.lock"
flock 9

# --- kernel versions --------------------------------------------------------
# `linux-image-cloud-amd64` depends on `linux-image-<ver>-cloud-amd64`.
# apt-cache takes about half a second, so the answer is remembered in
# $assets/kver together with a fingerprint of the apt lists it came from.
lists_key=$(stat -c '%n %Y %s' /var/lib/apt/lists/*_Packages* 2>/dev/null |
    sha256sum | cut -c1-16)
kver_base="" generic_base="" key=""
[ -f "$assets/kver" ] && read -r key kver_base generic_base <"$assets/kver"
if [ "$key" != "$lists_key" ] || [ -z "$kver_base" ]; then
    deps=$(apt-cache depends linux-image-cloud-amd64 linux-image-amd64 2>/dev/null || true)
    if ! grep -q 'Depends: linux-image-' <<<"$deps" && [ "$(id -u)" = 0 ]; then
        # A fresh machine may never have fetched the package lists.
        log "no kernel meta packages in apt's lists; running apt-get update"
        apt-get update -qq >&2 || true
        lists_key=$(stat -c '%n %Y %s' /var/lib/apt/lists/*_Packages* 2>/dev/null |
            sha256sum | cut -c1-16)
        deps=$(apt-cache depends linux-image-cloud-amd64 linux-image-amd64 2>/dev/null || true)
    fi
    new_cloud=$(sed -n 's/^ *Depends: linux-image-\(.*\)-cloud-amd64$/\1/p' <<<"$deps" | head -n1)
    new_generic=$(sed -n 's/^ *Depends: linux-image-\(.*[0-9]\)-amd64$/\1/p' <<<"$deps" | head -n1)
    if [ -n "$new_cloud" ] && [ -n "$new_generic" ]; then
        kver_base=$new_cloud generic_base=$new_generic
    elif [ -n "$kver_base" ]; then
        # Offline or no apt lists: keep using what was built last time.
        log "apt-cache cannot resolve the kernel meta packages; reusing $kver_base"
    else
        die "apt-cache cannot resolve linux-image-cloud-amd64/linux-image-amd64 (run apt-get update)"
    fi
fi
cloud_kver=$kver_base-cloud-amd64
generic_kver=$generic_base-amd64

inputs_hash=$(cat "$scripts/assets.sh" "$scripts/extract-vmlinux.py" \
    "$scripts/initramfs/guest-init" "$scripts/initramfs/testhost-init" |
    sha256sum | cut -c1-16)

# The guest initramfs also holds rvmspawn-guest, built from guest-tools/.
guest_tools=$root/guest-tools
tools_hash=$(cd "$guest_tools" && find Cargo.toml Cargo.lock src -type f | LC_ALL=C sort |
    xargs sha256sum | sha256sum | cut -c1-16)
guest_hash=$(echo "$inputs_hash $tools_hash" | sha256sum | cut -c1-16)

# A stamp holds the kernel version and the hash of the inputs it was built from.
stamp_ok() { # NAME KVER [HASH]
    [ "$(cat "$assets/stamps/$1" 2>/dev/null)" = "$2 ${3-$inputs_hash}" ]
}
stamp_set() { # NAME KVER [HASH]
    mkdir -p "$assets/stamps"
    echo "$2 ${3-$inputs_hash}" >"$assets/stamps/$1"
}

# --- kernel packages --------------------------------------------------------
# Download and unpack linux-image-KVER into $assets/extract/KVER.
unpack_kernel() { # KVER
    local kver=$1 pkg=linux-image-$1
    if stamp_ok "extract-$kver" "$kver" unpacked; then return; fi
    log "downloading and unpacking $pkg"
    mkdir -p "$assets/debs"
    rm -f "$assets/debs/${pkg}_"*.deb
    # Its only chatter on success is the "unsandboxed as root" warning.
    local err
    err=$(cd "$assets/debs" && apt-get download -q=2 "$pkg" 2>&1) ||
        die "apt-get download $pkg failed: $err"
    local debs=("$assets/debs/${pkg}_"*.deb) deb
    deb=${debs[0]}
    [ -f "$deb" ] || die "apt-get download $pkg failed"
    rm -rf "$assets/extract/$kver"
    mkdir -p "$assets/extract/$kver"
    dpkg-deb -x "$deb" "$assets/extract/$kver"
    # modules.dep for modprobe --show-depends (the package ships none).
    depmod -b "$assets/extract/$kver" "$kver"
    stamp_set "extract-$kver" "$kver" unpacked
}

# --- initramfs helpers --------------------------------------------------------
# Busybox with a symlink per applet, and /dev/console so the kernel can give
# /init its stdio before devtmpfs is mounted.
init_tree() { # DIR
    local dir=$1 applet
    rm -rf "$dir"
    mkdir -p "$dir"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,etc,mnt,tmp,root}
    # The initramfs has no libc: Debian's `busybox` package is dynamic.
    if ldd /bin/busybox >/dev/null 2>&1; then
        die "/bin/busybox is dynamically linked; install busybox-static"
    fi
    cp /bin/busybox "$dir/bin/busybox"
    for applet in $("$dir/bin/busybox" --list-full); do
        [ -e "$dir/$applet" ] || ln -s /bin/busybox "$dir/$applet"
    done
    mknod -m 600 "$dir/dev/console" c 5 1 2>/dev/null || true
    : >"$dir/etc/modules.list"
}

# Copy kernel modules and all their dependencies from an unpacked kernel
# package into an initramfs tree, decompressed (busybox insmod may not read
# .ko.xz/.ko.zst), and append them in load order to /etc/modules.list, which
# the /init scripts insmod one by one. Built-in modules are skipped.
# MODULES_LIST=etc/NAME puts them in another list, which /init does not load
# at start (the guest's /etc/modules.efi: efivarfs, loaded only under UEFI).
add_modules() { # DIR KVER MODULE...
    local dir=$1 kver=$2 tree=$assets/extract/$2 line path rel dst
    local list=$1/${MODULES_LIST:-etc/modules.list}
    shift 2
    for mod in "$@"; do
        modprobe -d "$tree" -S "$kver" --show-depends "$mod" ||
            die "module $mod not found in $kver"
    done | while read -r line; do
        case $line in
            insmod\ *) ;;
            *) continue ;; # "builtin MOD"
        esac
        path=${line#insmod }
        path=${path%% *}
        rel=${path#"$tree"}
        rel=${rel%.xz}
        rel=${rel%.zst}
        rel=${rel%.gz}
        dst=$dir$rel
        grep -qxF "$rel" "$list" 2>/dev/null && continue
        mkdir -p "$(dirname "$dst")"
        case $path in
            *.xz) xz -dc "$path" >"$dst" ;;
            *.zst) zstd -dcq "$path" >"$dst" ;;
            *.gz) gzip -dc "$path" >"$dst" ;;
            *) cp "$path" "$dst" ;;
        esac
        echo "$rel" >>"$list"
    done
}

# Replace files by rename, never in place: another testhost.sh run may be
# reading the old one right now (the lock only covers building).
install_file() { # SRC DST
    cp "$1" "$2.tmp"
    mv "$2.tmp" "$2"
}

pack_initramfs() { # DIR OUT [COMPRESSOR...]  (default gzip -9n)
    local dir=$1 out=$2
    shift 2
    [ $# -gt 0 ] || set -- gzip -9n
    (cd "$dir" && find . -mindepth 1 | LC_ALL=C sort |
        cpio -o -H newc -R 0:0 --quiet) | "$@" >"$out.tmp"
    mv "$out.tmp" "$out"
}

# --- guest test program --------------------------------------------------------
# rvmspawn-guest (guest-tools/, a cargo workspace of its own, no dependencies):
# linked statically against glibc so that it runs in the busybox initramfs,
# which has no C library. Cargo's target directory is .cache/guest-tools/; the
# binary is kept as guest/rvmspawn-guest. A no-op when guest-tools/ is unchanged.
build_guest_tools() {
    local bin=$assets/guest/rvmspawn-guest target=$root/.cache/guest-tools built quiet_flag=()
    if stamp_ok guest-tools static "$tools_hash" && [ -x "$bin" ]; then
        return
    fi
    command -v cargo >/dev/null ||
        die "cargo is not installed; the guest initramfs needs rvmspawn-guest built from guest-tools/"
    log "building rvmspawn-guest (guest-tools/, static)"
    [ "$quiet" = 1 ] && quiet_flag=(--quiet)
    # RUSTFLAGS replaces, and CARGO_ENCODED_RUSTFLAGS would override, any
    # flags from the caller's environment.
    (cd "$guest_tools" &&
        env -u CARGO_ENCODED_RUSTFLAGS RUSTFLAGS='-C target-feature=+crt-static' \
            cargo build "${quiet_flag[@]}" --release --locked \
            --target x86_64-unknown-linux-gnu --target-dir "$target") >&2 ||
        die "cargo build of guest-tools/ failed"
    built=$target/x86_64-unknown-linux-gnu/release/rvmspawn-guest
    # ldd says "statically linked" for a static PIE, "not a dynamic executable"
    # for a static non-PIE binary.
    ldd "$built" 2>&1 | grep -Eq 'statically linked|not a dynamic executable' ||
        die "$built is dynamically linked (RUSTFLAGS not applied?)"
    mkdir -p "$assets/guest"
    install_file "$built" "$bin"
    stamp_set guest-tools static "$tools_hash"
}

# --- guest --------------------------------------------------------------------
# Build NAME/ unless its stamp holds KVER and HASH: vmlinuz (KVER's bzImage), with PVH=1
# vmlinux too (the ELF inside it, PVH note checked), initramfs.cpio.gz (the tree that
# TREE-FUNCTION WORKDIR [ARG...] makes) and kernel-version.
build_boot_assets() { # NAME KVER HASH PVH TREE-FUNCTION [ARG...]
    local name=$1 kver=$2 hash=$3 pvh=$4 dir=$assets/$1 work=$assets/work/$1 out
    shift 4
    if stamp_ok "$name" "$kver" "$hash" && [ -f "$dir/initramfs.cpio.gz" ]; then
        return
    fi
    unpack_kernel "$kver"
    log "building $name assets for $kver"
    mkdir -p "$dir"
    install_file "$assets/extract/$kver/boot/vmlinuz-$kver" "$dir/vmlinuz"
    if [ "$pvh" = 1 ]; then
        out=$(python3 "$scripts/extract-vmlinux.py" "$dir/vmlinuz" "$dir/vmlinux")
        log "$out"
        # Cross-check the PVH note with binutils where it is installed.
        if command -v readelf >/dev/null; then
            readelf -n "$dir/vmlinux" | grep -Eq '^ *Xen[[:space:]].*(0x00000012|PHYS32_ENTRY)' ||
                die "readelf finds no XEN_ELFNOTE_PHYS32_ENTRY note in $name/vmlinux"
        fi
    fi
    "$1" "$work" "${@:2}"
    pack_initramfs "$work" "$dir/initramfs.cpio.gz"
    rm -rf "$work"
    echo "$kver" >"$dir/kernel-version"
    stamp_set "$name" "$kver" "$hash"
}

build_guest() {
    build_boot_assets guest "$cloud_kver" "$guest_hash" 1 guest_tree "$cloud_kver"
}

# The guest initramfs tree: busybox, /init, rvmspawn-guest, GUEST_MODULES and then
# MODULE... from kernel KVER.
guest_tree() { # DIR KVER [MODULE...]
    local dir=$1 kver=$2
    shift 2
    init_tree "$dir"
    install -m 755 "$scripts/initramfs/guest-init" "$dir/init"
    install -m 755 "$assets/guest/rvmspawn-guest" "$dir/bin/rvmspawn-guest"
    add_modules "$dir" "$kver" "${GUEST_MODULES[@]}" "$@"
    MODULES_LIST=etc/modules.efi add_modules "$dir" "$kver" "${GUEST_EFI_MODULES[@]}"
}

# --- graphical guest (the graphical console's tests) ------------------------------
# The guest initramfs on Debian's generic kernel, whose virtio-gpu driver (=m, with
# DRM_FBDEV_EMULATION and FRAMEBUFFER_CONSOLE built in) gives the guest /dev/fb0 and
# whose virtio_input gives it the keyboard and tablet; the cloud kernel has neither.
# No vmlinux: the bzImage is what it boots.
build_gui() {
    build_boot_assets gui "$generic_kver" "$guest_hash" 0 gui_tree
}

gui_tree() { # DIR
    guest_tree "$1" "$generic_kver" "${GUI_MODULES[@]}"
    grep -q '/virtio-gpu\.ko$' "$1/etc/modules.list" ||
        die "virtio-gpu missing from the gui initramfs"
}

# --- benchmark guests (--bench-blk, --bench-net) -----------------------------------
# A benchmark initramfs is the guest initramfs plus one of Debian's dynamically
# linked programs, every library ldd lists (at the same paths, so RUNPATHs keep
# working) and the dynamic loader. Left uncompressed: the guest only copies
# it, which under nested emulation is much quicker than decompressing it.

# The libraries (and loader) of PROGRAM, one path per line.
program_libs() { # PROGRAM
    ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u
}

# Build NAME/initramfs.cpio from the guest tree plus PROGRAM (installed as
# DEST) and its libraries, unless its stamp matches.
build_bench_initramfs() { # NAME PROGRAM DEST
    local name=$1 prog=$2 dest=$3 dir=$assets/$1 work=$assets/work/$1 libs lib hash
    libs=$(program_libs "$prog")
    [ -n "$libs" ] || die "ldd lists no libraries for $prog"
    # Rebuilt when the scripts, the program or any of its libraries change.
    # shellcheck disable=SC2086 # one path per word
    hash=$( { echo "$guest_hash"; stat -L -c '%n %s %Y' "$prog" $libs; } | sha256sum | cut -c1-16)
    if stamp_ok "$name" "$cloud_kver" "$hash" && [ -f "$dir/initramfs.cpio" ]; then
        return
    fi
    log "building the $name initramfs ($prog)"
    unpack_kernel "$cloud_kver"
    mkdir -p "$dir"
    guest_tree "$work" "$cloud_kver"
    install -D -m 755 "$prog" "$work$dest"
    for lib in $libs; do
        # -L: the file a symlink names, stored under the name the loader asks for.
        mkdir -p "$work$(dirname "$lib")"
        cp -L "$lib" "$work$lib"
    done
    # The loader finds every library in its default directories or through
    # RUNPATH; check that nothing is missing in the tree itself.
    if command -v chroot >/dev/null && [ "$(id -u)" = 0 ]; then
        chroot "$work" "$dest" --version >/dev/null ||
            die "$dest does not run inside the $name initramfs tree"
    fi
    pack_initramfs "$work" "$dir/initramfs.cpio" cat
    rm -rf "$work"
    echo "$cloud_kver" >"$dir/kernel-version"
    stamp_set "$name" "$cloud_kver" "$hash"
}

# Block benchmark: Debian's fio links Ceph, Gluster, RDMA and PMEM libraries
# (about 80 MB; every engine is built in, there are no engine .so files to
# add). rvmspawn.blkbench=1 on the kernel command line makes /init run fio
# (scripts/initramfs/guest-init). bench-blk-inner.sh loads brd and ext4 in
# the test host from the unpacked test-host kernel.
build_bench_blk() {
    local fio
    fio=$(command -v fio) || die "fio is not installed (apt-get install fio; see scripts/packages.txt)"
    unpack_kernel "$generic_kver"
    build_bench_initramfs bench-blk "$fio" /usr/bin/fio
}

# Network benchmark: iperf3 (libiperf, libcrypto, libsctp; about 12 MB in
# all). rvmspawn.iperf3=HOST makes /init run the iperf3 clients.
build_bench_net() {
    local iperf3
    iperf3=$(command -v iperf3) ||
        die "iperf3 is not installed (apt-get install iperf3; see scripts/packages.txt)"
    build_bench_initramfs bench-net "$iperf3" /usr/bin/iperf3
}

# --- UEFI firmware boots (tests/tests/firmware.rs, scripts/firmware-check-qemu.sh) ---
# From Debian's systemd-boot-efi (the stub and systemd-boot), the guest kernel
# and initramfs; FAT made with mkfs.vfat on a plain file and filled with mtools,
# the GPT with sfdisk: no loop mounts. Needs dosfstools, mtools, fdisk, binutils.
#   uki.efi          linuxx64.efi.stub + .osrel + .cmdline + .linux + .initrd;
#                    .cmdline is FW_UKI_CMDLINE
#   esp.raw          64 MiB GPT (disk GUID FW_ESP_DISKUUID), partition 1
#                    (1 MiB..63 MiB) an ESP with PARTUUID FW_ESP_PARTUUID:
#                    EFI/BOOT/BOOTX64.EFI = systemd-boot, /vmlinuz,
#                    /initramfs.cpio.gz, loader/loader.conf
#                    (timeout 0, default test.conf) and two Type #1 entries:
#                    loader/entries/test.conf  options FW_TEST_OPTIONS
#                    loader/entries/nvram.conf options FW_NVRAM_OPTIONS
#   esp-nvram.raw    the same with "default nvram.conf"
#   sb/              Secure Boot test keys made here (openssl, efitools):
#                    PK, KEK and db (RSA 2048, self-signed), their
#                    authenticated variable updates PK.auth (signed by PK),
#                    KEK.auth (by PK), db.auth (by KEK) for a guest in setup
#                    mode to enroll, uki-signed.efi, uki.efi signed with the
#                    db key (sbsign), and uki-enroll.efi, an unsigned UKI whose
#                    .cmdline is FW_SB_ENROLL_CMDLINE (systemd 252's stub takes
#                    no extra arguments from SMBIOS). Needs openssl, efitools,
#                    sbsigntool.
# The tests compare what the guest prints with these strings: change both.
# rvmspawn.notify=42 (test.conf): the guest sends EXIT_STATUS=42 to the notify
# socket in its SMBIOS credential (rvmspawn's; under QEMU it finds none and
# just powers off).
FW_UKI_CMDLINE="console=ttyS0 rvmspawn.efi=1 rvmspawn.smbios=1 rvmspawn.entry=uki"
FW_TEST_OPTIONS="console=ttyS0 rvmspawn.efi=1 rvmspawn.smbios=1 rvmspawn.notify=42 rvmspawn.entry=test"
FW_NVRAM_OPTIONS="console=ttyS0 rvmspawn.efi=1 rvmspawn.efivar-persist=kept-across-boots rvmspawn.entry=nvram"
# Enroll the keys from credentials; try to program a variable store byte from
# outside SMM (tests/tests/firmware.rs, FLASH_POKE_ADDR).
FW_SB_ENROLL_CMDLINE="$FW_UKI_CMDLINE rvmspawn.sb-enroll=1 rvmspawn.flash-poke=0xffc3f000"
FW_ESP_PARTUUID=7a3e1c54-9b2d-4f60-8e15-3c9d0b6a2f71
FW_ESP_DISKUUID=52564d53-5041-574e-8000-00000000d15c
FW_STUB=/usr/lib/systemd/boot/efi/linuxx64.efi.stub
FW_SDBOOT=/usr/lib/systemd/boot/efi/systemd-bootx64.efi

# Add SECTION=FILE pairs to a PE stub, each at the next section-aligned address
# after the previous one (starting after the stub's last section), as ukify
# places them: overlapping the stub's own sections would corrupt the image.
make_uki() { # STUB OUT .name=FILE...
    local stub=$1 out=$2 end align=4096 args=() pair name file size
    shift 2
    # objdump -h: "Idx Name Size VMA LMA ..." lines; the end of the last section.
    end=0
    while read -r _ name size vma _; do
        case $size in *[!0-9a-fA-F]* | '') continue ;; esac
        case $vma in *[!0-9a-fA-F]* | '') continue ;; esac
        [ $((0x$vma + 0x$size)) -gt "$end" ] && end=$((0x$vma + 0x$size))
    done < <(objdump -h "$stub" | grep -E '^ *[0-9]+ ')
    [ "$end" -gt 0 ] || die "objdump -h finds no sections in $stub"
    for pair in "$@"; do
        name=${pair%%=*} file=${pair#*=}
        end=$(( (end + align - 1) / align * align ))
        args+=(--add-section "$name=$file" --change-section-vma "$(printf '%s=0x%x' "$name" "$end")")
        size=$(stat -L -c %s "$file")
        end=$((end + size))
    done
    objcopy "${args[@]}" "$stub" "$out.tmp" || die "objcopy could not build $out"
    mv "$out.tmp" "$out"
}

# A 64 MiB GPT image with one ESP (FAT32, 62 MiB) holding systemd-boot, the
# guest kernel and initramfs and the two entries; DEFAULT names the entry
# loader.conf chooses.
make_esp() { # OUT DEFAULT
    local out=$1 default=$2 tmp=$assets/work/firmware
    rm -rf "$tmp"
    mkdir -p "$tmp"
    printf 'timeout 0\ndefault %s\n' "$default" >"$tmp/loader.conf"
    printf 'title rvmspawn test\nlinux /vmlinuz\ninitrd /initramfs.cpio.gz\noptions %s\n' \
        "$FW_TEST_OPTIONS" >"$tmp/test.conf"
    printf 'title rvmspawn EFI variable test\nlinux /vmlinuz\ninitrd /initramfs.cpio.gz\noptions %s\n' \
        "$FW_NVRAM_OPTIONS" >"$tmp/nvram.conf"
    # 62 MiB = 126976 sectors of 512 bytes, one sector per cluster: enough
    # clusters for FAT32, which the UEFI specification wants for an ESP.
    mkfs.vfat -C -F 32 -s 1 -n ESP -i 52564d53 "$tmp/esp.fat" $((62 * 1024)) >/dev/null ||
        die "mkfs.vfat failed"
    local m=(-i "$tmp/esp.fat")
    MTOOLS_SKIP_CHECK=1 mmd "${m[@]}" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries &&
        MTOOLS_SKIP_CHECK=1 mcopy "${m[@]}" "$FW_SDBOOT" ::/EFI/BOOT/BOOTX64.EFI &&
        MTOOLS_SKIP_CHECK=1 mcopy "${m[@]}" "$assets/guest/vmlinuz" ::/vmlinuz &&
        MTOOLS_SKIP_CHECK=1 mcopy "${m[@]}" "$assets/guest/initramfs.cpio.gz" ::/initramfs.cpio.gz &&
        MTOOLS_SKIP_CHECK=1 mcopy "${m[@]}" "$tmp/loader.conf" ::/loader/loader.conf &&
        MTOOLS_SKIP_CHECK=1 mcopy "${m[@]}" "$tmp/test.conf" "$tmp/nvram.conf" ::/loader/entries/ ||
        die "mtools could not fill the ESP"
    rm -f "$tmp/disk.raw"
    truncate -s 64M "$tmp/disk.raw"
    printf 'label: gpt\nlabel-id: %s\nstart=2048, size=126976, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=%s, name="ESP"\n' \
        "$FW_ESP_DISKUUID" "$FW_ESP_PARTUUID" | sfdisk -q "$tmp/disk.raw" >/dev/null || die "sfdisk failed on the ESP image"
    dd if="$tmp/esp.fat" of="$tmp/disk.raw" bs=1M seek=1 conv=notrunc,sparse status=none ||
        die "dd of the ESP into the disk image failed"
    mv "$tmp/disk.raw" "$out"
    rm -rf "$tmp"
}

build_firmware() {
    local dir=$assets/firmware tool missing=() hash
    for tool in objcopy:binutils objdump:binutils mkfs.vfat:dosfstools mcopy:mtools \
        mmd:mtools sfdisk:fdisk openssl:openssl cert-to-efi-sig-list:efitools \
        sign-efi-sig-list:efitools sbsign:sbsigntool; do
        command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
    done
    [ -f "$FW_STUB" ] && [ -f "$FW_SDBOOT" ] || missing+=(systemd-boot-efi)
    if [ ${#missing[@]} -gt 0 ]; then
        # Not fatal: every other test still runs; the firmware tests say what is missing.
        echo "assets: firmware/ not built: install $(printf '%s\n' "${missing[@]}" | sort -u |
            tr '\n' ' ')(scripts/install-deps.sh)" >&2
        return
    fi
    # Rebuilt when the guest or the systemd-boot binaries change.
    hash=$( { echo "$guest_hash"; stat -L -c '%n %s %Y' "$FW_STUB" "$FW_SDBOOT"; } |
        sha256sum | cut -c1-16)
    if stamp_ok firmware "$cloud_kver" "$hash" && [ -f "$dir/sb/uki-enroll.efi" ]; then
        return
    fi
    log "building UEFI boot assets (UKI, ESP images)"
    mkdir -p "$dir" "$assets/work"
    printf '%s' "$FW_UKI_CMDLINE" >"$dir/cmdline.tmp"
    printf 'ID=rvmspawn-test\nNAME="rvmspawn test guest"\n' >"$dir/os-release.tmp"
    make_uki "$FW_STUB" "$dir/uki.efi" .osrel="$dir/os-release.tmp" .cmdline="$dir/cmdline.tmp" \
        .linux="$assets/guest/vmlinuz" .initrd="$assets/guest/initramfs.cpio.gz"
    rm -f "$dir/cmdline.tmp" "$dir/os-release.tmp"
    make_esp "$dir/esp.raw" test.conf
    make_esp "$dir/esp-nvram.raw" nvram.conf
    make_sb_keys "$dir/sb" "$dir/uki.efi"
    stamp_set firmware "$cloud_kver" "$hash"
}

# Test keys for Secure Boot (never a real one: made here, cached, not committed).
make_sb_keys() { # DIR UKI
    local dir=$1 uki=$2 k owner=52564d53-5041-574e-8000-00000000005b
    rm -rf "$dir"
    mkdir -p "$dir"
    for k in PK KEK db; do
        openssl req -quiet -new -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
            -subj "/CN=rvmspawn test $k/" -keyout "$dir/$k.key" -out "$dir/$k.crt" 2>/dev/null &&
            cert-to-efi-sig-list -g "$owner" "$dir/$k.crt" "$dir/$k.esl" >/dev/null ||
            die "could not make the Secure Boot test key $k"
    done
    sign-efi-sig-list -g "$owner" -k "$dir/PK.key" -c "$dir/PK.crt" PK "$dir/PK.esl" "$dir/PK.auth" >/dev/null &&
        sign-efi-sig-list -g "$owner" -k "$dir/PK.key" -c "$dir/PK.crt" KEK "$dir/KEK.esl" "$dir/KEK.auth" >/dev/null &&
        sign-efi-sig-list -g "$owner" -k "$dir/KEK.key" -c "$dir/KEK.crt" db "$dir/db.esl" "$dir/db.auth" >/dev/null ||
        die "sign-efi-sig-list failed"
    sbsign --key "$dir/db.key" --cert "$dir/db.crt" --output "$dir/uki-signed.efi" "$uki" 2>/dev/null ||
        die "sbsign could not sign $uki"
    printf '%s' "$FW_SB_ENROLL_CMDLINE" >"$dir/cmdline.tmp"
    printf 'ID=rvmspawn-test\nNAME="rvmspawn test guest"\n' >"$dir/os-release.tmp"
    make_uki "$FW_STUB" "$dir/uki-enroll.efi" .osrel="$dir/os-release.tmp" .cmdline="$dir/cmdline.tmp" \
        .linux="$assets/guest/vmlinuz" .initrd="$assets/guest/initramfs.cpio.gz"
    rm -f "$dir/cmdline.tmp" "$dir/os-release.tmp"
}

# --- test host ------------------------------------------------------------------
# testhost.sh boots the ELF through its PVH entry: under TCG that saves the ~2.5 s
# the bzImage spends decompressing itself.
build_testhost() {
    build_boot_assets testhost "$generic_kver" "$inputs_hash" 1 testhost_tree
}

testhost_tree() { # DIR
    init_tree "$1"
    install -m 755 "$scripts/initramfs/testhost-init" "$1/init"
    add_modules "$1" "$generic_kver" "${TESTHOST_MODULES[@]}"
    grep -q kvm-amd "$1/etc/modules.list" || die "kvm-amd missing from the test-host initramfs"
}

build_guest_tools
build_guest
build_gui
build_firmware
build_testhost
# The real systemd guest (a Debian trixie tree and disk image; its own stamp).
"$scripts/systemd-guest.sh"
[ "$bench_blk" = 0 ] || build_bench_blk
[ "$bench_net" = 0 ] || build_bench_net
echo "$lists_key $kver_base $generic_base" >"$assets/kver"

# Drop unpacked trees and packages of kernel versions no longer current.
for d in "$assets"/extract/*; do
    [ -d "$d" ] || continue
    case ${d##*/} in
        "$cloud_kver" | "$generic_kver") ;;
        *)
            log "removing old ${d##*/}"
            rm -rf "$d" "$assets/debs/linux-image-${d##*/}_"*.deb "$assets/stamps/extract-${d##*/}" ;;
    esac
done
log "ready: guest $cloud_kver, gui guest and test host $generic_kver in $assets"
