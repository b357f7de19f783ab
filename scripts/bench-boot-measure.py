#!/usr/bin/env python3
"""Measure VMM boots for bench-boot-inner.sh, and summarise them.

  bench-boot-measure.py run LABEL RESULTS LOG -- COMMAND...
      Start COMMAND (a VMM booting the guest test initramfs), read its stdout
      line by line and note, on the monotonic clock from just before the
      spawn, when RVMSPAWN-GUEST-INIT appears and when the process exits.
      Peak RSS comes from GNU time (/usr/bin/time -f %M), which runs the VMM
      as its only child. Appends "LABEL init_ms total_ms rss_kb status" to
      RESULTS and the VMM's output to LOG. A boot that does not end within
      RVMSPAWN_BENCH_BOOT_TIMEOUT seconds (default 120) is killed.
      RVMSPAWN_BENCH_MARKER replaces RVMSPAWN-GUEST-INIT as the line looked
      for; with RVMSPAWN_BENCH_STOP_AT_MARKER=1 the VMM (GNU time's child) gets
      SIGTERM as soon as the marker appears, for a guest that does not power
      itself off (its "total" is then the time to the end of that stop).
      rvmspawn at debug level (SYSTEMD_LOG_LEVEL=debug) prints "Phase: WHAT at
      SECONDS" lines on the same CLOCK_MONOTONIC as time.monotonic(); those
      phases, the guest's first output line, /init and the exit are appended
      to RESULTS.phases as "LABEL PHASE=MS...".
  bench-boot-measure.py summary RESULTS LABEL...
      Print medians per LABEL (in that order) and the ratios of the first
      LABEL to each of the others.
"""

import os
import re
import selectors
import signal
import statistics
import subprocess
import sys
import tempfile
import time

INIT_LINE = os.environ.get("RVMSPAWN_BENCH_MARKER", "RVMSPAWN-GUEST-INIT").encode()
STOP_AT_MARKER = os.environ.get("RVMSPAWN_BENCH_STOP_AT_MARKER") == "1"
PHASE = re.compile(rb"^Phase: (.*) at (\d+\.\d+)\r?$")
# rvmspawn's own lines at debug level that can follow the guest's first entry (its other
# lines come before it, and the guest's first line is looked for only after it).
OWN_LINE = re.compile(rb"^(Phase: |Guest |Machine |rvmspawn: )")
# The phases shown, in order, as (name in the Phase line or a pseudo-phase, column title).
PHASES = [("start", "start"), ("kernel loaded", "kernel"), ("first guest entry", "guest-entry"),
          ("first output", "first-line"), ("init", "/init"),
          ("guest stopped", "guest-stop"), ("exit", "exit")]


def stop_vmm(time_pid):
    """SIGTERM to the VMM, the only child of GNU time (which stays to report the peak RSS)."""
    try:
        with open("/proc/%d/task/%d/children" % (time_pid, time_pid)) as f:
            children = [int(c) for c in f.read().split()]
    except (OSError, ValueError):
        children = []
    if not children:  # no /proc children file: the whole group, peak RSS lost
        children = [-os.getpgid(time_pid)]
    for child in children:
        try:
            os.kill(child, signal.SIGTERM)
        except OSError:
            pass


def run(label, results, log, cmd):
    timeout = float(os.environ.get("RVMSPAWN_BENCH_BOOT_TIMEOUT", "120"))
    fd, rss_file = tempfile.mkstemp(prefix="bench-rss-")
    os.close(fd)
    argv = ["/usr/bin/time", "-f", "%M", "-o", rss_file] + cmd
    t_init = None
    status = "ok"
    out = bytearray()
    phases = {}
    lines_pending = b""
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT,
                                start_new_session=True)
    except OSError as e:
        status = "spawn-failed:%s" % e.strerror.replace(" ", "-")
        proc = None
    if proc is not None:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        pending = b""
        deadline = t0 + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                status = "timeout"
                os.killpg(proc.pid, signal.SIGKILL)
                break
            if not sel.select(left):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            now = time.monotonic()
            out += chunk
            lines_pending += chunk
            *complete, lines_pending = lines_pending.split(b"\n")
            for line in complete:
                m = PHASE.match(line)
                if m:
                    phases.setdefault(m.group(1).decode(), float(m.group(2)) - t0)
                elif ("first guest entry" in phases and line.strip()
                      and not OWN_LINE.match(line)):
                    phases.setdefault("first output", now - t0)
            if t_init is None:
                pending += chunk
                if INIT_LINE in pending:
                    t_init = now
                    if STOP_AT_MARKER:
                        stop_vmm(proc.pid)
                pending = pending[-len(INIT_LINE):]
        try:
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:  # closed stdout but kept running
            status = "timeout"
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        t_exit = time.monotonic()
        if status == "ok" and rc != 0:
            status = "exit-%d" % rc
    if status == "ok" and t_init is None:
        status = "no-init-line"
    try:
        with open(rss_file) as f:
            rss = f.read().strip().splitlines()[-1]
            int(rss)
    except (OSError, IndexError, ValueError):
        rss = "-"
    os.unlink(rss_file)
    init_ms = "%.1f" % ((t_init - t0) * 1000) if t_init is not None else "-"
    total_ms = "%.1f" % ((t_exit - t0) * 1000) if proc is not None else "-"
    line = "%s %s %s %s %s" % (label, init_ms, total_ms, rss, status)
    with open(results, "a") as f:
        f.write(line + "\n")
    if status == "ok" and "start" in phases:
        phases["init"] = t_init - t0
        phases["exit"] = t_exit - t0
        with open(results + ".phases", "a") as f:
            f.write("%s %s\n" % (label, " ".join(
                "%s=%.1f" % (name.replace(" ", "_"), phases[name] * 1000)
                for name, _ in PHASES if name in phases)))
    with open(log, "ab") as f:
        f.write(b"==== %s: %s\n" % (label.encode(), line.encode()))
        f.write(out)
    print(line, flush=True)
    return 0 if status == "ok" else 1


def summary(results, labels):
    rows = {label: [] for label in labels}
    fails = {label: [] for label in labels}
    with open(results) as f:
        for line in f:
            label, init_ms, total_ms, rss, status = line.split()
            if label not in rows:
                continue
            if status == "ok":
                rows[label].append((float(init_ms), float(total_ms),
                                    int(rss) / 1024 if rss != "-" else None))
            else:
                fails[label].append(status)
    med = {}
    print("%-14s %14s %12s %15s %6s" % ("VMM", "to-init ms", "total ms",
                                          "peak RSS MiB", "boots"))
    for label in labels:
        ok = rows[label]
        if not ok:
            why = ",".join(sorted(set(fails[label]))) or "not run"
            print("%-14s %14s %12s %15s %6s   (%s)" % (label, "FAILED", "FAILED",
                                                     "FAILED", 0, why))
            continue
        rss = [r[2] for r in ok if r[2] is not None]
        med[label] = (statistics.median(r[0] for r in ok),
                      statistics.median(r[1] for r in ok),
                      statistics.median(rss) if rss else None)
        m = med[label]
        extra = "   (%d failed)" % len(fails[label]) if fails[label] else ""
        print("%-14s %14.0f %12.0f %15s %6d%s" % (
            label, m[0], m[1], "%.1f" % m[2] if m[2] is not None else "-",
            len(ok), extra))
    for ours in [l for l in labels if l.startswith("rvmspawn")]:
        for other in [l for l in labels if not l.startswith("rvmspawn")]:
            name = "%s/%s" % (ours, other)
            if ours in med and other in med:
                a, b = med[ours], med[other]
                rss = "%.2f" % (a[2] / b[2]) if a[2] and b[2] else "-"
                print("%-28s to-init %.2f  total %.2f  RSS %s" % (
                    name, a[0] / b[0], a[1] / b[1], rss))
            else:
                print("%-28s n/a (a VMM failed)" % name)


def phase_summary(results, labels):
    """Medians of each phase (ms from the spawn) per label that has them."""
    try:
        with open(results + ".phases") as f:
            lines = f.read().splitlines()
    except OSError:
        return
    rows = {}
    for line in lines:
        label, *fields = line.split()
        for field in fields:
            name, ms = field.split("=")
            rows.setdefault(label, {}).setdefault(name.replace("_", " "), []).append(float(ms))
    if not rows:
        return
    print()
    print("rvmspawn's phases, median ms from the start of the process (VMM start-up is the")
    print("time to 'start' and 'guest-entry', 'kernel' when the kernel and initrd are in guest RAM;")
    print("the guest's own boot runs from 'guest-entry' to")
    print("'/init'; 'first-line' is the guest's first console line, /init's with 'quiet'):")
    print("%-18s" % "" + "".join("%12s" % title for _, title in PHASES))
    for label in labels:
        if label not in rows:
            continue
        print("%-18s" % label + "".join(
            "%12.0f" % statistics.median(rows[label][name]) if name in rows[label] else "%12s" % "-"
            for name, _ in PHASES))


def main():
    args = sys.argv[1:]
    if len(args) >= 5 and args[0] == "run" and args[4] == "--":
        sys.exit(run(args[1], args[2], args[3], args[5:]))
    if len(args) >= 3 and args[0] == "summary":
        summary(args[1], args[2:])
        phase_summary(args[1], args[2:])
        return
    sys.stderr.write(__doc__)
    sys.exit(2)


if __name__ == "__main__":
    main()
