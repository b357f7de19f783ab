#!/bin/bash
# Run a command inside the nested test host: a QEMU TCG machine (-cpu max
# emulates AMD SVM) booting Debian's generic kernel, which loads kvm-amd and so
# has a real /dev/kvm plus /dev/vhost-vsock, /dev/vhost-net and /dev/net/tun.
# This machine's own /dev/kvm (kvm_pvm) cannot boot stock kernels; see
# shared/testhost.md and scripts/README-testhost.md.
#
# Usage: scripts/testhost.sh [--timeout SECS] [--] COMMAND [ARGS...]
#
# The host's / is shared read-only and COMMAND runs chrooted in it, in the
# current directory, with the console (the test host's ttyS0) on our stdout.
# Exit status: COMMAND's; 124 on timeout (QEMU is killed); 125 if the test
# host failed before reporting an exit code.
#
# Environment:
#   RVMSPAWN_* and RUST_BACKTRACE   exported to COMMAND
#   RVMSPAWN_KEEP_RUN=1             keep .cache/testhost-runs/<id> afterwards
#   RVMSPAWN_TESTHOST_QEMU          QEMU binary (default: the patched build of
#                                   scripts/testhost-qemu/build.sh if it has been
#                                   built, else qemu-system-x86_64; stock QEMU 7.2
#                                   aborts in ~40% of nested OVMF boots)
#   RVMSPAWN_TESTHOST_MEM / _SMP    test-host memory and vCPUs (3G, 1: with 2, the
#                                   emulated test host wedged in 2 of 3 test runs)
#   RVMSPAWN_TESTHOST_9P_CACHE      9p cache mode of the shared root (loose)
#   RVMSPAWN_TESTHOST_STALL         seconds without QEMU CPU progress, or
#                                   without the test host's heartbeat, before a
#                                   run counts as wedged (60; without a terminal)
#   RVMSPAWN_TESTHOST_KERNEL        test-host kernel (.cache/assets/testhost/vmlinux,
#                                   booted via PVH: no decompression under TCG)
set -euo pipefail

usage() {
    echo "usage: $0 [--timeout SECS] [--] COMMAND [ARGS...]" >&2
    exit 2
}

timeout=600
while [ $# -gt 0 ]; do
    case $1 in
        --timeout) [ $# -ge 2 ] || usage; timeout=$2; shift 2 ;;
        --timeout=*) timeout=${1#--timeout=}; shift ;;
        -h | --help) usage ;;
        --) shift; break ;;
        -*) usage ;;
        *) break ;;
    esac
done
[ $# -gt 0 ] || usage
case $timeout in '' | *[!0-9]*) echo "$0: --timeout wants whole seconds" >&2; exit 2 ;; esac

scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
root=$(dirname "$scripts")
assets=$root/.cache/assets

"$scripts/assets.sh" -q

# One directory per run, shared read-write with the test host as `rvmrun`.
mkdir -p "$root/.cache/testhost-runs"
run=$(mktemp -d "$root/.cache/testhost-runs/XXXXXXXX")
# shellcheck disable=SC2317 # called by the trap
cleanup() {
    if [ "${RVMSPAWN_KEEP_RUN:-0}" = 1 ]; then
        echo "testhost: run directory kept: $run" >&2
    else
        rm -rf "$run"
    fi
}
trap cleanup EXIT

# The test host sees the physical tree, so resolve symlinks in the cwd.
cwd=$(pwd -P)
interactive=0
[ -t 0 ] && interactive=1

{
    printf 'hostpath=%q\n' "$run"
    printf 'cache=%q\n' "${RVMSPAWN_TESTHOST_9P_CACHE:-loose}"
    printf 'interactive=%s\n' "$interactive"
} >"$run/config"
# Directories that must stay visible although the test host mounts tmpfs
# over /tmp and /run (a checkout under /tmp, say).
printf '%s\n' "$root" "$cwd" >"$run/visible"

# The command file, run by bash in the chroot: exports, cd, exec COMMAND.
# printf %q quotes every word so that bash reads back exactly our argv.
{
    echo '#!/bin/bash'
    printf 'export TERM=%q\n' "${TERM:-dumb}"
    while IFS= read -r name; do
        case $name in
            RVMSPAWN_* | RUST_BACKTRACE) printf 'export %s=%q\n' "$name" "${!name}" ;;
        esac
    done < <(compgen -e)
    printf 'cd -- %q || exit 125\n' "$cwd"
    printf 'exec'
    printf ' %q' "$@"
    printf '\n'
} >"$run/cmd"

# The outer QEMU: the patched build when it exists (build.sh --print-path only
# prints where it would be; it builds nothing), else Debian's.
default_qemu=qemu-system-x86_64
if [ -z "${RVMSPAWN_TESTHOST_QEMU:-}" ]; then
    patched=$("$scripts/testhost-qemu/build.sh" --print-path 2>/dev/null) || patched=""
    [ -n "$patched" ] && [ -x "$patched" ] && default_qemu=$patched
fi

# qboot instead of SeaBIOS: quicker, and prints nothing on the serial port.
# nohz=off highres=off: a periodic tick. With one-shot timers the emulated test
# host lost a timer interrupt now and then (in guest reboots above all: the
# firmware batch's nvram steps wedged in 9 of 11 attempts) and then slept for
# ever; a periodic tick re-arms itself (0 wedges in the 4 firmware batches
# since). RVMSPAWN_TESTHOST_APPEND adds kernel arguments.
# -virtfs takes a comma-separated list: double commas in paths.
# shellcheck disable=SC2054 # the commas belong to QEMU option values
qemu=("${RVMSPAWN_TESTHOST_QEMU:-$default_qemu}"
    -accel tcg,thread=multi -cpu max
    -smp "${RVMSPAWN_TESTHOST_SMP:-1}" -m "${RVMSPAWN_TESTHOST_MEM:-3G}"
    -nodefaults -nographic -no-reboot -bios qboot.rom
    -kernel "${RVMSPAWN_TESTHOST_KERNEL:-$assets/testhost/vmlinux}" -initrd "$assets/testhost/initramfs.cpio.gz"
    -append "console=ttyS0 quiet loglevel=0 panic=-1 nohz=off highres=off ${RVMSPAWN_TESTHOST_APPEND:-}"
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap
    -virtfs "local,path=${run//,/,,},mount_tag=rvmrun,security_model=none,multidevs=remap")

# The emulated test host occasionally wedges: QEMU then uses no CPU at all (its
# guest waits for an interrupt that never comes). A healthy test host, even an
# idle one, keeps ticking, so a QEMU whose CPU time stands still for $stall
# seconds is killed at once instead of at the overall timeout.
stall=${RVMSPAWN_TESTHOST_STALL:-60}
# A test host can also wedge with QEMU busy: its kernel no longer runs its own
# tasks (not even the command's timeouts). The test host's init touches
# $run/heartbeat every 5 s; one older than $beat_stall seconds counts as wedged
# too (longer than $stall: a busy test host may run its heartbeat late).
beat_stall=$((stall + 30))
watchdog() { # PID of timeout(1), whose child is QEMU
    local qpid="" last="" now still=0 beat
    while sleep 10; do
        [ -n "$qpid" ] || qpid=$(pgrep -P "$1" | head -n 1) || continue
        now=$(awk '{ print $14 + $15 }' "/proc/$qpid/stat" 2>/dev/null) || return 0
        beat=$(stat -c %Y "$run/heartbeat" 2>/dev/null) || beat=""
        if [ -n "$beat" ] && [ $(($(date +%s) - beat)) -ge "$beat_stall" ] && [ ! -f "$run/rc" ]; then
            echo "no heartbeat for ${beat_stall}s" >"$run/stalled"
            kill -KILL "$qpid" 2>/dev/null
            return 0
        fi
        if [ "$now" = "$last" ]; then
            still=$((still + 10))
            if [ "$still" -ge "$stall" ]; then
                echo "no CPU progress for ${stall}s" >"$run/stalled"
                kill -KILL "$qpid" 2>/dev/null
                return 0
            fi
        else
            still=0
        fi
        last=$now
    done
}

set +e
if [ "$interactive" = 1 ]; then
    # Our terminal drives the test host's console. signal=off: Ctrl-C goes to
    # the command in the test host instead of killing QEMU; the multiplexer
    # still offers Ctrl-A x (quit QEMU) and Ctrl-A c (QEMU monitor).
    # --foreground keeps QEMU in the terminal's process group, so it can read.
    timeout --foreground --kill-after=10 "$timeout" "${qemu[@]}" \
        -chardev stdio,id=con,mux=on,signal=off -serial chardev:con \
        -mon chardev=con,mode=readline
    qrc=$?
else
    # No terminal (CI, pipes): the console is output only. stdin from
    # /dev/null also protects QEMU when our stdin is closed altogether.
    timeout --foreground --kill-after=10 "$timeout" "${qemu[@]}" \
        -serial stdio </dev/null &
    tpid=$!
    # Not on our stdout: its last `sleep 10` outlives it, and whoever reads our output would
    # wait for that sleep's end (up to 10 s a run) before seeing the end of it.
    watchdog "$tpid" </dev/null >/dev/null 2>&1 &
    wpid=$!
    wait "$tpid"
    qrc=$?
    kill "$wpid" 2>/dev/null
    wait "$wpid" 2>/dev/null
fi
set -e
if [ -f "$run/stalled" ]; then
    echo "testhost: the test host made no progress ($(cat "$run/stalled")): wedged, QEMU killed" >&2
    exit 124
fi

if [ -s "$run/error" ]; then
    sed 's/^/testhost: /' "$run/error" >&2
fi
if [ "$qrc" = 124 ]; then
    echo "testhost: timed out after ${timeout}s, QEMU killed" >&2
    exit 124
fi
if [ ! -f "$run/rc" ]; then
    echo "testhost: the test host reported no exit code (QEMU exit status $qrc)" >&2
    exit 125
fi
rc=$(cat "$run/rc")
exit "$rc"
