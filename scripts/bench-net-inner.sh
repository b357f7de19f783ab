#!/bin/bash
# The inside of bench-net.sh: runs in the nested test host (which has a real
# /dev/kvm, /dev/vhost-net and /dev/net/tun), from the repository root.
# Usage: scripts/bench-net-inner.sh [ROUNDS]
#
# Each boot's /init (rvmspawn.iperf3=HOST, see scripts/initramfs/guest-init)
# runs three iperf3 clients against servers started here for that boot
# (iperf3 -s -1 on ports 5201-5203): TCP guest to host, TCP host to guest
# (-R) and UDP 64-byte datagrams guest to host (-u -l 64 -b 0), each for
# RVMSPAWN_BENCH_NET_TIME seconds, and prints iperf3's JSON reports, whose
# receiver figures bench-net-measure.py collects.
#
# The VMMs, interleaved in each round so that drifting load hits all alike;
# all get 512 MiB, 1 vCPU, the same bzImage and bench initramfs, no vsock:
#   rvmspawn-vhost   rvmspawn -n (TAP vt-bnvhost; vhost-net, /dev/vhost-net exists)
#   rvmspawn-user    the same in a mount namespace whose /dev has no vhost-net
#                    (only kvm, null, zero, urandom, net/tun): rvmspawn's
#                    userspace virtio-net (TAP vt-bnuser)
#   qemu-vhost-on    QEMU -M pc, -netdev tap,vhost=on + virtio-net-pci (TAP qt-von)
#   qemu-vhost-off   the same with vhost=off, as vmspawn runs it (TAP qt-voff)
#   rvmspawn-passt   rvmspawn --network-user-mode (passt); guest by DHCP
#   qemu-slirp       QEMU -nic user,model=virtio-net-pci; guest by DHCP
# TAP runs: nobody else configures the TAP in the test host, so a background
# job here waits for the link, gives it 10.77.N.1/24 and brings it up; the
# guest has 10.77.N.2/24 (rvmspawn.net=static:...) and its clients connect to
# 10.77.N.1. User-mode runs: the guest connects to 10.0.2.2, which passt and
# slirp both map to the test host's loopback, where the servers listen too.
# passt needs a default route to start: the test host gets one through a veth
# pair (see below).
#
# Environment: RVMSPAWN_BIN, RVMSPAWN_BENCH_NET_TIME (seconds per iperf3 job,
# 5), RVMSPAWN_BENCH_NET_TIMEOUT (seconds per boot, 240),
# RVMSPAWN_BENCH_NET_ONLY (space-separated labels: run only these).
set -euo pipefail

rounds=${1:-3}
secs=${RVMSPAWN_BENCH_NET_TIME:-5}
scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$scripts")
cd "$root"

kernel=.cache/assets/guest/vmlinuz
initrd=.cache/assets/bench-net/initramfs.cpio
rvmspawn=${RVMSPAWN_BIN:-target/release/rvmspawn}
measure=$scripts/bench-net-measure.py
# Runs one VMM with a timeout, logs its output, notes its time and peak RSS.
boot_measure=$scripts/bench-boot-measure.py
ports=(5201 5202 5203)

die() { echo "bench-net: $*" >&2; exit 1; }
[ -c /dev/kvm ] || die "no /dev/kvm"
[ -c /dev/net/tun ] || die "no /dev/net/tun"
[ -c /dev/vhost-net ] || die "no /dev/vhost-net (QEMU vhost=on and rvmspawn-vhost need it)"
[ -f "$initrd" ] || die "$initrd is missing (scripts/assets.sh --bench-net builds it)"
command -v iperf3 >/dev/null || die "iperf3 is not installed (scripts/packages.txt)"

out=$(mktemp -d /tmp/bench-net.XXXXXX)
results=$out/results
: >"$results"

# passt refuses to start without an external interface ("No external
# routable interface for IPv4", exit 1), and the test host has no network at
# all: give it a veth pair with a default route (TEST-NET-1, leads nowhere;
# the benchmark's traffic goes to 10.0.2.2, which passt maps to loopback).
ext=""
if ! ip -4 route show default | grep -q .; then
    ext=bn-ext0
    ip link add "$ext" type veth peer name bn-ext1 &&
        ip addr add 192.0.2.1/24 dev "$ext" &&
        ip link set bn-ext1 up && ip link set "$ext" up &&
        ip route add default via 192.0.2.254 dev "$ext" ||
        echo "bench-net: could not add a default route; passt may refuse to start" >&2
fi

# rvmspawn without vhost-net: /dev replaced by a tmpfs holding only what it
# needs (as tests/tests/vsock.rs hides vhost-vsock), /dev/net/tun kept. Execs
# all the way down, so the measured process is rvmspawn itself.
cat >"$out/no_vhost" <<'EOF'
set -e
kvm=$(stat -c "%t %T" /dev/kvm)
tun=$(stat -c "%t %T" /dev/net/tun)
mount -t tmpfs -o mode=755 none /dev
mknod /dev/kvm c $((0x${kvm% *})) $((0x${kvm#* }))
mknod -m 666 /dev/null c 1 3
mknod -m 666 /dev/zero c 1 5
mknod -m 666 /dev/urandom c 1 9
mkdir /dev/net
mknod -m 666 /dev/net/tun c $((0x${tun% *})) $((0x${tun#* }))
exec "$@"
EOF

guest_args() { # NET IPERF3-HOST
    echo "quiet rvmspawn.net=$1 rvmspawn.iperf3=$2 rvmspawn.iperf3.time=$secs"
}

# Sets cmd (the VMM's command line), tap (the TAP's name, empty for user
# mode) and host_addr (what the test host's end of the TAP gets).
setup() { # LABEL
    local n args
    tap="" host_addr=""
    case $1 in
        rvmspawn-vhost) n=1 tap=vt-bnvhost ;;
        rvmspawn-user) n=2 tap=vt-bnuser ;;
        qemu-vhost-on) n=3 tap=qt-von ;;
        qemu-vhost-off) n=4 tap=qt-voff ;;
    esac
    if [ -n "$tap" ]; then
        host_addr=10.77.$n.1/24
        args=$(guest_args "static:10.77.$n.2/24:10.77.$n.1" "10.77.$n.1")
    else
        args=$(guest_args dhcp 10.0.2.2)
    fi
    local rvm=("$rvmspawn" -q --tpm=no --qemu-mem=512M --qemu-smp=1 --qemu-vsock=no
        "--linux=$kernel" "--initrd=$initrd")
    local qemu=(qemu-system-x86_64 -M pc -enable-kvm -cpu host -m 512 -smp 1 -nodefaults
        -nographic -no-reboot -serial stdio -kernel "$kernel" -initrd "$initrd"
        -append "console=ttyS0 $args")
    # shellcheck disable=SC2206 # the guest's arguments, one word each
    local guest=($args)
    case $1 in
        rvmspawn-vhost) cmd=("${rvm[@]}" -M bnvhost -n "${guest[@]}") ;;
        rvmspawn-user) cmd=(unshare -m sh "$out/no_vhost" "${rvm[@]}" -M bnuser -n "${guest[@]}") ;;
        rvmspawn-passt) cmd=("${rvm[@]}" -M bnpasst --network-user-mode "${guest[@]}") ;;
        qemu-vhost-on | qemu-vhost-off)
            cmd=("${qemu[@]}" -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no,vhost=${1#qemu-vhost-}"
                -device virtio-net-pci,netdev=n0) ;;
        qemu-slirp) cmd=("${qemu[@]}" -nic user,model=virtio-net-pci) ;;
        *) die "unknown VMM label $1" ;;
    esac
}

# Wait (up to the boot's timeout) for the TAP to appear, then give it its
# address and bring it up.
configure_tap() { # NAME ADDR/PREFIX
    local i=0 limit=$((${RVMSPAWN_BENCH_NET_TIMEOUT:-240} * 10))
    until [ -e "/sys/class/net/$1" ]; do
        i=$((i + 1))
        [ $i -lt $limit ] || return 1
        sleep 0.1
    done
    ip addr add "$2" dev "$1" && ip link set "$1" up ||
        echo "bench-net: could not configure $1" >&2
}

# True once something listens on every port in ports (up to 10 s).
servers_listening() {
    local i=0 p missing
    while :; do
        missing=0
        for p in "${ports[@]}"; do
            ss -Hltn "sport = :$p" | grep -q . || missing=1
        done
        [ $missing = 0 ] && return 0
        i=$((i + 1))
        [ $i -lt 100 ] || return 1
        sleep 0.1
    done
}

boot() { # LABEL ROUND
    local label=$1 p cfg="" servers=()
    setup "$label"
    for p in "${ports[@]}"; do
        iperf3 -s -1 -p "$p" >>"$out/iperf3-server.log" 2>&1 &
        servers+=($!)
    done
    servers_listening || echo "bench-net: the iperf3 servers are not all listening" >&2
    if [ -n "$tap" ]; then
        configure_tap "$tap" "$host_addr" &
        cfg=$!
    fi
    rm -f "$out/boot" "$out/boot.log"
    RVMSPAWN_BENCH_BOOT_TIMEOUT=${RVMSPAWN_BENCH_NET_TIMEOUT:-240} \
        python3 "$boot_measure" run "$label" "$out/boot" "$out/boot.log" -- "${cmd[@]}" >/dev/null || true
    # Servers whose client never came, and a TAP that never appeared.
    kill "${servers[@]}" $cfg 2>/dev/null || true
    wait "${servers[@]}" $cfg 2>/dev/null || true
    python3 "$measure" record "$label" "$2" "$out/boot" "$out/boot.log" "$results" || true
    cat "$out/boot.log" >>"$out/$label.log"
}

labels=(rvmspawn-vhost rvmspawn-user qemu-vhost-on qemu-vhost-off rvmspawn-passt qemu-slirp)
pairs=rvmspawn-vhost/qemu-vhost-on,rvmspawn-user/qemu-vhost-off,rvmspawn-passt/qemu-slirp
pairs+=,rvmspawn-vhost/qemu-vhost-off,qemu-vhost-on/qemu-vhost-off
if [ -n "${RVMSPAWN_BENCH_NET_ONLY:-}" ]; then
    # shellcheck disable=SC2206 # a list of labels
    labels=(${RVMSPAWN_BENCH_NET_ONLY})
fi
shown=("${labels[@]}")
if [ ! -x "$rvmspawn" ]; then
    echo "bench-net: $rvmspawn not found or not executable (set RVMSPAWN_BIN, or cargo build --release)" >&2
    keep=()
    for label in "${labels[@]}"; do
        case $label in rvmspawn*) echo "$label 0 - - - - - not-built" >>"$results" ;; *) keep+=("$label") ;; esac
    done
    labels=("${keep[@]}")
fi

echo "bench-net: $rounds rounds, iperf3 jobs of $secs s; columns: VMM round" \
    "TCP-g->h-Mbit/s TCP-h->g-Mbit/s UDP64-pkts/s total-ms peak-RSS-KiB status"
for ((i = 1; i <= rounds; i++)); do
    start=$SECONDS
    for label in "${labels[@]}"; do
        boot "$label" "$i"
    done
    echo "bench-net: round $i took $((SECONDS - start)) s"
done

# Show how a VMM failed: the end of its last output.
for label in "${labels[@]}"; do
    [ -f "$out/$label.log" ] || continue
    if awk -v l="$label" '$1 == l && $8 != "ok" { bad = 1 } END { exit !bad }' "$results"; then
        echo "bench-net: $label failed; the end of its output:"
        tail -n 15 "$out/$label.log" | cut -c1-300
    fi
done

echo
echo "iperf3 between the guest and the nested test host (QEMU TCG; compare ratios, not"
echo "absolute figures); receiver-side figures, medians of $rounds rounds:"
python3 "$measure" summary "$results" "$pairs" "${shown[@]}"
rm -rf "$out"
[ -z "$ext" ] || ip link del "$ext" 2>/dev/null || true
