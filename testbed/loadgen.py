"""
The accounting load: requests with unique ids over keep-alive connections, each answer checked.

C{python loadgen.py '<json>'} with C{host}, C{port}, C{count}, C{connections}, C{prefix}
(request ids are C{<prefix>-<n>}), C{seconds} (a bound: ids not sent by then are reported
C{unsent}) and C{seed}.  Standard library only: it runs as the unprivileged client.

The mix, drawn per id from the seed: 60 % GET, 30 % POST with a Content-Length body, 10 % POST
with a chunked body; bodies and answers mostly under 2 KB, one in ten up to 64 KB; one request in
twenty asks for C{Connection: close}.  Requests go one at a time per connection (no pipelining);
a connection is opened again after an answer with C{Connection: close}, a cut answer or an
error.  L{testbed.ledger} is the backend that answers.

Prints JSON: C{outcomes} (id: C{[method, status or None, kind]}), C{elapsed}, C{connections}
(opened), C{slowest_first_send} (the longest wait from a connect to the first request on it,
in seconds: origdst's protocol detection takes a connection that stays silent for
C{--detect-timeout} for the TCP relay).  C{kind} is C{ok}
(200 whose id and body check out), C{cut} (a status line came, then the connection closed or
failed within the answer), C{status:<reset reason>} (another status, its body read whole; the
reason from a local reply's body, if it names one), C{mismatch} (an
answer that is not this request's), C{unsent}, or C{error:<exception>} (no status line at all).
"""

import hashlib
import json
import random
import socket
import sys
import threading
import time


def request_plan(seed, prefix, n):
    """
    @return: C{(id, method, chunked, body, answer size, close)} of request C{n}; C{close}:
        it asks for C{Connection: close}.
    """
    rng = random.Random("%s/%s/%d" % (seed, prefix, n))
    rid = "%s-%d" % (prefix, n)
    roll = rng.random()
    method, chunked = ("GET", False) if roll < 0.6 else ("POST", roll >= 0.9)

    def size():
        return rng.randint(0, 65536) if rng.random() < 0.1 else rng.randint(0, 2000)

    body = None
    if method == "POST":
        unit = rid.encode("ascii") + b"."
        length = size()
        body = (unit * (length // len(unit) + 1))[:length]
    answer = size()
    return rid, method, chunked, body, answer, rng.random() < 0.05


def encode(host, rid, method, chunked, body, answer, close):
    head = ["%s /acct/%s?size=%d HTTP/1.1" % (method, rid, answer), "Host: %s" % host,
            "x-acct-id: %s" % rid]
    if close:
        head.append("Connection: close")
    if body is None:
        payload = b""
    elif chunked:
        head.append("Transfer-Encoding: chunked")
        third = len(body) // 3 + 1
        pieces = [body[i:i + third] for i in range(0, len(body), third)]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    else:
        head.append("Content-Length: %d" % len(body))
        payload = body
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + payload


class Cut(Exception):
    """The connection ended inside an answer."""


class Connection:
    def __init__(self, host, port, timeout):
        # From before the connect: the proxy's wait starts at its accept, and a thread may
        # wait for the interpreter's lock after the handshake.
        self.opened = time.monotonic()
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def fill(self, inside):
        try:
            data = self.sock.recv(65536)
        except OSError:
            if inside:
                raise Cut()
            raise
        if not data:
            if inside:
                raise Cut()
            raise EOFError("closed before a status line")
        self.buf += data

    def until(self, marker, inside=True):
        while marker not in self.buf:
            self.fill(inside)
        line, _, self.buf = self.buf.partition(marker)
        return line

    def exactly(self, n):
        while len(self.buf) < n:
            self.fill(True)
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def close(self):
        self.sock.close()


def exchange(conn, wire, rid, method, body, answer):
    """
    Send one request and read its answer.

    @return: C{(status, kind, keep)}: keep is whether the connection may carry the next one.
    """
    if conn.opened is not None:
        # How long this client took from connect to its first bytes: the proxy's
        # protocol detection waits only so long for them.
        conn.first_send = time.monotonic() - conn.opened
        conn.opened = None
    conn.sock.sendall(wire)
    lines = conn.until(b"\r\n\r\n", inside=False).split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields.setdefault(name.strip().lower(), value.strip())
    try:
        if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
            parts = []
            while True:
                size = int(conn.until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    while conn.until(b"\r\n"):
                        pass
                    break
                parts.append(conn.exactly(size))
                conn.exactly(2)
            data = b"".join(parts)
        else:
            data = conn.exactly(int(fields.get(b"content-length", b"0")))
    except Cut:
        return status, "cut", False
    keep = fields.get(b"connection", b"").lower() != b"close"
    if status != 200:
        # A local reply names its cause last: "... reset reason: connection termination".
        reason = data.rpartition(b"reset reason: ")[2].split(b",")[0].strip()
        return status, "status:" + reason.decode("latin-1")[:60], keep
    sent = body or b""
    first = b"id=%s method=%s len=%d sha=%s\n" % (
        rid.encode("ascii"), method.encode("ascii"), len(sent),
        hashlib.sha256(sent).hexdigest().encode("ascii"))
    if (fields.get(b"x-acct-id") != rid.encode("ascii") or not data.startswith(first)
            or len(data) != max(answer, len(first))):
        return status, "mismatch", False
    return status, "ok", keep


def main(argv):
    spec = json.loads(argv[0] if argv else sys.stdin.read())
    host, port = spec["host"], spec["port"]
    prefix, seed = spec["prefix"], spec.get("seed", 1)
    timeout = spec.get("timeout", 20)
    deadline = time.monotonic() + spec["seconds"]
    lock = threading.Lock()
    numbers = iter(range(spec["count"]))
    outcomes = {}
    first_sends = []

    def next_number():
        with lock:
            return next(numbers, None)

    def worker():
        conn = None
        while True:
            n = next_number()
            if n is None:
                break
            rid, method, chunked, body, answer, close = request_plan(seed, prefix, n)
            if time.monotonic() >= deadline:
                outcomes[rid] = [method, None, "unsent"]
                continue
            wire = encode(host, rid, method, chunked, body, answer, close)
            status = None
            try:
                if conn is None:
                    conn = Connection(host, port, timeout)
                    first = True
                else:
                    first = False
                status, kind, keep = exchange(conn, wire, rid, method, body, answer)
                if first:
                    first_sends.append(conn.first_send)
            except Exception as e:
                kind, keep = "error:%s" % type(e).__name__, False
            outcomes[rid] = [method, status, kind]
            if (close or not keep) and conn is not None:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(spec["connections"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    json.dump({"outcomes": outcomes, "elapsed": round(time.monotonic() - started, 2),
               "connections": len(first_sends),
               "slowest_first_send": round(max(first_sends or [0]), 3)}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
