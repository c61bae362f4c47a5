"""
Open COUNT idle connections to HOST:PORT, hold them SECONDS, close them; standard library only
(run as the unprivileged client).  Prints JSON: C{connected} (handshakes completed) and
C{closed_by_peer} (connections the peer closed while held).
"""

import json
import select
import socket
import sys
import time


def main(argv):
    host, port, count, seconds = argv[0], int(argv[1]), int(argv[2]), float(argv[3])
    socks, connected = [], 0
    for _ in range(count):
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect((host, port))
            connected += 1
        except OSError:
            s.close()
            continue
        s.setblocking(False)
        socks.append(s)
    closed = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        readable = select.select([s for s in socks if s not in closed], [], [], 0.2)[0]
        for s in readable:
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                closed.add(s)
    for s in socks:
        s.close()
    print(json.dumps({"connected": connected, "closed_by_peer": len(closed)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
