#!/usr/bin/env python3
"""Extract the ELF vmlinux from an x86 bzImage, and check it carries a PVH note.

Usage: extract-vmlinux.py BZIMAGE OUT

The bzImage setup header tells exactly where the compressed kernel is, so we
do not have to scan for compression magics the way the kernel's own
scripts/extract-vmlinux does (scanning can hit a false positive):
  0x1f1 setup_sects (u8; 0 means 4)
  0x248 payload_offset (u32 LE), 0x24c payload_length (u32 LE), both relative
  to the protected-mode code, which starts at (setup_sects + 1) * 512.
The payload is decompressed with the command-line tool matching its magic.
Kbuild appends the uncompressed size (u32 LE) to every format except gzip
(whose own trailer already has it); it is stripped and checked.

The PVH entry point is announced by an ELF note of owner "Xen" and type
XEN_ELFNOTE_PHYS32_ENTRY (18); without it QEMU/rvmspawn cannot boot the ELF
directly, so its absence is an error.
"""

import os
import struct
import subprocess
import sys

XEN_ELFNOTE_PHYS32_ENTRY = 18

# (magic, human name, decompress command reading stdin, has kbuild size trailer)
FORMATS = [
    (b"\x1f\x8b", "gzip", ["gzip", "-dc"], False),
    (b"\x1f\x9e", "gzip", ["gzip", "-dc"], False),
    (b"\xfd7zXZ\x00", "xz", ["xz", "-dc"], True),
    (b"\x28\xb5\x2f\xfd", "zstd", ["zstd", "-dcq"], True),
    (b"\x5d\x00\x00", "lzma", ["xz", "--format=lzma", "-dc"], True),
    (b"\x02\x21\x4c\x18", "lz4", ["lz4", "-dc"], True),
    (b"BZh", "bzip2", ["bzip2", "-dc"], True),
    (b"\x89LZO", "lzo", ["lzop", "-dc"], True),
]


def die(msg):
    sys.stderr.write("extract-vmlinux: %s\n" % msg)
    sys.exit(1)


def payload(image):
    if len(image) < 0x250 or image[0x202:0x206] != b"HdrS":
        die("not a bzImage (no HdrS setup header)")
    setup_sects = image[0x1F1] or 4
    off, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + off
    if length == 0 or start + length > len(image):
        die("payload out of range (offset %#x, length %#x)" % (start, length))
    return image[start:start + length]


def decompress(data):
    for magic, name, cmd, sized in FORMATS:
        if not data.startswith(magic):
            continue
        body, expect = data, None
        if sized:
            body, expect = data[:-4], struct.unpack("<I", data[-4:])[0]
        try:
            out = subprocess.run(cmd, input=body, stdout=subprocess.PIPE,
                                 check=True).stdout
        except FileNotFoundError:
            die("payload is %s but '%s' is not installed" % (name, cmd[0]))
        except subprocess.CalledProcessError as e:
            die("%s decompression failed: %s" % (name, e))
        if expect is not None and len(out) != expect:
            die("%s: got %d bytes, header says %d" % (name, len(out), expect))
        return name, out
    die("unknown compression, magic %s" % data[:6].hex())


def elf_notes(elf):
    """Yield (owner, type) of every note in the PT_NOTE segments of an ELF64."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        die("decompressed payload is not a little-endian ELF64")
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _flags, p_offset, _va, _pa, p_filesz = struct.unpack_from(
            "<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\x00")
            yield name.decode("ascii", "replace"), ntype
            pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)


def main():
    if len(sys.argv) != 3:
        die("usage: extract-vmlinux.py BZIMAGE OUT")
    with open(sys.argv[1], "rb") as f:
        image = f.read()
    name, elf = decompress(payload(image))
    if ("Xen", XEN_ELFNOTE_PHYS32_ENTRY) not in set(elf_notes(elf)):
        die("vmlinux has no PVH note (Xen, XEN_ELFNOTE_PHYS32_ENTRY)")
    tmp = sys.argv[2] + ".tmp"
    with open(tmp, "wb") as f:
        f.write(elf)
    os.replace(tmp, sys.argv[2])
    print("extract-vmlinux: %s payload -> %d byte ELF with PVH note"
          % (name, len(elf)))


if __name__ == "__main__":
    main()
