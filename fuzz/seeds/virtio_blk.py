#!/usr/bin/env python3
"""Seed inputs for fuzz_targets/virtio_blk.rs: well-formed requests in its compact guest-memory
layout (descriptor table at 0, available ring at 0x100, used ring at 0x200, buffers from 0x300).
Usage: python3 seeds/virtio_blk.py corpus/virtio_blk"""
import os
import struct
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "corpus/virtio_blk"
os.makedirs(out, exist_ok=True)
NEXT, WRITE, INDIRECT = 1, 2, 4


def seed(name, chains, writes, size_code=4, flags=0):
    mem = bytearray(0x1000)
    descs, heads = [], []
    for chain in chains:
        heads.append(len(descs))
        for i, (addr, length, fl) in enumerate(chain):
            last = i + 1 == len(chain)
            descs.append((addr, length, fl | (0 if last else NEXT), 0 if last else len(descs) + 1))
    for i, d in enumerate(descs):
        struct.pack_into("<QIHH", mem, 16 * i, *d)
    struct.pack_into("<HH", mem, 0x100, 0, len(heads))
    for i, h in enumerate(heads):
        struct.pack_into("<H", mem, 0x104 + 2 * i, h)
    for addr, b in writes:
        mem[addr:addr + len(b)] = b
    with open(os.path.join(out, name), "wb") as f:
        f.write(bytes([size_code, flags, 0, 0]) + bytes(mem))


def hdr(kind, sector):
    return struct.pack("<IIQ", kind, 0, sector)


def rng(sector, count, flags):
    return struct.pack("<QII", sector, count, flags)


seed("in", [[(0x300, 16, 0), (0x400, 1024, WRITE), (0x900, 1, WRITE)]], [(0x300, hdr(0, 2))])
seed("out", [[(0x300, 16, 0), (0x400, 512, 0), (0x900, 1, WRITE)]],
     [(0x300, hdr(1, 5)), (0x400, b"\xab" * 512)])
seed("flush_getid", [[(0x300, 16, 0), (0x900, 1, WRITE)],
                     [(0x310, 16, 0), (0x400, 20, WRITE), (0x901, 1, WRITE)]],
     [(0x300, hdr(4, 0)), (0x310, hdr(8, 0))])
seed("discard_wz", [[(0x300, 16, 0), (0x400, 32, 0), (0x900, 1, WRITE)],
                    [(0x310, 16, 0), (0x420, 16, 0), (0x901, 1, WRITE)]],
     [(0x300, hdr(11, 0)), (0x400, rng(1, 2, 0) + rng(9, 1, 0)),
      (0x310, hdr(13, 0)), (0x420, rng(3, 4, 1))])
seed("indirect", [[(0x300, 16, 0), (0x600, 48, INDIRECT)]],
     [(0x300, hdr(0, 0)),
      (0x600, struct.pack("<QIHHQIHHQIHH", 0x300, 16, NEXT, 1, 0x400, 512, NEXT | WRITE, 2,
                          0x900, 1, WRITE, 0))])
seed("event_idx", [[(0x300, 16, 0), (0x400, 512, WRITE), (0x900, 1, WRITE)]],
     [(0x300, hdr(0, 1))], flags=2)
