#!/usr/bin/env python3
"""The VMM's own cost, start to exit, for bench-tiny.sh.

  bench-tiny-measure.py RUNS RVMSPAWN [QEMU]

Writes a tiny guest (an ELF with a PVH note whose 32-bit code prints a line on
COM1 and powers off through the ACPI sleep register: rvmspawn's at port 0x600,
then QEMU microvm's GED register at 0xfea00200, so both VMMs run the very same
bytes), then starts RVMSPAWN and QEMU (if given) RUNS times each, interleaved
(each round in a rotated order, so drifting load hits all alike), and prints
the median wall time from just before the spawn to the end of the VMM's output
and its exit (what a shell running it waits for), the ratios, and then
rvmspawn's own phases from RUNS more runs at debug level
(SYSTEMD_LOG_LEVEL=debug: "Phase: WHAT at SECONDS" lines on stderr, on the same
CLOCK_MONOTONIC as Python's time.monotonic()).

RVMSPAWN_COMPARE_BINS (colon-separated paths of other rvmspawn builds) adds
those to the interleaved runs, each labelled with its file name.
"""

import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ENTRY = 0x10_0000
CODE_OFFSET = 0x200
NOTE_OFFSET = 0x180
HELLO = b"hello from a tiny guest\n"
# QEMU microvm's generic event device: its registers at GED_MMIO_BASE + 0x200,
# the sleep control register first.
QEMU_MICROVM_SLEEP_CONTROL = 0xFEA0_0200
# SLP_TYP 5 (S5) << 2 | SLP_EN: what both sleep control registers take for S5.
S5 = 0x34
PHASE = re.compile(rb"Phase: (.*) at (\d+\.\d+)")


def guest_code():
    code = bytearray(b"\x66\xba\xf8\x03")  # mov dx, 0x3f8
    for b in HELLO:
        code += bytes([0xB0, b, 0xEE])  # mov al, b; out dx, al
    code += b"\x66\xba\x00\x06" + bytes([0xB0, S5, 0xEE])  # port 0x600 (rvmspawn)
    # mov byte [QEMU_MICROVM_SLEEP_CONTROL], S5 (paging is off: a physical address)
    code += b"\xc6\x05" + struct.pack("<I", QEMU_MICROVM_SLEEP_CONTROL) + bytes([S5])
    code += b"\xfa\xf4\xeb\xfd"  # cli; hlt; jmp hlt
    return bytes(code)


def pvh_elf(code):
    """An ELF64 executable: one PT_LOAD with `code` at 1 MiB and a Xen PVH entry note."""
    note = struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", ENTRY)
    f = bytearray(CODE_OFFSET)
    f[:16] = b"\x7fELF\x02\x01\x01" + bytes(9)
    f[16:64] = struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, ENTRY, 64, 0, 0, 64, 56, 2, 64, 0, 0)

    def phdr(kind, flags, off, addr, size, align):
        return struct.pack("<IIQQQQQQ", kind, flags, off, addr, addr, size, size, align)

    f[64:120] = phdr(1, 5, CODE_OFFSET, ENTRY, len(code), 0x1000)
    f[120:176] = phdr(4, 4, NOTE_OFFSET, 0, len(note), 4)
    f[NOTE_OFFSET:NOTE_OFFSET + len(note)] = note
    return bytes(f + code)


def one(cmd, env=None):
    """(seconds from spawn to exit and end of output, stderr, spawn time); exits on failure."""
    t0 = time.monotonic()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=env, timeout=60, check=False)
    t1 = time.monotonic()
    if p.returncode != 0 or HELLO not in p.stdout:
        sys.exit(f"bench-tiny: {cmd[0]} failed (exit status {p.returncode}):\n"
                 f"{p.stdout.decode(errors='replace')}{p.stderr.decode(errors='replace')}")
    return t1 - t0, p.stderr, t0


def ms(seconds):
    return f"{seconds * 1000:7.1f}"


def main():
    runs = int(sys.argv[1])
    rvmspawn = sys.argv[2]
    qemu = sys.argv[3] if len(sys.argv) > 3 else None
    guest = os.path.join(tempfile.mkdtemp(prefix="bench-tiny-"), "tiny.elf")
    with open(guest, "wb") as f:
        f.write(pvh_elf(guest_code()))
    cmds = {
        "rvmspawn": [rvmspawn, "-q", "--tpm=no", "--pass-ssh-key=no", "--qemu-mem=64M", "--qemu-smp=1",
                     f"--linux={guest}"],
    }
    if qemu:
        # -cpu host less arch-capabilities: some KVMs refuse QEMU's write of that MSR.
        cmds["qemu-microvm"] = [qemu, "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=off",
                                "-enable-kvm", "-cpu", "host,-arch-capabilities", "-m", "64",
                                "-smp", "1", "-nodefaults", "-no-user-config", "-nographic",
                                "-no-reboot", "-serial", "stdio", "-kernel", guest]
    # Other builds to compare with, run the same way, each labelled with its file name.
    for other in filter(None, os.environ.get("RVMSPAWN_COMPARE_BINS", "").split(":")):
        cmds[os.path.basename(other)] = [other] + cmds["rvmspawn"][1:]
    labels = list(cmds)
    times = {label: [] for label in labels}
    for label in labels:  # one warm-up each: page cache, first use of /dev/kvm
        one(cmds[label])
    for i in range(runs):
        order = labels[i % len(labels):] + labels[:i % len(labels)]
        for label in order:
            times[label].append(one(cmds[label])[0])
    print(f"start to exit, median of {runs} interleaved runs each (ms):")
    base = statistics.median(times["rvmspawn"])
    for label in labels:
        m = statistics.median(times[label])
        ratio = f"   rvmspawn/{label} {base / m:.2f}" if label != "rvmspawn" else ""
        print(f"  {label:20} {ms(m)}   min {ms(min(times[label]))}{ratio}")

    env = dict(os.environ, SYSTEMD_LOG_LEVEL="debug")
    phases = {}
    order = []
    totals = []
    for _ in range(runs):
        total, err, t0 = one(cmds["rvmspawn"], env)
        totals.append(total)
        for m in PHASE.finditer(err):
            name = m.group(1).decode()
            if name not in phases:
                phases[name] = []
                order.append(name)
            phases[name].append(float(m.group(2)) - t0)
    print(f"rvmspawn's phases at debug level, median of {runs} runs (ms from spawn; step):")
    last = 0.0
    for name in order:
        at = statistics.median(phases[name])
        print(f"  {name:28} {ms(at)}  {ms(at - last)}")
        last = at
    at = statistics.median(totals)
    print(f"  {'exit (wait returns)':28} {ms(at)}  {ms(at - last)}")


if __name__ == "__main__":
    main()
