#!/usr/bin/env python3
"""TCP request/response rate (netperf's TCP_RR, which Debian does not ship): one connection,
a 1-byte request answered by a 1-byte response, as fast as they go.

  tcp-rr.py server HOST PORT          # answers until the client closes (one client)
  tcp-rr.py client HOST PORT SECONDS  # prints transactions per second
"""
import socket, sys, time

mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "server":
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(1)
    print("listening", flush=True)
    c, _ = s.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        b = c.recv(1)
        if not b:
            break
        c.send(b)
else:
    secs = float(sys.argv[4])
    for _ in range(50):
        try:
            c = socket.create_connection((host, port), timeout=5)
            break
        except OSError:
            time.sleep(0.1)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    n = 0
    end = time.monotonic() + secs
    while time.monotonic() < end:
        for _ in range(100):
            c.send(b"x")
            c.recv(1)
        n += 100
    c.close()
    print("%.0f" % (n / secs))
