#!/usr/bin/env python3
"""Seed inputs for fuzz_targets/bls.rs: small trees of boot entries, in the target's format
(loader.conf, then 0xFF-separated pairs of entry name and contents; a name whose first byte is
odd gets .conf appended). Usage: python3 seeds/bls.py corpus/bls"""
import os
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "corpus/bls"
os.makedirs(out, exist_ok=True)
SEP = b"\xff"


def tree(loader, *entries):
    parts = [loader]
    for name, body in entries:
        parts += [b"\x01" + name, body]
    return SEP.join(parts)


seeds = {
    "one": tree(b"", (b"a", b"title A\nlinux /k\ninitrd /i\n")),
    "default-glob": tree(b"default t*\ntimeout 3\n",
                         (b"t", b"linux /k\ninitrd /i\nversion 2\n"),
                         (b"z", b"linux /missing\nversion 9\n")),
    "sorting": tree(b"",
                    (b"a+3-1", b"sort-key x\nversion 6.9\nlinux /k\n"),
                    (b"b", b"sort-key x\nversion 6.10\nlinux /k\ninitrd /i\ninitrd /i\n"),
                    (b"c", b"machine-id 0123456789abcdef0123456789abcdef\nlinux /k\n")),
    "refused": tree(b"default \"quoted\"\n",
                    (b"d", b"linux /../k\n"),
                    (b"e", b"architecture aa64\nlinux /k\n"),
                    (b"f", b"options root=/dev/sda\n")),
}
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
