#!/usr/bin/python3
"""X11 helpers for the graphical console's tests (run under Xvfb in the test host).

  x11.py wait-window TITLE SECS       print the id of the top-level window named TITLE
                                      once it is mapped (exit 1 if none within SECS)
  x11.py size WID                     print WIDTHxHEIGHT of the window
  x11.py xwd-pixels FILE X,Y...       print RRGGBB of each pixel of an xwd screenshot
  x11.py wait-content WID SECS       wait until the window shows a pixel that is not black;
                                      print HOST-CONTENT-PIXELS=N (0: none within SECS) and
                                      HOST-CONTENT-SIZE=WxH
  x11.py close WID                    ask the window to close (WM_DELETE_WINDOW), as a
                                      window manager's close button does
  x11.py latency WID X,Y LOG          for each RVMSPAWN-FB-FRAME=i,RRGGBB line appended to
                                      LOG, the milliseconds until pixel X,Y of the window
                                      shows that colour (HOST-FRAME-LATENCY-MS=i,ms); ends
                                      10 s after the last frame

python3-xlib speaks the X protocol itself: no toolkit, nothing else to install.
"""

import struct
import sys
import time

from Xlib import X, Xatom, display


def find(d, title):
    def walk(w):
        try:
            name = w.get_wm_name()
            attrs = w.get_attributes()
        except Exception:
            return None
        if name == title and attrs.map_state == X.IsViewable:
            return w
        try:
            children = w.query_tree().children
        except Exception:
            return None
        for c in children:
            found = walk(c)
            if found is not None:
                return found
        return None

    return walk(d.screen().root)


def wait_window(title, secs):
    d = display.Display()
    end = time.monotonic() + float(secs)
    while time.monotonic() < end:
        w = find(d, title)
        if w is not None:
            print(w.id)
            return 0
        time.sleep(0.05)
    return 1


def size(wid):
    d = display.Display()
    g = d.create_resource_object("window", int(wid)).get_geometry()
    print("%dx%d" % (g.width, g.height))
    return 0


def xwd_pixels(path, points):
    data = open(path, "rb").read()
    h = struct.unpack(">25I", data[:100])
    header_size, width, height = h[0], h[4], h[5]
    byte_order, bpp, bpl, ncolors = h[7], h[11], h[12], h[19]
    if bpp != 32:
        print("HOST-XWD-ERROR=bits per pixel %d" % bpp)
        return 1
    pixels = header_size + 12 * ncolors
    fmt = "<I" if byte_order == 0 else ">I"
    out = []
    for p in points:
        x, y = (int(v) for v in p.split(","))
        if x >= width or y >= height:
            out.append("outside")
            continue
        (v,) = struct.unpack_from(fmt, data, pixels + y * bpl + 4 * x)
        out.append("%06x" % (v & 0xFFFFFF))
    print(" ".join(out))
    return 0


def wait_content(wid, secs):
    d = display.Display()
    w = d.create_resource_object("window", int(wid))
    end = time.monotonic() + float(secs)
    lit, size = 0, "0x0"
    while time.monotonic() < end:
        g = w.get_geometry()
        size = "%dx%d" % (g.width, g.height)
        img = w.get_image(0, 0, g.width, g.height, X.ZPixmap, 0xFFFFFFFF)
        data = img.data
        # 32 bits a pixel: any colour byte that is not 0.
        lit = sum(1 for i in range(0, len(data), 4) if data[i] or data[i + 1] or data[i + 2])
        if lit:
            break
        time.sleep(0.5)
    print("HOST-CONTENT-PIXELS=%d" % lit)
    print("HOST-CONTENT-SIZE=%s" % size)
    return 0


def close(wid):
    d = display.Display()
    w = d.create_resource_object("window", int(wid))
    protocols = d.intern_atom("WM_PROTOCOLS")
    delete = d.intern_atom("WM_DELETE_WINDOW")
    from Xlib.protocol import event

    ev = event.ClientMessage(
        window=w, client_type=protocols, data=(32, [delete, X.CurrentTime, 0, 0, 0])
    )
    w.send_event(ev, event_mask=X.NoEventMask)
    d.flush()
    return 0


def pixel(w, x, y):
    img = w.get_image(x, y, 1, 1, X.ZPixmap, 0xFFFFFFFF)
    b = img.data
    return b[2] << 16 | b[1] << 8 | b[0]


def latency(wid, point, log):
    try:
        return _latency(wid, point, log)
    except Exception as e:  # the window went away: report what was measured
        print("HOST-LATENCY-ENDED=%s" % type(e).__name__)
        return 1


def _latency(wid, point, log):
    d = display.Display()
    w = d.create_resource_object("window", int(wid))
    x, y = (int(v) for v in point.split(","))
    seen = 0
    f = open(log, "rb")
    pending = b""
    done = False
    last = time.monotonic()
    deadline = time.monotonic() + 300
    while not done and time.monotonic() < deadline:
        chunk = f.read()
        if not chunk:
            # The guest's frames come 1.5 s apart: 10 s without one is the end.
            if seen and time.monotonic() - last > 10:
                break
            time.sleep(0.0005)
            continue
        pending += chunk
        *lines, pending = pending.split(b"\n")
        frames = [l.strip() for l in lines if l.strip().startswith(b"RVMSPAWN-FB-FRAME=")]
        done = any(l.strip().startswith(b"RVMSPAWN-FB-FRAMES-DONE") for l in lines)
        if not frames:
            continue
        # Only the newest line is timed: an older one read late would start its clock late.
        for old in frames[:-1]:
            print("HOST-FRAME-LATENCY-MS=%s,skipped" % old.split(b"=", 1)[1].split(b",")[0].decode())
        t0 = last = time.monotonic()
        i, colour = frames[-1].split(b"=", 1)[1].split(b",")
        want = int(colour, 16)
        while pixel(w, x, y) != want:
            # One poll a millisecond: the test host has one CPU to share with the VM.
            time.sleep(0.001)
            if time.monotonic() - t0 > 3:
                print("HOST-FRAME-LATENCY-MS=%s,timeout" % i.decode())
                break
        else:
            ms = (time.monotonic() - t0) * 1000
            print("HOST-FRAME-LATENCY-MS=%s,%.1f" % (i.decode(), ms))
        seen += 1
        sys.stdout.flush()
    print("HOST-FRAMES-MEASURED=%d" % seen)
    return 0


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "wait-window" and len(argv) == 4:
        return wait_window(argv[2], argv[3])
    if cmd == "size" and len(argv) == 3:
        return size(argv[2])
    if cmd == "xwd-pixels" and len(argv) >= 4:
        return xwd_pixels(argv[2], argv[3:])
    if cmd == "wait-content" and len(argv) == 4:
        return wait_content(argv[2], argv[3])
    if cmd == "close" and len(argv) == 3:
        return close(argv[2])
    if cmd == "latency" and len(argv) == 5:
        return latency(argv[2], argv[3], argv[4])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
