"""
The threading TCP server that the standard-library backends in this
directory (L{ledger}, L{resetter}) listen with: one IPv6 socket that also
takes IPv4, as a real server bound to C{::} does. They run as scripts
(C{python testbed/ledger.py}), so they import it as their neighbour,
C{from dualstack import Server}.
"""

import socket
import socketserver


class Server(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True
    # The tests open hundreds of connections at once.
    request_queue_size = 512

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        socketserver.ThreadingTCPServer.server_bind(self)
