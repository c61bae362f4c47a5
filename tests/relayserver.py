"""
Servers for tests/test_relay_e2e.py, standard library only, one per mode:

  - C{tls PORT CERT KEY}: TLS; answers each read with C{echo:} and the bytes;
  - C{echo PORT}: plain TCP; echoes every byte, and after the client's
    half-close sends C{bye} and closes;
  - C{banner PORT}: speaks first (C{SSH-2.0-relaytest}), then answers one line;
  - C{source PORT SIZE}: speaks first: SIZE bytes of a pattern, then closes.
"""

import socket
import ssl
import sys
import threading


def serve(port, handle):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))
    server.listen(64)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=guarded, args=(handle, conn), daemon=True).start()


def guarded(handle, conn):
    try:
        handle(conn)
    except (OSError, ssl.SSLError) as e:
        print("connection ended: %s" % (e,), flush=True)
    finally:
        conn.close()


def tls_handler(context):
    def handle(conn):
        with context.wrap_socket(conn, server_side=True) as tls:
            while True:
                data = tls.recv(65536)
                if not data:
                    return
                tls.sendall(b"echo:" + data)
    return handle


def echo(conn):
    while True:
        data = conn.recv(262144)
        if not data:
            break
        conn.sendall(data)
    conn.sendall(b"bye")
    conn.shutdown(socket.SHUT_WR)


def banner(conn):
    conn.sendall(b"SSH-2.0-relaytest\r\n")
    line = conn.makefile("rb").readline()
    conn.sendall(b"got " + line)


def source(size):
    unit = bytes(range(256)) * 1024

    def handle(conn):
        left = size
        while left > 0:
            piece = unit[:left]
            conn.sendall(piece)
            left -= len(piece)
    return handle


def main(argv):
    mode, port = argv[1], int(argv[2])
    if mode == "source":
        handle = source(int(argv[3]))
    elif mode == "tls":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(argv[3], argv[4])
        handle = tls_handler(context)
    else:
        handle = {"echo": echo, "banner": banner}[mode]
    print("listening on %d" % port, flush=True)
    serve(port, handle)


if __name__ == "__main__":
    main(sys.argv)
