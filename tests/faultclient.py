"""
The client of the fault tests: one long-lived process, run in namespace C as the unprivileged
user, that holds named connections and acts on them when told.

Standard library only.  It reads one JSON command a line on stdin and answers each with one
JSON line on stdout; every command names a connection (C{"c"}) but C{quit}::

    {"op": "open", "c": "b", "host": "fd00:250::3", "port": 8080}
    {"op": "send", "c": "b", "data": "<latin-1>", "delay": 0}   delay > 0: one byte at a time
    {"op": "response", "c": "b", "timeout": 10, "head": false}  read one response
    {"op": "upload", "c": "b", "size": N, "for": 2}             push body bytes for 2 s at most
    {"op": "read", "c": "b", "n": 65536, "timeout": 5}          read up to n bytes
    {"op": "shut", "c": "b"}                                    shut down the sending side
    {"op": "close", "c": "b", "reset": false}                   close (reset: RST, SO_LINGER 0)

C{response} answers C{{"status", "headers", "body", "complete", "closed", "error"}}: the body
as latin-1 text, C{complete} whether its framing (length or chunked) ended, C{closed} whether
the server closed the connection (read to the end when the response has no length, or when
it stopped short); with C{head}, only the head is read.
"""

import json
import socket
import struct
import sys
import time


class Connection:
    def __init__(self, host, port, timeout):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.closed = False

    def _more(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        self.sock.settimeout(left)
        data = self.sock.recv(65536)
        if not data:
            self.closed = True
        self.buf += data
        return data

    def _until(self, marker, deadline):
        while marker not in self.buf:
            if self.closed or not self._more(deadline):
                return None
        head, _, self.buf = self.buf.partition(marker)
        return head

    def _take(self, n, deadline):
        while len(self.buf) < n:
            if self.closed or not self._more(deadline):
                break
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def response(self, timeout, head_only=False):
        deadline = time.monotonic() + timeout
        out = {"status": None, "headers": [], "body": "", "complete": False, "closed": False,
               "error": None}
        try:
            while True:
                head = self._until(b"\r\n\r\n", deadline)
                if head is None:
                    out["closed"] = True
                    out["body"] = self.buf.decode("latin-1")
                    return out
                lines = head.split(b"\r\n")
                out["status"] = int(lines[0].split()[1])
                out["headers"] = [[p.strip() for p in l.decode("latin-1").split(":", 1)]
                                  for l in lines[1:]]
                if out["status"] >= 200:
                    break
            if head_only:
                return out
            fields = {k.lower(): v for k, v in out["headers"]}
            body = b""
            if "content-length" in fields:
                n = int(fields["content-length"])
                body = self._take(n, deadline)
                out["complete"] = len(body) == n
            elif fields.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size_line = self._until(b"\r\n", deadline)
                    if size_line is None:
                        break
                    size = int(size_line.split(b";")[0], 16)
                    if size == 0:
                        if self._until(b"\r\n", deadline) is not None:
                            out["complete"] = True
                        break
                    piece = self._take(size + 2, deadline)
                    body += piece[:size]
                    if len(piece) < size + 2:
                        break
            else:
                while not self.closed and self._more(deadline):
                    pass
                body, self.buf = self.buf, b""
                out["complete"] = self.closed
            out["body"] = body.decode("latin-1")
            if not out["complete"]:
                # Cut short: see whether the connection was closed.
                try:
                    while not self.closed and self._more(min(deadline, time.monotonic() + 2)):
                        pass
                except socket.timeout:
                    pass
            out["closed"] = self.closed
        except Exception as e:
            out["error"] = "%s: %s" % (type(e).__name__, e)
            out["closed"] = self.closed
        return out

    def upload(self, size, seconds):
        """
        Send up to C{size} bytes of body, stopping when the socket has not taken any for
        C{seconds}: the peer's window is closed.
        """
        sent = 0
        block = b"u" * 65536
        self.sock.settimeout(seconds)
        error = None
        try:
            while sent < size:
                sent += self.sock.send(block[:min(len(block), size - sent)])
        except Exception as e:
            error = "%s: %s" % (type(e).__name__, e)
        return {"sent": sent, "error": error}


def main():
    conns = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        op = cmd["op"]
        out = {"ok": True}
        try:
            if op == "quit":
                break
            name = cmd["c"]
            if op == "open":
                conns[name] = Connection(cmd["host"], cmd["port"], cmd.get("timeout", 10))
                out["local_port"] = conns[name].sock.getsockname()[1]
            elif op == "send":
                data = cmd["data"].encode("latin-1")
                delay = cmd.get("delay", 0)
                sock = conns[name].sock
                if delay:
                    for i in range(len(data)):
                        sock.sendall(data[i:i + 1])
                        time.sleep(delay)
                else:
                    sock.sendall(data)
            elif op == "response":
                out = conns[name].response(cmd.get("timeout", 10), cmd.get("head", False))
            elif op == "upload":
                out = conns[name].upload(cmd["size"], cmd.get("for", 2))
            elif op == "read":
                conn = conns[name]
                deadline = time.monotonic() + cmd.get("timeout", 5)
                want = cmd.get("n", 65536)
                try:
                    while len(conn.buf) < want and not conn.closed and conn._more(deadline):
                        pass
                except socket.timeout:
                    pass
                data, conn.buf = conn.buf[:want], conn.buf[want:]
                out = {"len": len(data), "closed": conn.closed}
            elif op == "shut":
                conns[name].sock.shutdown(socket.SHUT_WR)
            elif op == "close":
                sock = conns.pop(name).sock
                if cmd.get("reset"):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            else:
                out = {"ok": False, "error": "unknown op %r" % (op,)}
        except Exception as e:
            out = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
