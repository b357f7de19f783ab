#!/usr/bin/env python3
"""Seed inputs for fuzz_targets/uki.rs: small PE/COFF files laid out as objcopy and ukify lay out
a UKI (headers, then each section's data at the next 0x200 boundary), with and without .linux.
Usage: python3 seeds/uki.py corpus/uki"""
import os
import struct
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "corpus/uki"
os.makedirs(out, exist_ok=True)
ALIGN = 0x200


def pe(sections, e_lfanew=0x80, magic=0x20B, optional_len=240):
    """sections: (name, data) pairs. Returns the file's bytes."""
    table = e_lfanew + 24 + optional_len
    headers = table + 40 * len(sections)
    img = bytearray(-(-headers // ALIGN) * ALIGN)
    img[0:2] = b"MZ"
    struct.pack_into("<I", img, 0x3C, e_lfanew)
    img[e_lfanew:e_lfanew + 4] = b"PE\0\0"
    struct.pack_into("<HHIIIHH", img, e_lfanew + 4, 0x8664, len(sections), 0, 0, 0,
                     optional_len, 0x0206)
    optional = bytearray(max(optional_len, 112))
    struct.pack_into("<H", optional, 0, magic)
    struct.pack_into("<II", optional, 32, 0x1000, ALIGN)
    struct.pack_into("<H", optional, 68, 10)
    img[e_lfanew + 24:table] = optional[:optional_len]
    va = 0x1000
    for i, (name, data) in enumerate(sections):
        offset = len(img)
        raw = -(-len(data) // ALIGN) * ALIGN
        img += data + bytes(raw - len(data))
        struct.pack_into("<8sIIII", img, table + 40 * i, name, len(data), va, raw, offset)
        va += max(-(-len(data) // 0x1000), 1) * 0x1000
    return bytes(img)


def seed(name, data):
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)


KERNEL = b"\xeb\x66HdrS" + bytes(range(256)) * 2
seed("full", pe([(b".text", b"\xc3" * 16), (b".osrel", b"ID=debian\nVERSION_ID=12\n"),
                 (b".cmdline", b"console=ttyS0 quiet\n"), (b".uname", b"6.1.0-28-cloud-amd64"),
                 (b".sbat", b"sbat,1\n"), (b".ucode", b"\x55" * 64), (b".linux", KERNEL),
                 (b".initrd", b"070701" + bytes(100))]))
seed("minimal", pe([(b".linux", KERNEL)]))
seed("pe32", pe([(b".linux", KERNEL), (b".cmdline", b" \tquiet\r\n\0\0")], magic=0x10B))
seed("profiles", pe([(b".linux", KERNEL), (b".cmdline", b"base"), (b".profile", b"ID=a\n"),
                     (b".cmdline", b"a"), (b".initrd", b"x" * 10), (b".profile", b"ID=b\n"),
                     (b".cmdline", b"b")]))
# An EFI-stub bzImage: PE header at 0x40, "HdrS" at 0x202, sections but no .linux.
seed("bzimage", pe([(b".setup", KERNEL), (b".reloc", bytes(12)), (b".compat", bytes(8)),
                    (b".text", b"\x90" * 64)], e_lfanew=0x40, optional_len=0xA0))
seed("no_linux", pe([(b".text", b"\xc3"), (b".cmdline", b"quiet")]))
