"""
A backend that resets some of its connections, and says which requests came through a proxy.

Run as C{python testbed/resetter.py --port 80 [--port 8080] [--reset-every 3]}, standard library
only, listening on every IPv4 and IPv6 address.  It answers every request C{200 ok} (keep-alive)
and, on every C{reset-every}-th connection, closes after the first response with C{SO_LINGER}
0, so the peer gets a reset and its conntrack entry is left in state CLOSE, with the reset seen
from the reply side: the entry a later connection with the same addresses and ports reuses.

For each request it prints one line, C{proxied <port> <peer>} when the request carries
C{x-request-id} (which origdst adds to every request it forwards) and C{direct <port> <peer>}
when it does not: a request that reached the backend around the proxy.
"""

import argparse
import socket
import socketserver
import struct
import sys
import threading

from dualstack import Server  # the dual-stack threading server, beside this file

_LOCK = threading.Lock()
_COUNT = [0]


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        with _LOCK:
            _COUNT[0] += 1
            number = _COUNT[0]
        reset = self.server.reset_every and number % self.server.reset_every == 0
        port = sock.getsockname()[1]
        buffered = b""
        sock.settimeout(30)
        try:
            while True:
                while b"\r\n\r\n" not in buffered:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buffered += data
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                lines = head.lower().split(b"\r\n")
                proxied = any(line.startswith(b"x-request-id:") for line in lines[1:])
                line = "%s %d %s\n" % ("proxied" if proxied else "direct", port,
                                         self.client_address[0])
                with _LOCK:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                if reset:
                    # Closed here: socketserver's own close would shut down
                    # (a FIN) first, and conntrack reopens an entry that saw a FIN.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.close()
                    return
        except OSError:
            return


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--port", type=int, action="append", required=True)
    parser.add_argument("--reset-every", type=int, default=3)
    options = parser.parse_args(argv)
    servers = []
    for port in options.port:
        server = Server(("::", port), Handler)
        server.reset_every = options.reset_every
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("resetter listening on %s" % (options.port,), flush=True)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
