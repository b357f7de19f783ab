#!/usr/bin/env python3
"""ssh's ProxyCommand to a guest port through rvmspawn's userspace vsock device.

Usage: vsock-mux-proxy.py SOCKET PORT

Connects to the device's Unix socket SOCKET, asks for guest port PORT with the device's
"CONNECT PORT" line, waits for its "OK ..." answer, then relays stdin to the connection and the
connection to stdout: what systemd-ssh-proxy does for `ssh root@vsock-mux/SOCKET`, which the
test host (Debian 12, systemd 252) does not have.
"""
import os
import selectors
import socket
import sys


def main() -> int:
    path, port = sys.argv[1], int(sys.argv[2])
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(f"CONNECT {port}\n".encode())
    line = b""
    while not line.endswith(b"\n"):
        b = s.recv(1)
        if not b:
            print("vsock-mux-proxy: closed before OK", file=sys.stderr)
            return 1
        line += b
    if not line.startswith(b"OK "):
        print(f"vsock-mux-proxy: refused: {line!r}", file=sys.stderr)
        return 1
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ, "stdin")
    sel.register(s, selectors.EVENT_READ, "sock")
    open_ends = 2
    while open_ends:
        for key, _ in sel.select():
            if key.data == "stdin":
                data = os.read(0, 65536)
                if not data:
                    sel.unregister(0)
                    s.shutdown(socket.SHUT_WR)
                    open_ends -= 1
                else:
                    s.sendall(data)
            else:
                data = s.recv(65536)
                if not data:
                    sel.unregister(s)
                    open_ends -= 1
                    return 0
                while data:
                    data = data[os.write(1, data):]
    return 0


if __name__ == "__main__":
    sys.exit(main())
