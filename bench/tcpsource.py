"""
The TCP relay phase's backend, run in namespace S: a stream that is not HTTP.

    tcpsource.py FILE PORT [PORT ...] [--timeout S]

On each connection to any of the ports it sends the whole of FILE with
C{sendfile} (the kernel copies it from the page cache: the backend costs
next to nothing), shuts its side down (the half-close the relay must pass
on) and closes once the client has closed its own, or after C{--timeout}
seconds. The client speaks no protocol: it reads to the end of the stream
and counts the bytes.  Standard library only.
"""

import argparse
import socket
import socketserver
import sys
import threading


def handler(path, timeout):
    class Send(socketserver.BaseRequestHandler):
        def handle(self):
            sock = self.request
            sock.settimeout(timeout)
            try:
                with open(path, "rb") as f:
                    sock.sendfile(f)
                sock.shutdown(socket.SHUT_WR)
                # Until the client's EOF (bounded by the timeout).
                while sock.recv(65536):
                    pass
            except OSError as e:
                sys.stderr.write("tcpsource: %s: %s\n" % (self.client_address, e))

    return Send


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file")
    parser.add_argument("ports", type=int, nargs="+")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds a connection may take, each way")
    args = parser.parse_args(argv)
    servers = [Server(("0.0.0.0", port), handler(args.file, args.timeout))
               for port in args.ports]
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    servers[0].serve_forever()


if __name__ == "__main__":
    main()
