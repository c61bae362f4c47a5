"""
The raw server of the flow-control and tunnel tests, standard library only.

C{python tests/streamserver.py --port 84} answers, per connection:
  - C{CONNECT ...}: C{200 Connection established}, then echoes bytes; when the
    client half-closes, sends C{bye} and closes.
  - C{GET /ws} with C{Upgrade: websocket}: the RFC 6455 handshake, then echoes
    each text frame back; when the client half-closes, sends a text frame
    C{bye} and closes.
  - C{GET /download?n=N}: N bytes (C{i % 251}) with Content-Length, written
    in blocking 64 KiB pieces, so a slow reader slows it down.
  - C{POST /sink?wait=S}: waits S seconds before reading the body, then
    reads it all and answers with its length and sha256.
"""

import argparse
import base64
import hashlib
import json
import socketserver
import struct
import sys
import time

from rawserver import Server  # the dual-stack threading server, beside this file

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65"
UNIT = bytes(i % 251 for i in range(251 * 261))  # 65511 bytes, a whole number of cycles


def read_head(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            return None, b""
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def headers_of(head):
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    return fields


def recv_exact(sock, n, buf):
    while len(buf) < n:
        more = sock.recv(65536)
        if not more:
            return None
        buf += more
    return buf


def ws_frame(payload, opcode=1):
    size = len(payload)
    if size < 126:
        return bytes([0x80 | opcode, size]) + payload
    return bytes([0x80 | opcode, 126]) + struct.pack("!H", size) + payload


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        sock.settimeout(60)
        head, rest = read_head(sock)
        if head is None:
            return
        line = head.split(b"\r\n", 1)[0].split(b" ")
        method, target = line[0], line[1].decode("latin-1")
        fields = headers_of(head)
        print("%s %s" % (method.decode("latin-1"), target), flush=True)
        if method == b"CONNECT":
            sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self.echo(sock, rest)
        elif fields.get(b"upgrade", b"").lower() == b"websocket":
            self.websocket(sock, fields, rest)
        elif target.startswith("/download"):
            n = int(target.partition("n=")[2])
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
            sent = 0
            while sent < n:
                piece = UNIT[: min(len(UNIT), n - sent)]
                sock.sendall(piece)
                sent += len(piece)
        elif target.startswith("/sink"):
            time.sleep(float(target.partition("wait=")[2] or 0))
            self.sink(sock, fields, rest)

    def echo(self, sock, data):
        while True:
            if data:
                sock.sendall(data)
            data = sock.recv(65536)
            if not data:
                sock.sendall(b"bye")
                return

    def websocket(self, sock, fields, buf):
        key = fields[b"sec-websocket-key"]
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        sock.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        while True:
            buf = recv_exact(sock, 2, buf)
            if buf is None:
                sock.sendall(ws_frame(b"bye"))
                return
            size = buf[1] & 0x7F
            header = 2
            if size == 126:
                buf = recv_exact(sock, 4, buf)
                size = struct.unpack("!H", buf[2:4])[0]
                header = 4
            buf = recv_exact(sock, header + 4 + size, buf)
            mask = buf[header : header + 4]
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(buf[header + 4 : header + 4 + size]))
            buf = buf[header + 4 + size :]
            sock.sendall(ws_frame(payload))

    def sink(self, sock, fields, buf):
        n = int(fields[b"content-length"])
        digest = hashlib.sha256()
        got = 0
        while got < n:
            piece = buf or sock.recv(1 << 20)
            buf = b""
            if not piece:
                break
            digest.update(piece)
            got += len(piece)
        body = json.dumps({"length": got, "sha256": digest.hexdigest()}).encode()
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    with Server(("::", args.port), Handler) as server:
        server.serve_forever()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
