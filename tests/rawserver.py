"""
A server that answers with raw, often malformed, responses: the upstream side
of the hostile-input tests.

C{python tests/rawserver.py --port 82 --corpus tests/hostile.json} answers
C{GET /r/NAME} with the bytes of the response called NAME in the corpus, then
closes the connection. Standard library only, so nothing in it can tidy up
what it sends.
"""

import argparse
import json
import socket
import socketserver
import sys


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 65536:
            more = self.request.recv(65536)
            if not more:
                return
            data += more
        target = data.split(b"\r\n", 1)[0].split(b" ")[1].decode("latin-1")
        name = target.rpartition("/")[2]
        answer = self.server.responses.get(name, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        print("raw response %s" % name, flush=True)
        self.request.sendall(answer.encode("latin-1"))


class Server(socketserver.ThreadingTCPServer):
    """
    A threading TCP server on a dual-stack IPv6 socket (also used by
    streamserver.py).
    """

    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        socketserver.ThreadingTCPServer.server_bind(self)


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--corpus", required=True)
    args = parser.parse_args(argv)
    with open(args.corpus) as f:
        responses = {r["name"]: r["raw"] for r in json.load(f)["responses"]}
    with Server(("::", args.port), Handler) as server:
        server.responses = responses
        server.serve_forever()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
