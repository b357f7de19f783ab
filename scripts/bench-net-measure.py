#!/usr/bin/env python3
"""Collect and summarise the guest's iperf3 figures for bench-net-inner.sh.

bench-boot-measure.py runs each VMM (timeout, output log, wall time, peak
RSS); this script reads what the guest printed.

  bench-net-measure.py record LABEL ROUND BOOT-RESULT LOG RESULTS
      BOOT-RESULT holds the line bench-boot-measure.py wrote for one boot
      ("LABEL init_ms total_ms rss_kb status"), LOG that boot's output with
      the guest's "RVMSPAWN-IPERF3-JSON=JOB {...}" lines (iperf3 -J, one
      line each; scripts/initramfs/guest-init). Appends "LABEL ROUND
      TCP-TX-MBIT TCP-RX-MBIT UDP64-PPS TOTAL-MS RSS-KB STATUS" to RESULTS
      ("-" for a missing figure) and prints it. All three figures are the
      receiver's (iperf3's end.sum_received): Mbit/s are 10^6 bits per
      second, UDP64-PPS datagrams received per second. STATUS is ok, the
      boot's own failure (exit-N, timeout, spawn-failed:...), or
      no-result:JOB / iperf3-failed:JOB.
  bench-net-measure.py summary RESULTS PAIRS LABEL...
      Print per LABEL (in that order) the medians over its ok rounds, then
      for each "A/B" in PAIRS (comma-separated) whose A and B are both
      LABELs the ratios A/B of the medians (higher is better for A, except
      RSS).
"""

import json
import statistics
import sys

JOBS = ("tcp-tx", "tcp-rx", "udp64")
PREFIX = "RVMSPAWN-IPERF3-JSON="
UDP_PAYLOAD = 64


def figure(job, report):
    """The receiver's figure of one iperf3 report: Mbit/s for TCP, datagrams/s for UDP."""
    received = report["end"]["sum_received"]
    seconds = float(received["seconds"])
    if seconds <= 0:
        raise ValueError("no time")
    if job == "udp64":
        return float(received["bytes"]) / UDP_PAYLOAD / seconds
    return float(received["bits_per_second"]) / 1e6


def parse(text):
    """{job: figure or an error string} from the guest's lines."""
    found = {}
    for line in text.splitlines():
        line = line.strip("\r\n ")
        if not line.startswith(PREFIX):
            continue
        job, _, body = line[len(PREFIX):].partition(" ")
        try:
            report = json.loads(body)
        except ValueError:
            found[job] = "bad-json"
            continue
        if report.get("error"):
            found[job] = report["error"]
            continue
        try:
            found[job] = figure(job, report)
        except (KeyError, TypeError, ValueError):
            found[job] = "no-figure"
    return found


def record(label, rnd, boot_result, log, results):
    try:
        with open(boot_result) as f:
            _, _, total_ms, rss_kb, status = f.read().split()[-5:]
    except (OSError, ValueError):
        total_ms, rss_kb, status = "-", "-", "no-boot-result"
    try:
        with open(log, "rb") as f:
            found = parse(f.read().decode("utf-8", "replace"))
    except OSError:
        found = {}
    figures = []
    for job in JOBS:
        r = found.get(job)
        if isinstance(r, float):
            figures.append("%.1f" % r if job != "udp64" else "%.0f" % r)
            continue
        figures.append("-")
        if status == "ok":
            status = ("no-result:%s" if r is None else "iperf3-failed:%s") % job
        if isinstance(r, str):
            print("bench-net: %s round %s %s: %s" % (label, rnd, job, r), flush=True)
    line = " ".join([label, rnd] + figures + [total_ms, rss_kb, status])
    with open(results, "a") as f:
        f.write(line + "\n")
    print(line, flush=True)
    return 0 if status == "ok" else 1


def summary(results, pairs, labels):
    ok = {label: [] for label in labels}
    fails = {label: [] for label in labels}
    with open(results) as f:
        for line in f:
            fields = line.split()
            if len(fields) != 8 or fields[0] not in ok:
                continue
            label, _, tx, rx, udp, total_ms, rss_kb, status = fields
            if status == "ok":
                ok[label].append((float(tx), float(rx), float(udp), float(total_ms) / 1000,
                                  int(rss_kb) / 1024 if rss_kb != "-" else None))
            else:
                fails[label].append(status)
    med = {}
    print("%-16s %12s %12s %12s %8s %9s %7s" % (
        "VMM", "TCP g->h", "TCP h->g", "UDP64", "total s", "RSS MiB", "rounds"))
    print("%-16s %12s %12s %12s" % ("", "Mbit/s", "Mbit/s", "pkts/s"))
    for label in labels:
        rows = ok[label]
        if not rows:
            why = ",".join(sorted(set(fails[label]))) or "not run"
            print("%-16s %12s %12s %12s %8s %9s %7d   (%s)" % (
                label, "FAILED", "FAILED", "FAILED", "-", "-", 0, why))
            continue
        rss = [r[4] for r in rows if r[4] is not None]
        med[label] = tuple(statistics.median(r[i] for r in rows) for i in range(4)) + (
            statistics.median(rss) if rss else None,)
        m = med[label]
        extra = "   (%d failed: %s)" % (len(fails[label]), ",".join(
            sorted(set(fails[label])))) if fails[label] else ""
        print("%-16s %12.1f %12.1f %12.0f %8.1f %9s %7d%s" % (
            label, m[0], m[1], m[2], m[3], "%.1f" % m[4] if m[4] else "-", len(rows), extra))
    print()
    print("ratios of the medians (throughput: above 1 is faster; RSS: below 1 is smaller)")
    for pair in pairs:
        a, _, b = pair.partition("/")
        name = "%s/%s" % (a, b)
        if a not in labels or b not in labels:
            continue
        if a not in med or b not in med:
            print("%-34s n/a (a VMM failed or did not run)" % name)
            continue
        x, y = med[a], med[b]

        def r(i):
            return "%.2f" % (x[i] / y[i]) if y[i] else "-"
        rss = "%.2f" % (x[4] / y[4]) if x[4] and y[4] else "-"
        print("%-34s TCP g->h %s  TCP h->g %s  UDP64 %s  RSS %s" % (name, r(0), r(1), r(2), rss))


def main():
    args = sys.argv[1:]
    if len(args) == 6 and args[0] == "record":
        sys.exit(record(*args[1:]))
    if len(args) >= 4 and args[0] == "summary":
        summary(args[1], [p for p in args[2].split(",") if p], args[3:])
        return
    sys.stderr.write(__doc__)
    sys.exit(2)


if __name__ == "__main__":
    main()
