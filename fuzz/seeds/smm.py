#!/usr/bin/env python3
"""Seed inputs for fuzz_targets/smm.rs: OVMF's SMM set-up as the target's 12-byte records
(kind, flags: width code | 4 = from SMM | 8 = LPC or fw_cfg write, a 16-bit offset, 8 bytes):
the extended TSEG query, TSEGMB, ESMRAMC and SMRAM, SMI_EN and SMI_LOCK, the SMI feature
negotiation, an SMI, TSEG opened and closed, a variable write from SMM, the lock, then the same
from outside SMM.
Usage: python3 seeds/smm.py corpus/smm"""
import os
import struct
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "corpus/smm"
os.makedirs(out, exist_ok=True)
LEN = {1: 0, 2: 1, 4: 2, 8: 3}
CFG_W, CFG_R, PM_W, APM_W, FWCFG, FWCFG_DMA, FLASH_W, FLASH_R = range(8)
SMM, WRITE = 4, 8


def op(kind, offset, value, length, flags=0):
    return bytes([kind, LEN[length] | flags]) + struct.pack("<HQ", offset, value)


def mch(reg, value, length):  # the target adds 0x40 to the offset
    return op(CFG_W, reg - 0x40, value, length)


setup = [
    mch(0x50, 0xFFFF, 2), op(CFG_R, 0x50, 0, 2),        # extended TSEG query
    mch(0xAC, 0x3F0 << 20, 4),                          # TSEGMB
    mch(0x9E, 0x38 | 6 | 1, 1),                         # ESMRAMC: ext size, T_EN
    mch(0x9D, 0x0A, 1),                                 # SMRAM: G_SMRAME
    op(PM_W, 0, 0x21, 4),                               # SMI_EN: APMC_EN | GBL_SMI_EN
    op(CFG_W, 0xA0 - 0x40, 0x10, 2, WRITE),             # LPC GEN_PMCON_1: SMI_LOCK
    op(PM_W, 0, 0x20, 4),                               # try to clear GBL_SMI_EN
    op(FWCFG, 0, 0x20, 2, WRITE), op(FWCFG, 1, 0, 1),   # select supported-features, read
    op(FWCFG_DMA, 0, 0x0108_0001, 8),                   # requested-features := 1 (payload[0]=1 -> key 0x21)
    op(FWCFG, 0, 0x22, 2, WRITE), op(FWCFG, 1, 0, 1),   # features-ok
    op(APM_W, 1, 0, 1), op(APM_W, 0, 0, 1),             # an SMI
    mch(0x9E, 0x38 | 6, 1), mch(0x9E, 0x38 | 6 | 1, 1),  # open and close TSEG
    op(FLASH_W, 0x10, 0x10, 1, SMM), op(FLASH_W, 0x10, 0x42, 1, SMM),
    op(FLASH_W, 0x10, 0xFF, 1, SMM), op(FLASH_R, 0x10, 0, 1, SMM),
    op(FLASH_W, 0x20, 0x20, 1, SMM), op(FLASH_W, 0x20, 0xD0, 1, SMM),
    mch(0x9D, 0x1A, 1),                                 # D_LCK
    mch(0x9E, 0x38, 1), mch(0x9D, 0x4A, 1),             # try to reopen
    op(FLASH_W, 0x30, 0x10, 1), op(FLASH_W, 0x30, 0x00, 1), op(FLASH_R, 0x30, 0, 1),
]
with open(os.path.join(out, "ovmf-smm-setup"), "wb") as f:
    f.write(b"".join(setup))
with open(os.path.join(out, "outsider-only"), "wb") as f:
    f.write(b"".join(o[:1] + bytes([o[1] & ~SMM]) + o[2:] for o in setup))
