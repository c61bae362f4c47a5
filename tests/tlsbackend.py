"""
An HTTPS server for tests/test_origination_e2e.py, standard library only:
C{tlsbackend.py PORT CERT KEY}. It keeps connections alive and answers every
request with JSON saying what it saw: the SNI of the connection, the
connection's number and the request's number on it, the Host, the
X-Forwarded-Proto and the length of the body it read.
"""

import itertools
import json
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_connections = itertools.count(1)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        BaseHTTPRequestHandler.setup(self)
        self.number = next(_connections)
        self.requests = 0

    def do_GET(self):
        self.requests += 1
        length = int(self.headers.get("Content-Length") or 0)
        received = len(self.rfile.read(length)) if length else 0
        body = json.dumps(
            {
                "sni": getattr(self.connection, "sni", None),
                "tls": self.connection.version(),
                "connection": self.number,
                "request": self.requests,
                "host": self.headers.get("Host"),
                "x_forwarded_proto": self.headers.get("X-Forwarded-Proto"),
                "received": received,
            }
        ).encode("ascii")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, format, *args):
        print("%s %s" % (self.address_string(), format % args), flush=True)


def main(argv):
    port, cert, key = int(argv[1]), argv[2], argv[3]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def record(sock, name, _context):
        sock.sni = name

    context.sni_callback = record
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print("listening on %d" % port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv)
