"""
The client of tests/test_relay_e2e.py, standard library only (it runs as
uid 65534); prints one JSON object:

  - C{tls HOST PORT NAME CAFILE [bytewise]}: a TLS handshake verified with
    the CA for NAME, then one echo; C{bytewise}: the ClientHello is sent one
    byte per segment;
  - C{echo HOST PORT SIZE}: SIZE bytes sent while the echo is read, then a
    half-close, then the rest of the echo and its C{bye};
  - C{banner HOST PORT}: read the server's greeting, send a line, read the
    answer;
  - C{slowread HOST PORT SIZE PAUSE}: read nothing for PAUSE seconds, then
    SIZE bytes of the pattern until the server closes.
"""

import hashlib
import json
import socket
import ssl
import sys
import threading
import time


def pattern(size):
    unit = bytes(range(256))
    return (unit * (size // 256 + 1))[:size]


def tls_client(host, port, name, cafile, bytewise=False):
    context = ssl.create_default_context(cafile=cafile)
    sock = socket.create_connection((host, port), timeout=20)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    first = True
    try:
        while True:
            try:
                tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            data = outgoing.read()
            if first and bytewise:
                for i in range(len(data)):
                    sock.sendall(data[i:i + 1])
                    time.sleep(0.002)
            elif data:
                sock.sendall(data)
            first = False
            if done:
                break
            more = sock.recv(65536)
            if not more:
                return {"handshake": False, "error": "closed during the handshake"}
            incoming.write(more)
    except ssl.SSLError as e:
        return {"handshake": False, "error": str(e)}
    tls.write(b"ping")
    sock.sendall(outgoing.read())
    answer = b""
    while len(answer) < 9:
        more = sock.recv(65536)
        if not more:
            break
        incoming.write(more)
        try:
            answer += tls.read(65536)
        except ssl.SSLWantReadError:
            pass
    cert = tls.getpeercert()
    sock.close()
    return {"handshake": True, "echo": answer.decode("latin-1"),
            "subject_alt_name": [v for _, v in cert.get("subjectAltName", ())]}


def echo_client(host, port, size):
    data = pattern(size)
    sock = socket.create_connection((host, port), timeout=60)
    received = []

    def reader():
        while True:
            more = sock.recv(262144)
            if not more:
                return
            received.append(more)

    thread = threading.Thread(target=reader)
    thread.start()
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
    thread.join(120)
    sock.close()
    got = b"".join(received)
    return {"sent": size, "received": len(got), "intact": got[:size] == data,
            "tail": got[size:].decode("latin-1")}


def banner_client(host, port):
    started = time.monotonic()
    sock = socket.create_connection((host, port), timeout=20)
    f = sock.makefile("rb")
    greeting = f.readline()
    waited = time.monotonic() - started
    sock.sendall(b"hello\n")
    answer = f.readline()
    sock.close()
    return {"greeting": greeting.decode("latin-1"), "answer": answer.decode("latin-1"),
            "waited": waited}


def slow_reader(host, port, size, pause):
    sock = socket.create_connection((host, port), timeout=60)
    time.sleep(pause)
    digest = hashlib.sha256()
    length = 0
    while True:
        more = sock.recv(262144)
        if not more:
            break
        digest.update(more)
        length += len(more)
    sock.close()
    return {"length": length, "intact": digest.hexdigest() == hashlib.sha256(pattern(size)).hexdigest()}


def main(argv):
    mode, host, port = argv[1], argv[2], int(argv[3])
    if mode == "tls":
        result = tls_client(host, port, argv[4], argv[5], argv[6:] == ["bytewise"])
    elif mode == "echo":
        result = echo_client(host, port, int(argv[4]))
    elif mode == "slowread":
        result = slow_reader(host, port, int(argv[4]), float(argv[5]))
    else:
        result = banner_client(host, port)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv)
