#!/usr/bin/env python3
"""Seed inputs for fuzz_targets/bzimage.rs: small bzImages (setup header, boot protocol 2.15)
around an ELF64 with a PVH note, its payload compressed as Kbuild does (the decompressed size
appended, except for gzip): gzip, bzip2, xz (x86 BCJ + LZMA2, CRC32), lzma, lz4 (legacy
frames of literal-only blocks) and, where the zstd tool is installed, zstd.
Usage: python3 seeds/bzimage.py corpus/bzimage"""
import bz2
import gzip
import lzma
import os
import shutil
import struct
import subprocess
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "corpus/bzimage"
os.makedirs(out, exist_ok=True)


def elf(pvh=True):
    body = b"".join(b"%08x " % ((i * 2654435761) & 0xFFFFFFFF) for i in range(400))
    img = bytearray(0x300)
    img[0:7] = b"\x7fELF\x02\x01\x01"
    struct.pack_into("<HHIQQ", img, 0x10, 2, 62, 1, 0x1000000, 64)
    struct.pack_into("<HHH", img, 0x34, 64, 56, 2)
    struct.pack_into("<IIQQQQQQ", img, 64, 1, 5, 0x300, 0x1000000, 0x1000000,
                     len(body), len(body), 4)
    struct.pack_into("<IIQQQQQQ", img, 120, 4, 4, 0x200, 0, 0, 20, 20, 4)
    struct.pack_into("<III4sI", img, 0x200, 4, 4, 18 if pvh else 17, b"Xen\0", 0x1000040)
    return bytes(img) + body


def lz4_legacy(data):
    """Literal-only LZ4 blocks in the legacy frame: valid, if not small."""
    frame = struct.pack("<I", 0x184C2102)
    for i in range(0, len(data), 4096):
        chunk = data[i:i + 4096]
        n = len(chunk)
        block = bytearray([0xF0 if n >= 15 else n << 4])
        if n >= 15:
            rest = n - 15
            while rest >= 255:
                block.append(255)
                rest -= 255
            block.append(rest)
        block += chunk
        frame += struct.pack("<I", len(block)) + block
    return frame


def bzimage(payload):
    img = bytearray(2 * 512 + 0x40)
    img[0x1F1] = 1
    struct.pack_into("<H", img, 0x1FE, 0xAA55)
    img[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", img, 0x206, 0x020F)
    img[0x211] = 1
    struct.pack_into("<I", img, 0x238, 2047)
    struct.pack_into("<II", img, 0x248, 0x40, len(payload))
    return bytes(img) + payload + b"\xcc" * 16


def sized(data, compressed):
    return compressed + struct.pack("<I", len(data))


kernel = elf()
xz_filters = [{"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2, "preset": 6}]
seeds = {
    "gzip": gzip.compress(kernel, mtime=0),
    "bzip2": sized(kernel, bz2.compress(kernel)),
    "xz": sized(kernel, lzma.compress(kernel, check=lzma.CHECK_CRC32, filters=xz_filters)),
    "lzma": sized(kernel, lzma.compress(kernel, format=lzma.FORMAT_ALONE)),
    "lz4": sized(kernel, lz4_legacy(kernel)),
    "lz4-no-pvh": sized(elf(False), lz4_legacy(elf(False))),
}
if shutil.which("zstd"):
    seeds["zstd"] = sized(kernel, subprocess.run(["zstd", "-19", "-c"], input=kernel,
                                                 stdout=subprocess.PIPE, check=True).stdout)
for name, payload in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(bzimage(payload))
with open(os.path.join(out, "elf"), "wb") as f:
    f.write(kernel)
