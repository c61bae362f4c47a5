"""
Many client connections from one process, each making one request and then held open (or
closed): C{python holdclients.py SPEC}.  Standard library only (it runs as the unprivileged
client); raw non-blocking sockets on C{selectors}' poller, so ten thousand connections need no
thread each and no C{select} limit.

C{SPEC} is JSON::

    {"targets": [["10.250.0.3", 80], ...], "count": 10000, "path": "/peer",
     "window": 64, "keep": true, "timeout": 60}

Connection I goes to C{targets[I % len(targets)]}; at most C{window} connections are between
connect and response at a time (so the listener's backlog never overflows).  Each sends
C{GET path} and reads its response (Content-Length or chunked).  With C{keep}, the answered
connections stay open and idle: the script prints one JSON line (C{held}, C{statuses},
C{errors}, C{elapsed}), waits for a line on stdin, counts the held connections the peer closed
meanwhile, closes them all and prints C{{"closed_by_peer": N}}.  Without C{keep} each
connection is closed once answered and the script prints the first line only.
"""

import errno
import json
import resource
import selectors
import socket
import sys
import time

CONNECTING, READING = "connecting", "reading"


class Connection:
    __slots__ = ("sock", "host", "state", "buffered")

    def __init__(self, sock, host):
        self.sock = sock
        self.host = host
        self.state = CONNECTING
        self.buffered = b""


def _complete(data):
    """
    @return: the status of the response in C{data} once it is complete, else L{None}.
    """
    head, found, body = data.partition(b"\r\n\r\n")
    if not found:
        return None
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    if b"content-length" in fields:
        return status if len(body) >= int(fields[b"content-length"]) else None
    if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
        return status if body.endswith(b"0\r\n\r\n") else None
    return status


def _raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv):
    spec = json.loads(argv[0])
    targets = [tuple(t) for t in spec["targets"]]
    count, window = spec["count"], spec.get("window", 64)
    keep, path = spec.get("keep", True), spec.get("path", "/peer")
    deadline = time.monotonic() + spec.get("timeout", 60)
    _raise_fd_limit()
    poller = selectors.DefaultSelector()
    held, statuses, errors = [], {}, {}
    started, busy = 0, 0
    began = time.monotonic()

    def fail(conn, kind):
        errors[kind] = errors.get(kind, 0) + 1
        poller.unregister(conn.sock)
        conn.sock.close()

    while (started < count or busy) and time.monotonic() < deadline:
        while started < count and busy < window:
            host, port = targets[started % len(targets)]
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            conn = Connection(sock, host)
            started += 1
            busy += 1
            code = sock.connect_ex((host, port))
            if code not in (0, errno.EINPROGRESS):
                busy -= 1
                errors[errno.errorcode.get(code, str(code))] = errors.get(
                    errno.errorcode.get(code, str(code)), 0) + 1
                sock.close()
                continue
            poller.register(sock, selectors.EVENT_WRITE, conn)
        for key, _ in poller.select(0.2):
            conn = key.data
            if conn.state == CONNECTING:
                code = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    busy -= 1
                    fail(conn, errno.errorcode.get(code, str(code)))
                    continue
                request = "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, conn.host)
                try:
                    conn.sock.send(request.encode("ascii"))
                except OSError as e:
                    busy -= 1
                    fail(conn, type(e).__name__)
                    continue
                conn.state = READING
                poller.modify(conn.sock, selectors.EVENT_READ, conn)
                continue
            try:
                data = conn.sock.recv(65536)
            except OSError as e:
                busy -= 1
                fail(conn, type(e).__name__)
                continue
            if not data:
                busy -= 1
                fail(conn, "closed before the response")
                continue
            conn.buffered += data
            status = _complete(conn.buffered)
            if status is None:
                continue
            busy -= 1
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            poller.unregister(conn.sock)
            if keep:
                conn.buffered = b""
                held.append(conn.sock)
            else:
                conn.sock.close()
    if started < count or busy:
        errors["timed out"] = count - started + busy
    print(json.dumps({"held": len(held), "statuses": statuses, "errors": errors,
                      "elapsed": round(time.monotonic() - began, 2)}), flush=True)
    if not keep:
        return 0
    sys.stdin.readline()
    closed = 0
    for sock in held:
        poller.register(sock, selectors.EVENT_READ)
    readable = {key.fileobj for key, _ in poller.select(0)}
    for sock in held:
        if sock in readable:
            try:
                gone = not sock.recv(1, socket.MSG_PEEK)
            except OSError:
                gone = True
            closed += gone
        poller.unregister(sock)
        sock.close()
    print(json.dumps({"closed_by_peer": closed}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
