#!/usr/bin/env python3
"""Seed inputs for fuzz_targets/vhost_user_fs.rs: the byte stream a well-behaved vhost-user
back end (virtiofsd) sends to rvmspawn's virtio-fs front end over the target's whole run
(handshake, activation, reset, a second activation and reset), with and without REPLY_ACK,
MQ and protocol features, for a few queue counts, and one cut short.
Usage: python3 seeds/vhost_user_fs.py corpus/vhost_user_fs"""
import os
import struct
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "corpus/vhost_user_fs"
os.makedirs(out, exist_ok=True)

GET_FEATURES, SET_FEATURES, SET_MEM_TABLE = 1, 2, 5
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 8, 9, 10, 11
SET_VRING_KICK, SET_VRING_CALL = 12, 13
GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, SET_VRING_ENABLE = 15, 17, 18
MQ, REPLY_ACK = 1 << 0, 1 << 3
VERSION_1, INDIRECT_DESC, EVENT_IDX, PROTOCOL = 1 << 32, 1 << 28, 1 << 29, 1 << 30
RING_FEATURES = VERSION_1 | INDIRECT_DESC | EVENT_IDX


def reply(code, body):
    return struct.pack("<III", code, 0x1 | 0x4, len(body)) + body


def u64(code, value):
    return reply(code, struct.pack("<Q", value))


def stream(features, protocol=0, queue_num=2, runs=2, cut=None):
    acks = bool(features & PROTOCOL) and bool(protocol & REPLY_ACK)
    b = u64(GET_FEATURES, features)
    queues = 2
    if features & PROTOCOL:
        b += u64(GET_PROTOCOL_FEATURES, protocol)
        if protocol & MQ:
            b += u64(GET_QUEUE_NUM, queue_num)
            queues = 1 + min(queue_num - 1, 16)
    enable = bool(features & PROTOCOL)
    for _ in range(runs):
        if acks:
            b += u64(SET_FEATURES, 0) + u64(SET_MEM_TABLE, 0)
        for _q in range(queues):
            if acks:
                for code in (SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, SET_VRING_CALL,
                             SET_VRING_KICK):
                    b += u64(code, 0)
                if enable:
                    b += u64(SET_VRING_ENABLE, 0)
        for q in range(queues):
            if acks and enable:
                b += u64(SET_VRING_ENABLE, 0)
            b += reply(GET_VRING_BASE, struct.pack("<II", q, 0))
    return b[:cut] if cut else b


def seed(name, data):
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)


seed("virtiofsd", stream(RING_FEATURES | PROTOCOL, MQ | REPLY_ACK | (1 << 5) | (1 << 15)))
seed("virtiofsd_4_queues", stream(RING_FEATURES | PROTOCOL, MQ | REPLY_ACK, queue_num=5))
seed("no_reply_ack", stream(RING_FEATURES | PROTOCOL, MQ, queue_num=3))
seed("no_mq", stream(RING_FEATURES | PROTOCOL, REPLY_ACK))
seed("no_protocol_features", stream(RING_FEATURES))
seed("handshake_only", stream(RING_FEATURES | PROTOCOL, MQ | REPLY_ACK, runs=0))
seed("cut_in_activation", stream(RING_FEATURES | PROTOCOL, MQ | REPLY_ACK, cut=200))
