#!/usr/bin/env python3
"""A scripted iBGP L2VPN EVPN speaker for scripts/lib/bench-evpn.sh.

Connects from LOCAL to a route reflector at RR (AS 65000), keeps the session up, and:
- logs every type-2 route it is sent, with a monotonic timestamp:
    "<t> reach <mac> <next hop>" / "<t> withdraw <mac>"
- on a line "advertise N" on stdin, advertises N type-2 MAC routes behind LOCAL (VNI 5001,
  RT 65000:5001), packed into UPDATEs of at most 4096 bytes, and logs "<t> sent N";
- on "withdraw N", withdraws them ("<t> withdrawn N").
Lines go to stdout, flushed. Usage: bgp-peer.py LOCAL RR
"""
import select
import socket
import struct
import sys
import time

LOCAL, RR = sys.argv[1], sys.argv[2]
ASN, VNI = 65000, 5001


def msg(t, body):
    return b"\xff" * 16 + struct.pack("!HB", 19 + len(body), t) + body


def out(line):
    sys.stdout.write(f"{time.monotonic():.6f} {line}\n")
    sys.stdout.flush()


def rd():
    return struct.pack("!H", 1) + socket.inet_aton(LOCAL) + struct.pack("!H", 1)


def mac_of(i):
    return bytes([0x02, 0xbe, 0x00, (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF])


def nlri(i):
    v = rd() + b"\x00" * 10 + struct.pack("!I", 0) + bytes([48]) + mac_of(i) + bytes([0]) + struct.pack("!I", VNI)[1:]
    return bytes([2, len(v)]) + v


def attr(flags, t, v):
    if len(v) > 255:
        return bytes([flags | 0x10, t]) + struct.pack("!H", len(v)) + v
    return bytes([flags, t, len(v)]) + v


def reach(routes):
    mp = struct.pack("!HBB", 25, 70, 4) + socket.inet_aton(LOCAL) + b"\x00" + b"".join(routes)
    ext = struct.pack("!BBHI", 0, 2, ASN, VNI) + bytes([0x03, 0x0C, 0, 0, 0, 0, 0, 8])
    attrs = attr(0x40, 1, b"\x00") + attr(0x40, 2, b"") + attr(0x40, 5, struct.pack("!I", 100)) + attr(0x80, 14, mp) + attr(0xC0, 16, ext)
    return msg(2, struct.pack("!HH", 0, len(attrs)) + attrs)


def unreach(routes):
    mp = struct.pack("!HB", 25, 70) + b"".join(routes)
    attrs = attr(0x80, 15, mp)
    return msg(2, struct.pack("!HH", 0, len(attrs)) + attrs)


def packed(make, n, overhead):
    msgs, batch, size = [], [], overhead
    for i in range(n):
        r = nlri(i)
        if size + len(r) > 4096:
            msgs.append(make(batch))
            batch, size = [], overhead
        batch.append(r)
        size += len(r)
    if batch:
        msgs.append(make(batch))
    return msgs


def parse_routes(b):
    """(type, mac or None) of each EVPN route in an NLRI field."""
    res = []
    while len(b) >= 2:
        t, n = b[0], b[1]
        v = b[2 : 2 + n]
        b = b[2 + n :]
        if t == 2 and len(v) >= 29:
            res.append(v[23:29].hex(":"))
    return res


def handle_update(body):
    wlen = struct.unpack("!H", body[:2])[0]
    alen = struct.unpack("!H", body[2 + wlen : 4 + wlen])[0]
    a = body[4 + wlen : 4 + wlen + alen]
    while len(a) >= 3:
        flags, t = a[0], a[1]
        if flags & 0x10:
            n, h = struct.unpack("!H", a[2:4])[0], 4
        else:
            n, h = a[2], 3
        v = a[h : h + n]
        a = a[h + n :]
        if t == 14 and struct.unpack("!HB", v[:3]) == (25, 70):
            nhl = v[3]
            nh = socket.inet_ntoa(v[4:8]) if nhl == 4 else "?"
            for m in parse_routes(v[4 + nhl + 1 :]):
                out(f"reach {m} {nh}")
        elif t == 15 and struct.unpack("!HB", v[:3]) == (25, 70):
            for m in parse_routes(v[3:]):
                out(f"withdraw {m}")


def main():
    s = socket.socket()
    s.bind((LOCAL, 0))
    s.connect((RR, 179))
    caps = bytes.fromhex("0206010400190046") + bytes.fromhex("02020200") + bytes.fromhex("02064104") + struct.pack("!I", ASN)
    s.sendall(msg(1, bytes([4]) + struct.pack("!HH", ASN, 90) + socket.inet_aton(LOCAL) + bytes([len(caps)]) + caps))
    s.sendall(msg(4, b""))
    buf = b""
    last_ka = time.monotonic()
    established = False
    while True:
        r, _, _ = select.select([s, sys.stdin], [], [], 1.0)
        if time.monotonic() - last_ka > 2:
            s.sendall(msg(4, b""))
            last_ka = time.monotonic()
        if sys.stdin in r:
            line = sys.stdin.readline()
            if not line:
                return
            cmd = line.split()
            if cmd and cmd[0] == "advertise":
                n = int(cmd[1])
                ms = packed(reach, n, 80)
                s.sendall(b"".join(ms))
                out(f"sent {n} in {len(ms)}")
            elif cmd and cmd[0] == "withdraw":
                n = int(cmd[1])
                s.sendall(b"".join(packed(unreach, n, 30)))
                out(f"withdrawn {n}")
        if s in r:
            d = s.recv(1 << 20)
            if not d:
                out("closed")
                return
            buf += d
            while len(buf) >= 19:
                n = struct.unpack("!H", buf[16:18])[0]
                if len(buf) < n:
                    break
                m, buf = buf[:n], buf[n:]
                if m[18] == 4 and not established:
                    established = True
                    out("established")
                elif m[18] == 2:
                    handle_update(m[19:])
                elif m[18] == 3:
                    out(f"notification {m[19]} {m[20]}")
                    return


main()
