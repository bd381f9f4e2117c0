#!/usr/bin/env python3
"""DHCP load generator: N clients (distinct MACs) do DISCOVER/OFFER/REQUEST/ACK against the
server on IFACE, with up to WINDOW handshakes in flight, over an AF_PACKET socket (raw frames,
so each client's Ethernet source is its own MAC, optionally 802.1Q-tagged for a trunk).
Prints the number of leases acknowledged and leases per second.

usage: dhcp-load.py IFACE CLIENTS WINDOW [VLAN]
"""
import os, random, select, socket, struct, sys, time

iface, clients, window = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
vlan = int(sys.argv[4]) if len(sys.argv) > 4 else 0
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind((iface, 0))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
base = random.randrange(0, 1 << 16)

def csum(b):
    if len(b) % 2:
        b += b'\0'
    t = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while t >> 16:
        t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff

def frame(mac, xid, mtype, req_ip=None, server=None):
    opts = bytes([53, 1, mtype])
    if req_ip:
        opts += bytes([50, 4]) + req_ip
    if server:
        opts += bytes([54, 4]) + server
    opts += b'\xff'
    bootp = struct.pack('!BBBBIHH4s4s4s4s16s64s128s4s', 1, 1, 6, 0, xid, 0, 0x8000, b'\0' * 4, b'\0' * 4,
                        b'\0' * 4, b'\0' * 4, mac + b'\0' * 10, b'\0' * 64, b'\0' * 128, b'\x63\x82\x53\x63') + opts
    bootp += b'\0' * max(0, 300 - len(bootp))
    udp = struct.pack('!HHHH', 68, 67, 8 + len(bootp), 0) + bootp
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, b'\0' * 4, b'\xff' * 4)
    ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
    eth = b'\xff' * 6 + mac
    eth += (struct.pack('!HH', 0x8100, vlan) if vlan else b'') + b'\x08\x00'
    return eth + ip + udp

def parse(f):
    off = 14
    et = struct.unpack('!H', f[12:14])[0]
    if et == 0x8100:
        et = struct.unpack('!H', f[16:18])[0]
        off = 18
    if et != 0x0800 or len(f) < off + 28 + 240:
        return None
    ihl = (f[off] & 15) * 4
    if f[off + 9] != 17:
        return None
    udp = off + ihl
    if struct.unpack('!H', f[udp + 2:udp + 4])[0] != 68:
        return None
    b = f[udp + 8:]
    if b[0] != 2:
        return None
    xid = struct.unpack('!I', b[4:8])[0]
    yiaddr = b[16:20]
    i, mtype, server = 240, None, None
    while i < len(b) and b[i] != 255:
        if b[i] == 0:
            i += 1
            continue
        if i + 1 >= len(b):
            break
        code, ln = b[i], b[i + 1]
        val = b[i + 2:i + 2 + ln]
        if code == 53 and ln == 1:
            mtype = val[0]
        if code == 54 and ln == 4:
            server = val
        i += 2 + ln
    return xid, mtype, yiaddr, server

def mac_of(n):
    return bytes([0x02, 0x42, (base >> 8) & 0xff, base & 0xff, (n >> 8) & 0xff, n & 0xff])

state = {}          # xid -> (client, phase, sent_at)
next_client, acked, naks = 0, 0, 0
start = time.monotonic()
deadline = start + 60
while (acked + naks < clients) and time.monotonic() < deadline:
    while next_client < clients and len(state) < window:
        xid = (base << 16 | next_client) & 0xffffffff
        s.send(frame(mac_of(next_client), xid, 1))
        state[xid] = (next_client, 'discover', time.monotonic())
        next_client += 1
    r, _, _ = select.select([s], [], [], 0.05)
    if not r:
        now = time.monotonic()
        for xid, (c, phase, at) in list(state.items()):
            if now - at > 2:   # lost: retry the handshake
                s.send(frame(mac_of(c), xid, 1))
                state[xid] = (c, 'discover', now)
        continue
    for _ in range(256):
        try:
            f = s.recv(4096, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        p = parse(f)
        if not p or p[0] not in state:
            continue
        xid, mtype, yiaddr, server = p
        c, phase, _ = state[xid]
        if mtype == 2 and phase == 'discover':
            s.send(frame(mac_of(c), xid, 3, yiaddr, server))
            state[xid] = (c, 'request', time.monotonic())
        elif mtype == 5 and phase == 'request':
            acked += 1
            del state[xid]
        elif mtype == 6:
            naks += 1
            del state[xid]
elapsed = time.monotonic() - start
print("leases %d naks %d in %.2f s: %.0f leases/s" % (acked, naks, elapsed, acked / elapsed if elapsed else 0))
