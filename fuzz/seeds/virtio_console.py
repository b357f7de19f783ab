#!/usr/bin/env python3
"""Seed inputs for fuzz_targets/virtio_console.rs in its compact guest-memory layout (rx ring at
0/0x100/0x200, tx ring at 0x300/0x400/0x500, buffers from 0x600): a driver that posts receive
buffers and sends output chains of one and several descriptors, as Linux's virtio_console does.
Usage: python3 seeds/virtio_console.py corpus/virtio_console"""
import os
import struct
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "corpus/virtio_console"
os.makedirs(out, exist_ok=True)
NEXT, WRITE = 1, 2


def seed(name, tx_chains, rx_buffers=4, rx_len=256, flags=0):
    mem = bytearray(0x4000)
    at, desc = 0x600, 0
    heads = []
    for chain in tx_chains:
        heads.append(desc)
        for i, text in enumerate(chain):
            last = i + 1 == len(chain)
            struct.pack_into("<QIHH", mem, 0x300 + 16 * desc, at, len(text),
                             0 if last else NEXT, 0 if last else desc + 1)
            mem[at:at + len(text)] = text
            at += (len(text) + 15) & ~15
            desc += 1
    struct.pack_into("<HH", mem, 0x400, 0, len(heads))
    for i, h in enumerate(heads):
        struct.pack_into("<H", mem, 0x404 + 2 * i, h)
    for i in range(rx_buffers):
        struct.pack_into("<QIHH", mem, 16 * i, 0x2000 + i * rx_len, rx_len, WRITE, 0)
        struct.pack_into("<H", mem, 0x104 + 2 * i, i)
    struct.pack_into("<HH", mem, 0x100, 0, rx_buffers)
    with open(os.path.join(out, name), "wb") as f:
        f.write(bytes([4, 4, flags, 3]) + bytes(mem[:max(at, 0x2000 + rx_buffers * rx_len)]))


seed("output_and_input", [[b"hello from hvc0\r\n"], [b"two ", b"parts\r\n"]])
seed("event_idx", [[b"x" * 300]], flags=1)
seed("no_rx_buffers", [[b"login: "]], rx_buffers=0)
seed("tiny_rx_buffers", [], rx_buffers=16, rx_len=1)
