#!/usr/bin/env python3
"""Collect and summarise the guest's fio figures for bench-blk-inner.sh.

bench-boot-measure.py runs each VMM (timeout, output log, wall time, peak
RSS); this script reads what the guest printed.

  bench-blk-measure.py record LABEL ROUND BOOT-RESULT LOG RESULTS
      BOOT-RESULT holds the line bench-boot-measure.py wrote for one boot
      ("LABEL init_ms total_ms rss_kb status"), LOG that boot's output with
      the guest's "RVMSPAWN-FIO=JOB ERROR READ-IOPS READ-KIB/S WRITE-IOPS
      WRITE-KIB/S" lines (scripts/initramfs/guest-init). Appends
      "LABEL ROUND RANDREAD-IOPS RANDREAD-KIB/S SEQWRITE-IOPS SEQWRITE-KIB/S
      TOTAL-MS RSS-KB STATUS" to RESULTS ("-" for a missing figure) and
      prints it. STATUS is ok, the boot's own failure (exit-N, timeout,
      spawn-failed:...), fio-failed:JOB or no-result:JOB.
  bench-blk-measure.py summary RESULTS LABEL...
      Print per LABEL (in that order) the medians over its ok rounds of
      randread IOPS, seqwrite MB/s (10^6 bytes), total time and peak RSS,
      and the ratios of each rvmspawn* LABEL to the others.
"""

import statistics
import sys

JOBS = ("randread", "seqwrite")


def parse_fio(text):
    """{job: (error, read_iops, read_kib, write_iops, write_kib)} from the guest's lines."""
    found = {}
    for line in text.splitlines():
        line = line.strip("\r\n ")
        if not line.startswith("RVMSPAWN-FIO="):
            continue
        fields = line[len("RVMSPAWN-FIO="):].split()
        if len(fields) != 6:
            continue
        try:
            found[fields[0]] = (fields[1], *(float(n) for n in fields[2:]))
        except ValueError:
            continue
    return found


def record(label, rnd, boot_result, log, results):
    try:
        with open(boot_result) as f:
            _, _, total_ms, rss_kb, status = f.read().split()[-5:]
    except (OSError, ValueError):
        total_ms, rss_kb, status = "-", "-", "no-boot-result"
    try:
        with open(log, "rb") as f:
            fio = parse_fio(f.read().decode("utf-8", "replace"))
    except OSError:
        fio = {}
    figures = []
    for job in JOBS:
        r = fio.get(job)
        if r is None or r[0] != "0":
            if status == "ok":
                status = ("no-result:%s" if r is None else "fio-failed:%s") % job
            figures += ["-", "-"]
        elif job == "randread":
            figures += ["%.0f" % r[1], "%.0f" % r[2]]
        else:
            figures += ["%.0f" % r[3], "%.0f" % r[4]]
    line = " ".join([label, rnd] + figures + [total_ms, rss_kb, status])
    with open(results, "a") as f:
        f.write(line + "\n")
    print(line, flush=True)
    return 0 if status == "ok" else 1


def summary(results, labels):
    ok = {label: [] for label in labels}
    fails = {label: [] for label in labels}
    with open(results) as f:
        for line in f:
            fields = line.split()
            if len(fields) != 9 or fields[0] not in ok:
                continue
            label, _, rr_iops, _, _, sw_kib, total_ms, rss_kb, status = fields
            if status == "ok":
                ok[label].append((float(rr_iops), float(sw_kib) * 1024 / 1e6,
                                  float(total_ms) / 1000,
                                  int(rss_kb) / 1024 if rss_kb != "-" else None))
            else:
                fails[label].append(status)
    med = {}
    print("%-16s %14s %14s %8s %10s %7s" % ("VMM", "randread IOPS", "seqwrite MB/s",
                                             "total s", "RSS MiB", "rounds"))
    for label in labels:
        rows = ok[label]
        if not rows:
            why = ",".join(sorted(set(fails[label]))) or "not run"
            print("%-16s %14s %14s %8s %10s %7d   (%s)" % (
                label, "FAILED", "FAILED", "-", "-", 0, why))
            continue
        rss = [r[3] for r in rows if r[3] is not None]
        med[label] = (statistics.median(r[0] for r in rows),
                      statistics.median(r[1] for r in rows),
                      statistics.median(r[2] for r in rows),
                      statistics.median(rss) if rss else None)
        m = med[label]
        extra = "   (%d failed: %s)" % (len(fails[label]), ",".join(
            sorted(set(fails[label])))) if fails[label] else ""
        print("%-16s %14.0f %14.1f %8.1f %10s %7d%s" % (
            label, m[0], m[1], m[2], "%.1f" % m[3] if m[3] else "-", len(rows), extra))

    def ratio(a, b):
        x, y = med[a], med[b]
        rss = "%.2f" % (x[3] / y[3]) if x[3] and y[3] else "-"
        print("%-32s randread IOPS %.2f  seqwrite MB/s %.2f  RSS %s" % (
            "%s/%s" % (a, b), x[0] / y[0], x[1] / y[1], rss))

    ours = [l for l in labels if l.startswith("rvmspawn")]
    others = [l for l in labels if not l.startswith("rvmspawn")]
    for a in ours:
        for b in others:
            if a in med and b in med:
                ratio(a, b)
            else:
                print("%-32s n/a (a VMM failed)" % ("%s/%s" % (a, b)))
    # For reference: the two QEMU configurations against each other.
    if len(others) == 2 and all(b in med for b in others):
        ratio(*others)


def main():
    args = sys.argv[1:]
    if len(args) == 6 and args[0] == "record":
        sys.exit(record(*args[1:]))
    if len(args) >= 3 and args[0] == "summary":
        summary(args[1], args[2:])
        return
    sys.stderr.write(__doc__)
    sys.exit(2)


if __name__ == "__main__":
    main()
