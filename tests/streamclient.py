"""
The client of the flow-control and tunnel tests, standard library only; run
as the unprivileged user by L{testbed.Topology.start_script}.

C{python streamclient.py MODE HOST PORT [ARG]} prints one JSON object:
  - C{websocket}: handshake, one echoed text frame, then a half-close
    answered by the server's C{bye} frame and end of stream.
  - C{connect}: CONNECT, an echoed ping, then half-close, C{bye}, end.
  - C{download N PAUSE}: GET /download?n=N, read the head, stop reading for
    PAUSE seconds, then read and check all N bytes.
  - C{upload N WAIT}: POST /sink?wait=WAIT with an N-byte body, and the
    server's report of what it received.
"""

import base64
import hashlib
import json
import os
import socket
import sys
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65"
UNIT = bytes(i % 251 for i in range(251 * 261))


def read_head(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise EOFError("closed before the response head: %r" % data[:200])
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


def read_all(sock, buf=b""):
    while True:
        more = sock.recv(65536)
        if not more:
            return buf
        buf += more


def websocket(host, port):
    sock = socket.create_connection((host, port), timeout=20)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET /ws HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (host.encode(), key)
    )
    head, rest = read_head(sock)
    expected = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
    payload = b"hello origdst"
    mask = os.urandom(4)
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    echoed = rest
    while len(echoed) < 2 + len(payload):
        echoed += sock.recv(65536)
    sock.shutdown(socket.SHUT_WR)
    tail = read_all(sock, echoed[2 + len(payload):])
    return {
        "head": head,
        "accept_ok": ("Sec-WebSocket-Accept: %s" % expected) in head,
        "echo": echoed[2 : 2 + len(payload)].decode("latin-1"),
        "after_half_close": tail[2:].decode("latin-1"),
    }


def connect(host, port):
    sock = socket.create_connection((host, port), timeout=20)
    sock.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    head, rest = read_head(sock)
    sock.sendall(b"ping")
    echoed = rest
    while len(echoed) < 4:
        echoed += sock.recv(65536)
    sock.shutdown(socket.SHUT_WR)
    return {"head": head, "echo": echoed.decode("latin-1"), "after_half_close": read_all(sock, echoed[4:]).decode("latin-1")}


def download(host, port, n, pause):
    sock = socket.create_connection((host, port), timeout=60)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.sendall(b"GET /download?n=%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (n, host.encode()))
    head, rest = read_head(sock)
    time.sleep(pause)
    digest = hashlib.sha256(rest)
    got = len(rest)
    while got < n:
        piece = sock.recv(1 << 20)
        if not piece:
            break
        digest.update(piece)
        got += len(piece)
    expected = hashlib.sha256()
    left = n
    while left:
        piece = UNIT[: min(len(UNIT), left)]
        expected.update(piece)
        left -= len(piece)
    return {"head": head, "length": got, "intact": digest.hexdigest() == expected.hexdigest()}


def upload(host, port, n, wait):
    sock = socket.create_connection((host, port), timeout=60)
    sock.sendall(b"POST /sink?wait=%s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n" % (wait.encode(), host.encode(), n))
    digest = hashlib.sha256()
    left = n
    while left:
        piece = UNIT[: min(len(UNIT), left)]
        sock.sendall(piece)
        digest.update(piece)
        left -= len(piece)
    head, rest = read_head(sock)
    length = int(head.lower().partition("content-length:")[2].split()[0])
    while len(rest) < length:
        rest += sock.recv(65536)
    report = json.loads(rest)
    return {"head": head, "report": report, "sha256": digest.hexdigest()}


def main(argv):
    mode, host, port = argv[1], argv[2], int(argv[3])
    try:
        if mode == "websocket":
            result = websocket(host, port)
        elif mode == "connect":
            result = connect(host, port)
        elif mode == "download":
            result = download(host, port, int(argv[4]), float(argv[5]))
        else:
            result = upload(host, port, int(argv[4]), argv[5])
    except Exception as e:
        result = {"error": "%s: %s" % (type(e).__name__, e)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
