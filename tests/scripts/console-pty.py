#!/usr/bin/env python3
"""Drive rvmspawn on a pseudo-terminal, as a user at a terminal would (tests/tests/console.rs).

Usage: console-pty.py SCENARIO RVMSPAWN-ARGV...

rvmspawn runs as the session leader of a new pty of 100x30 (columns x rows), so the pty is its
controlling terminal and a resize sends it SIGWINCH. Every step waits for a line the guest
prints (guest-init's RVMSPAWN-* lines), never for a time. Output: the guest's lines as they
came (\\r removed), then HOST-* lines with what this side did, and HOST-RC=N (rvmspawn's exit
status) or HOST-RC=timeout.

Scenarios:
  interactive  guest with rvmspawn.read=500 rvmspawn.resize=1: types 500 bytes (printable,
               in pieces), prints HOST-TYPED-MD5; when the guest waits for a resize, sets
               120x40; then Ctrl-] three times.
  native       guest with rvmspawn.read=3: types Ctrl-a a, Ctrl-] and 'z'; then Ctrl-a x.
"""
import fcntl
import hashlib
import os
import pty
import select
import struct
import sys
import termios
import time

scenario, argv = sys.argv[1], sys.argv[2:]
LIMIT = 240  # seconds for the whole run: a hung step ends as HOST-RC=timeout


def set_size(fd, cols, rows):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


pid, fd = pty.fork()
if pid == 0:
    os.execvp(argv[0], argv)
set_size(fd, 100, 30)
deadline = time.monotonic() + LIMIT
seen = b""


def pump(timeout=1.0):
    """Read what is there; False at EOF."""
    global seen
    r, _, _ = select.select([fd], [], [], timeout)
    if not r:
        return True
    try:
        data = os.read(fd, 65536)
    except OSError:
        return False
    if not data:
        return False
    seen += data
    return True


def wait_for(marker):
    """Wait until the guest has printed `marker` and the rest of its line."""
    m = marker.encode()
    while True:
        at = seen.find(m)
        if at >= 0 and seen.find(b"\n", at) >= 0:
            return True
        if time.monotonic() > deadline or not pump():
            return False


def finish():
    rc = "timeout"
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            rc = str(os.waitstatus_to_exitcode(status))
            break
        pump(0.2)
    while pump(0.1):
        if not select.select([fd], [], [], 0)[0]:
            break
    sys.stdout.write(seen.decode(errors="replace").replace("\r", ""))
    if not seen.endswith(b"\n"):
        print()
    for line in host:
        print(line)
    print(f"HOST-RC={rc}")
    if rc == "timeout":
        os.kill(pid, 9)
    sys.exit(0)


host = []
if scenario == "interactive":
    typed = bytes(0x21 + (i * 7) % 94 for i in range(500))
    if wait_for("RVMSPAWN-READ-READY"):
        for i in range(0, len(typed), 37):
            os.write(fd, typed[i:i + 37])
        host.append("HOST-TYPED-MD5=" + hashlib.md5(typed).hexdigest())
    if wait_for("RVMSPAWN-RESIZE-READY"):
        set_size(fd, 120, 40)
        host.append("HOST-RESIZED=40 120")
    if wait_for("RVMSPAWN-RESIZE="):
        os.write(fd, b"\x1d\x1d\x1d")
elif scenario == "native":
    if wait_for("RVMSPAWN-READ-READY"):
        os.write(fd, b"\x01a\x1dz")
    if wait_for("RVMSPAWN-READ-MD5="):
        os.write(fd, b"\x01x")
else:
    sys.exit(f"unknown scenario {scenario}")
finish()
