#!/usr/bin/env python3
"""Seed inputs for fuzz_targets/vsock_user.rs in its compact guest-memory layout (tx ring at
0/0x100/0x200, rx ring at 0x300/0x400/0x500, buffers from 0x600): packet sequences from a guest
with CID 3 to the handler on host port 9 (open, data, credit, shutdown), and to a refused port.
Usage: python3 seeds/vsock_user.py corpus/vsock_user"""
import os
import struct
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "corpus/vsock_user"
os.makedirs(out, exist_ok=True)
WRITE = 2
REQUEST, RESPONSE, RST, SHUTDOWN, RW, CREDIT_UPDATE, CREDIT_REQUEST = range(1, 8)


def hdr(op, src_port=1000, dst_port=9, payload=b"", flags=0, buf_alloc=65536, fwd_cnt=0):
    return struct.pack("<QQIIIHHIII", 3, 2, src_port, dst_port, len(payload), 1, op, flags,
                       buf_alloc, fwd_cnt) + payload


def seed(name, packets, rx_buffers=4, rx_len=4096 + 44, flags=0):
    mem = bytearray(0x8000)
    at = 0x600
    for i, p in enumerate(packets):
        struct.pack_into("<QIHH", mem, 16 * i, at, len(p), 0, 0)
        mem[at:at + len(p)] = p
        at += (len(p) + 15) & ~15
    struct.pack_into("<HH", mem, 0x100, 0, len(packets))
    for i in range(len(packets)):
        struct.pack_into("<H", mem, 0x104 + 2 * i, i)
    for i in range(rx_buffers):
        struct.pack_into("<QIHH", mem, 0x300 + 16 * i, 0x4000 + i * 0x1000, rx_len, WRITE, 0)
        struct.pack_into("<H", mem, 0x404 + 2 * i, i)
    struct.pack_into("<HH", mem, 0x400, 0, rx_buffers)
    with open(os.path.join(out, name), "wb") as f:
        f.write(bytes([4, 4, flags, 1]) + bytes(mem[:at]))


seed("open_data_close", [hdr(REQUEST), hdr(RW, payload=b"READY=1\n"),
                         hdr(RW, payload=b"EXIT_STATUS=42\n"), hdr(SHUTDOWN, flags=3)])
seed("half_close", [hdr(REQUEST), hdr(SHUTDOWN, flags=2), hdr(RST)])
seed("credit", [hdr(REQUEST, buf_alloc=0), hdr(CREDIT_REQUEST),
                hdr(CREDIT_UPDATE, buf_alloc=0xffffffff, fwd_cnt=0xfffffff0)])
seed("refused", [hdr(REQUEST, dst_port=5000), hdr(RW, dst_port=5000, payload=b"x")])
seed("wrong_state", [hdr(RESPONSE), hdr(REQUEST), hdr(REQUEST), hdr(7 + 1)])
seed("no_rx", [hdr(REQUEST, src_port=i) for i in range(8)], rx_buffers=1, flags=1)
