"""
The byte relay an upgrade or a CONNECT turns an exchange into.

Once the server agrees (C{101}, or C{2xx} to a CONNECT), a L{Tunnel} joins
the client connection and the upstream connection: bytes pass both ways
unchanged, each side pausing the other when it falls behind (as
L{twisted.protocols.portforward} does), a half-close passes on, and when one
side closes the other is closed too. No timeout applies to a tunnel.
"""

from zope.interface import implementer

from origdst import framing
from origdst.flow import connect_flow
from origdst.headers import response_head
from origdst.interfaces import ITunnel
from origdst.logs import logger

log = logger("origdst.http")


def switch_protocols(exchange, status, reason, fields, index):
    """
    The server accepted the client's upgrade (101) or CONNECT (2xx): pass
    its answer on, end the exchange, and turn both connections into one
    tunnel. A switch nobody asked for is the server's protocol error.

    @param exchange: the L{origdst.exchange.Exchange} being answered.
    """
    conn = exchange.conn
    if not exchange.upgrade:
        conn.bad_response(framing.BadMessage(502, "switching protocols without an upgrade request"))
        return
    pool = exchange.pool
    pool.stats.downstream_rq_xx[status // 100] += 1
    pool.stats.upstream_rq_xx[status // 100] += 1
    pool.rq_success += 1
    frame = b""
    if status == 101:
        protocol = index.get(b"upgrade", [exchange.upgrade])[0]
        frame = b"connection: upgrade\r\nupgrade: " + protocol + b"\r\n"
    channel = exchange.channel
    service_ms = int((channel.reactor.seconds() - exchange.sent_at) * 1000)
    channel.transport.write(
        response_head(status, reason, fields, index, channel.server, channel.prefix, service_ms, frame,
                      channel.via)
    )
    log.debug("{tag} tunnel to {key} open.", tag=exchange.tag, key=pool.key)
    exchange.finish()
    channel.start_tunnel(conn)


@implementer(ITunnel)
class Tunnel:
    """
    The two halves of one tunnel.

    @ivar client: the client connection (its C{transport} and C{pauser}).
    @ivar server: the L{origdst.interfaces.IUpstreamConnection}; bytes for
        it go through its C{send}, which counts them.
    """

    __slots__ = ("client", "server")

    def __init__(self, client, server):
        self.client = client
        self.server = server

    def open(self, early, client_read_closed):
        """
        Start relaying: each side becomes the other's producer.

        @param early: bytes the client sent after its request head, before
            the tunnel opened.
        @param client_read_closed: the client had already shut down its
            sending side, which is passed on now.
        """
        client, server = self.client, self.server
        server.start_tunnel(self)
        connect_flow(client.pauser, server.transport)
        connect_flow(server.pauser, client.transport)
        if early:
            server.send((early,))
        if client_read_closed:
            server.transport.loseWriteConnection()

    def from_client(self, data):
        self.server.send((data,))

    def from_server(self, data):
        # The upstream connection counted them as they arrived.
        self.client.transport.write(data)

    def client_read_closed(self):
        self.server.transport.loseWriteConnection()

    def server_read_closed(self):
        self.client.transport.loseWriteConnection()

    def client_lost(self):
        self.server.transport.loseConnection()

    def server_lost(self):
        self.client.transport.loseConnection()
