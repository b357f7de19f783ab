#!/usr/bin/env python3
"""The start cost of an ephemeral run (-x) on a 4 GiB image (benchmark, not a test).

Usage: scripts/bench-ephemeral.py [RUNS] [SIZE_GIB]   (default 9 runs, 4 GiB)

On this machine's own /dev/kvm, with bench-tiny's tiny PVH guest (it prints a line and powers
off at once), so what is measured is rvmspawn's start and end around the disk: the image is a
fully written raw file of SIZE_GIB in /var/tmp (on disk, not tmpfs). Three ways, interleaved,
each from spawn to exit:
  normal     rvmspawn -i IMAGE
  ephemeral  rvmspawn -x -i IMAGE          (rvmspawn's copy-on-write overlay)
  copy       cp --reflink=auto IMAGE COPY && rvmspawn -i COPY && rm COPY
             (a snapshot by copying, as vmspawn's -x does for a directory, where the file
             system cannot reflink: what the overlay saves)
Prints the medians and the ratios to the normal run. Environment: RVMSPAWN_BIN (default
target/release/rvmspawn), BENCH_DIR (default /var/tmp).
"""
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def tiny():
    spec = importlib.util.spec_from_file_location(
        "bench_tiny", os.path.join(HERE, "bench-tiny-measure.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.pvh_elf(mod.guest_code()), mod.HELLO


def run(cmd, hello):
    t0 = time.monotonic()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=600, check=False)
    t1 = time.monotonic()
    if p.returncode != 0 or hello not in p.stdout:
        sys.exit(f"bench-ephemeral: {cmd} failed ({p.returncode}): "
                 f"{p.stderr.decode(errors='replace')}")
    return t1 - t0


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 9
    gib = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    rvmspawn = os.environ.get("RVMSPAWN_BIN", "target/release/rvmspawn")
    base = os.environ.get("BENCH_DIR", "/var/tmp")
    work = os.path.join(base, f"rvmspawn-bench-ephemeral-{os.getpid()}")
    os.makedirs(work)
    try:
        elf, hello = tiny()
        guest = os.path.join(work, "tiny.elf")
        with open(guest, "wb") as f:
            f.write(elf)
        image = os.path.join(work, "image.raw")
        chunk = bytes((i * 131 + 7) % 251 for i in range(1 << 20))
        with open(image, "wb") as f:
            for _ in range(gib << 10):
                f.write(chunk)
            os.fsync(f.fileno())
        common = [rvmspawn, "-q", "--tpm=no", "--qemu-vsock=no", "--qemu-mem=64M",
                  f"--linux={guest}"]
        copy = os.path.join(work, "copy.raw")
        ways = {
            "normal": lambda: run(common + ["-i", image, "root=/dev/vda"], hello),
            "ephemeral": lambda: run(common + ["-x", "-i", image, "root=/dev/vda"], hello),
            "copy": lambda: (
                lambda t0: (
                    subprocess.run(["cp", "--reflink=auto", image, copy], check=True),
                    run(common + ["-i", copy, "root=/dev/vda"], hello),
                    os.unlink(copy),
                    time.monotonic() - t0,
                )[-1]
            )(time.monotonic()),
        }
        times = {k: [] for k in ways}
        for k in ways:  # warm-up
            ways[k]()
        labels = list(ways)
        for i in range(runs):
            for k in labels[i % 3:] + labels[:i % 3]:
                times[k].append(ways[k]())
        normal = statistics.median(times["normal"])
        print(f"{gib} GiB image, {runs} runs each, medians (spawn to exit):")
        for k in labels:
            m = statistics.median(times[k])
            print(f"  {k:10} {m * 1000:9.1f} ms   {m / normal:6.2f}x normal")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
