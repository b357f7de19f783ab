#!/usr/bin/env python3
"""Seed inputs for fuzz_targets/pci_config.rs: a driver's bring-up of the virtio-blk function
(features, one queue, MSI-X, DRIVER_OK, a notification) as the target's 14-byte access records.
Usage: python3 seeds/pci_config.py corpus/pci_config"""
import os
import struct
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "corpus/pci_config"
os.makedirs(out, exist_ok=True)
LEN = {1: 0, 2: 1, 4: 2, 8: 3}
IO_W, IO_R, ECAM_W, ECAM_R, BAR_W, BAR_R = range(6)


def op(kind, offset, value, length):
    return bytes([kind, LEN[length]]) + struct.pack("<IQ", offset, value)


dev1 = 1 << 15  # ECAM offset of 00:01.0
ops = [
    op(IO_W, 0, 0x8000_0800, 4), op(IO_R, 4, 0, 4),          # CF8/CFC: device 1's IDs
    op(ECAM_R, dev1 + 0x34, 0, 1),                            # capability pointer
    op(ECAM_W, dev1 + 0x40 + 0x4e - 0x40, 0x8000, 2),         # MSI-X enable (probe)
    op(BAR_W, 20, 1 | 2, 1),                                  # ACKNOWLEDGE | DRIVER
    op(BAR_W, 8, 1, 4), op(BAR_W, 12, 1, 4),                  # VERSION_1
    op(BAR_W, 8, 0, 4), op(BAR_W, 12, 1 << 9, 4),             # FLUSH
    op(BAR_W, 20, 1 | 2 | 8, 1),                              # FEATURES_OK
    op(BAR_W, 22, 0, 2), op(BAR_W, 24, 16, 2),
    op(BAR_W, 32, 0x1000, 8), op(BAR_W, 40, 0x2000, 8), op(BAR_W, 48, 0x3000, 8),
    op(BAR_W, 26, 1, 2), op(BAR_W, 16, 0, 2), op(BAR_W, 28, 1, 2),
    op(BAR_W, 0x4010, 0xfee0_0000, 4), op(BAR_W, 0x4018, 0x4021, 4), op(BAR_W, 0x401c, 0, 4),
    op(BAR_W, 20, 1 | 2 | 8 | 4, 1),                          # DRIVER_OK
    op(BAR_W, 0x3000, 0, 2),                                  # notify queue 0
    op(BAR_R, 0x1000, 0, 1), op(BAR_R, 0x2000, 0, 8), op(BAR_R, 0x6000, 0, 8),
    op(BAR_W, 20, 0, 1),                                      # reset
]
with open(os.path.join(out, "bringup"), "wb") as f:
    f.write(b"".join(ops))
