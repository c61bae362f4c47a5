"""
A backend that keeps a ledger of every request it receives and breaks some of its connections.

Run as C{python testbed/ledger.py --port 80 [--fault-fraction 0.3] [--seed 1]}, standard library
only, listening dual-stack.  Requests are C{<method> /acct/<id>?size=N} with the same id in
C{x-acct-id} (L{testbed.loadgen} sends them); the answer is C{200} with C{x-acct-id}, a first body
line C{id=<id> method=<method> len=<request body length> sha=<its sha256>} and filler up to
C{N} bytes, so the client can tell that it got its own answer, whole.

Each connection gets a plan from its number and the seed: a lifetime (after that many requests
the server answers with C{Connection: close} and closes), and on a fraction of connections one
fault at one request:

  - C{reset}: the request is read whole, then the connection is reset (C{SO_LINGER} 0) before
    any byte of a response: a reset before the headers;
  - C{drop}: at the 2nd or a later request, the connection is reset as soon as the head
    arrives, unread: a pooled connection closed at the moment of reuse;
  - C{cut}: the response head and half its body are sent, then the connection closes: a cut body.

Every event is one line on stdout, written before the answer goes out::

    accept <conn>
    <served|reset|drop|cut> <id> <method> <conn> <index> <proxied|direct> <body length>

C{proxied} means the request carries C{x-request-id}, which origdst adds to every request it
forwards; C{direct} is a request that reached the backend around the proxy.
"""

import argparse
import hashlib
import random
import socket
import socketserver
import struct
import sys
import threading

from dualstack import Server  # the dual-stack threading server, beside this file

_LOCK = threading.Lock()
_COUNT = [0]
FILLER = b"0123456789abcdefghijklmnopqrstuvwxyz" * 64
MODES = ("reset", "drop", "cut")


def plan(seed, number, fraction, lifetime=(5, 60)):
    """
    The fate of connection C{number}: C{(lifetime, fault, index)}, C{fault} one of L{MODES} or
    L{None}, striking at request C{index} (1-based) of the connection.
    """
    rng = random.Random(seed * 1000003 + number)
    life = rng.randint(*lifetime)
    if rng.random() >= fraction:
        return life, None, 0
    fault = rng.choice(MODES)
    index = rng.randint(2 if fault == "drop" else 1, life)
    return life, fault, index


def emit(line):
    with _LOCK:
        sys.stdout.write(line)
        sys.stdout.flush()


def reset(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Reader:
    """
    Buffered reads of heads, lengths and chunked bodies from one socket.
    """

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError()
        self.buf += data

    def until(self, marker):
        while marker not in self.buf:
            self.fill()
        line, _, self.buf = self.buf.partition(marker)
        return line

    def exactly(self, n):
        while len(self.buf) < n:
            self.fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def chunked(self):
        body = []
        while True:
            size = int(self.until(b"\r\n").split(b";")[0], 16)
            if size == 0:
                while self.until(b"\r\n"):
                    pass  # trailers
                return b"".join(body)
            body.append(self.exactly(size))
            self.exactly(2)


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        with _LOCK:
            _COUNT[0] += 1
            number = _COUNT[0]
        emit("accept %d\n" % number)
        life, fault, at = plan(self.server.seed, number, self.server.fraction)
        reader = Reader(sock)
        sock.settimeout(60)
        index = 0
        try:
            while True:
                try:
                    head = reader.until(b"\r\n\r\n")
                except EOFError:
                    return
                index += 1
                lines = head.split(b"\r\n")
                method, target = lines[0].split(b" ")[:2]
                fields = {}
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    fields[name.strip().lower()] = value.strip()
                rid = fields.get(b"x-acct-id", b"-").decode("latin-1")
                path, _, query = target.partition(b"?")
                if path != b"/acct/" + rid.encode("latin-1"):
                    rid = "garbled:" + rid
                how = "proxied" if b"x-request-id" in fields else "direct"
                where = "%s %s %d %d %s" % (rid, method.decode("latin-1"), number, index, how)
                if fault == "drop" and index == at:
                    emit("drop %s -\n" % where)
                    reset(sock)
                    return
                if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
                    body = reader.chunked()
                else:
                    body = reader.exactly(int(fields.get(b"content-length", b"0")))
                if fault == "reset" and index == at:
                    emit("reset %s %d\n" % (where, len(body)))
                    reset(sock)
                    return
                size = 0
                for item in query.split(b"&"):
                    if item.startswith(b"size="):
                        size = int(item[5:])
                first = b"id=%s method=%s len=%d sha=%s\n" % (
                    rid.encode("latin-1"), method, len(body),
                    hashlib.sha256(body).hexdigest().encode("ascii"))
                answer = first + (FILLER * (size // len(FILLER) + 1))[:max(0, size - len(first))]
                last = index >= life
                response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nx-acct-id: %s\r\n%s\r\n" % (
                    len(answer), rid.encode("latin-1"), b"Connection: close\r\n" if last else b"")
                if fault == "cut" and index == at:
                    emit("cut %s %d\n" % (where, len(body)))
                    sock.sendall(response + answer[:len(answer) // 2])
                    sock.close()
                    return
                emit("served %s %d\n" % (where, len(body)))
                sock.sendall(response + answer)
                if last:
                    sock.shutdown(socket.SHUT_WR)
                    sock.close()
                    return
        except (OSError, ValueError, EOFError):
            return


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--fault-fraction", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args(argv)
    server = Server(("::", options.port), Handler)
    server.fraction = options.fault_fraction
    server.seed = options.seed
    print("ledger listening on %d" % (options.port,), flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
