#!/usr/bin/env python3
"""Seed inputs for fuzz_targets/virtio_gpu.rs in its compact guest-memory layout (control ring
at 0/0x100/0x200, cursor ring at 0x300/0x400/0x500, buffers from 0x600): a driver's bring-up as
Linux's virtio-gpu and OVMF's VirtioGpuDxe do it (display info, EDID, a 2D resource with a
two-entry backing, transfer, scanout, flush, a fenced command) and a cursor update.
Usage: python3 seeds/virtio_gpu.py corpus/virtio_gpu"""
import os
import struct
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "corpus/virtio_gpu"
os.makedirs(out, exist_ok=True)
NEXT, WRITE = 1, 2
FB = 0x8000  # a 16x16 framebuffer (1 KiB) in guest memory


def hdr(kind, fence=None):
    flags, fid = (1, fence) if fence is not None else (0, 0)
    return struct.pack("<IIQIB3x", kind, flags, fid, 0, 0)


def cmds(w=16, h=16, fmt=2):
    half = w * h * 2
    return [
        hdr(0x100),
        hdr(0x10A) + struct.pack("<II", 0, 0),
        hdr(0x101) + struct.pack("<IIII", 1, fmt, w, h),
        hdr(0x106) + struct.pack("<II", 1, 2)
        + struct.pack("<QII", FB, half, 0) + struct.pack("<QII", FB + half, half, 0),
        hdr(0x105, fence=7) + struct.pack("<IIIIQII", 0, 0, w, h, 0, 1, 0),
        hdr(0x103) + struct.pack("<IIIIII", 0, 0, w, h, 0, 1),
        hdr(0x104) + struct.pack("<IIIIII", 2, 2, 4, 4, 1, 0),
        hdr(0x107) + struct.pack("<II", 1, 0),
        hdr(0x102) + struct.pack("<II", 1, 0),
    ]


def seed(name, control, cursor=(), flags=0):
    mem = bytearray(0xA000)
    at = 0x600
    for ring, table, chain_cmds in ((0x000, 0x100, control), (0x300, 0x400, cursor)):
        desc = 0
        heads = []
        for c in chain_cmds:
            heads.append(desc)
            mem[at:at + len(c)] = c
            struct.pack_into("<QIHH", mem, ring + 16 * desc, at, len(c), NEXT, desc + 1)
            at += (len(c) + 15) & ~15
            # Room for the largest response (EDID: 24 + 8 + 1024 bytes).
            struct.pack_into("<QIHH", mem, ring + 16 * (desc + 1), at, 1056, WRITE, 0)
            at += 1056
            desc += 2
        struct.pack_into("<HH", mem, table, 0, len(heads))
        for i, h in enumerate(heads):
            struct.pack_into("<H", mem, table + 4 + 2 * i, h)
    assert at <= FB
    for i in range(256):
        struct.pack_into("<I", mem, FB + 4 * i, 0x00102030 + i)
    with open(os.path.join(out, name), "wb") as f:
        f.write(bytes([4, 3, flags, 3]) + bytes(mem))


seed("bring_up", cmds()[:8], [hdr(0x300) + struct.pack("<IIIIIIII", 0, 1, 1, 0, 1, 0, 0, 0)])
seed("formats_and_unref", [cmds(8, 8, 121)[i] for i in (2, 3, 4, 5, 8)], flags=1)
seed("bad_rectangles", [cmds()[2], cmds()[3],
                        hdr(0x105) + struct.pack("<IIIIQII", 15, 15, 2, 2, 0, 1, 0),
                        hdr(0x103) + struct.pack("<IIIIII", 0xFFFFFFFF, 0, 2, 2, 0, 1)])
