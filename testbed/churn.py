"""
A client load of short connections, bounded in count and time: C{python churn.py HOST PORT
COUNT CONCURRENCY SECONDS} (HOST an IPv4 or IPv6 address).  Each request goes on a new
connection with C{Connection: close}, so the proxy closes first and the client's ports turn
over quickly.  Standard library only (it runs as the unprivileged client).  Prints JSON:
C{ok}, C{errors} (by kind), C{elapsed}.
"""

import json
import socket
import sys
import threading
import time


def main(argv):
    host, port, count, concurrency, seconds = argv[0], int(argv[1]), int(argv[2]), int(argv[3]), float(argv[4])
    deadline = time.monotonic() + seconds
    lock = threading.Lock()
    state = {"left": count, "ok": 0, "errors": {}}
    authority = "[%s]" % host if ":" in host else host
    request = ("GET /churn HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % authority).encode()

    def one():
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(request)
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            if not data.startswith(b"HTTP/1.1 200"):
                raise ValueError("status %r" % data[:12])

    def worker():
        while time.monotonic() < deadline:
            with lock:
                if state["left"] <= 0:
                    return
                state["left"] -= 1
            try:
                one()
                kind = None
            except Exception as e:
                kind = type(e).__name__
            with lock:
                if kind is None:
                    state["ok"] += 1
                else:
                    state["errors"][kind] = state["errors"].get(kind, 0) + 1

    start = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"ok": state["ok"], "errors": state["errors"],
                      "elapsed": round(time.monotonic() - start, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
