"""
One HTTP/1.1 keep-alive connection to an original destination.

It carries one exchange at a time: it writes the request head and the body
pieces the exchange hands it, reads the response head and body, and tells the
exchange about each. Between exchanges it sits idle in its pool.
"""

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ClientFactory, Protocol
from zope.interface import implementer

from origdst import framing, heads, rawcopy
from origdst.flow import BULK_BODY, Pauser, read_size, write
from origdst.headers import wants_close
from origdst.interfaces import IUpstreamConnection

# A response head larger than this is an upstream error, not a head.
MAX_RESPONSE_HEAD = 64 * 1024


@implementer(IHalfCloseableProtocol, IUpstreamConnection)
class UpstreamProtocol(Protocol):
    """
    The client side of one upstream connection.

    Half-closeable so that a tunnel passes the server's half-close on; an
    HTTP exchange treats it as the end of the connection.

    @ivar exchange: the exchange being carried, or C{None} while idle.
    @ivar tunnel: the L{origdst.tunnel.Tunnel} this connection is half of,
        once an upgrade or CONNECT succeeded; it then only relays bytes.
    @ivar reused: this connection has carried an exchange before the current
        one, so a close before any response byte may be a keep-alive race.
    """

    def __init__(self, pool):
        self.pool = pool
        self.exchange = None
        self.tunnel = None
        self.pauser = None
        self.reused = False
        self.reusable = True
        self.request_sent = False
        self.idle_since = 0.0
        self.local_address = None
        self._buf = b""
        self._reader = None
        self._got_bytes = False
        self._bulk = False
        self._method = b"GET"

    def connectionMade(self):
        self.pauser = Pauser(self.transport)
        self.pool.connection_made(self)

    def start(self, exchange):
        """
        Carry C{exchange}: send its request head now.
        """
        self.exchange = exchange
        self._method = exchange.method
        self._got_bytes = False
        self.request_sent = False
        head = exchange.upstream_head
        pool = self.pool
        pool.rq_total += 1
        pool.tx_bytes += len(head)
        stats = pool.stats
        stats.upstream_rq_total += 1
        stats.upstream_cx_tx_bytes_total += len(head)
        write(self.transport, head)
        exchange.attached(self)

    def send(self, pieces):
        """
        Send request body pieces, already framed.
        """
        size = 0
        for piece in pieces:
            size += len(piece)
        self.pool.tx_bytes += size
        self.pool.stats.upstream_cx_tx_bytes_total += size
        self.transport.writeSequence(pieces)

    def request_complete(self):
        """
        The whole request has been written; the connection can be reused once
        the response is complete too.
        """
        self.request_sent = True

    def start_tunnel(self, tunnel):
        """
        Relay bytes through C{tunnel} from now on; never reused.
        """
        self.exchange = None
        self.reusable = False
        self.tunnel = tunnel

    def abort(self):
        """
        Drop the connection and its exchange: the exchange ended abnormally,
        so what the server still sends could not be matched to a request.
        """
        rawcopy.stop(self.transport)
        self.exchange = None
        self.reusable = False
        self.transport.abortConnection()

    def _count(self, n):
        pool = self.pool
        pool.rx_bytes += n
        pool.stats.upstream_cx_rx_bytes_total += n

    def dataReceived(self, data):
        self._count(len(data))
        if self.tunnel is not None:
            self.tunnel.from_server(data)
            return
        if self.exchange is None:
            # A server speaking out of turn on an idle connection: nothing can
            # be matched to it, so the connection cannot be trusted any more.
            self.reusable = False
            self.transport.loseConnection()
            return
        self._got_bytes = True
        if self._reader is None:
            data = self._read_head(data)
            if data is None:
                return
        reader = self._reader
        try:
            rest = reader.feed(data)
        except framing.BadMessage as e:
            self.bad_response(e)
            return
        if reader.done:
            self._finish(rest, reader.trailers)

    def _read_head(self, data):
        """
        Parse response heads (any 1xx, then the final one).

        @return: the bytes after the final head, or C{None} when the head is
            not complete yet or the connection was given up.
        """
        buf = self._buf + data if self._buf else data
        while True:
            end = buf.find(heads.HEAD_END)
            if end < 0 or end > MAX_RESPONSE_HEAD:
                if len(buf) > MAX_RESPONSE_HEAD:
                    self.bad_response(framing.BadMessage(502, "response head too large"))
                    return None
                try:
                    heads.check_incomplete_response_head(buf)
                except framing.BadMessage as e:
                    self.bad_response(e)
                    return None
                self._buf = buf
                return None
            head, buf = buf[:end], buf[end + 4 :]
            try:
                version, status, reason, fields = heads.parse_response_head(head)
                index = heads.index(fields)
                kind, length = framing.response_framing(self._method, status, index)
            except framing.BadMessage as e:
                self.bad_response(e)
                return None
            if status < 200 and status != 101:
                self.exchange.informational(status, reason, fields, index)
                if self.exchange is None:
                    return None
                continue
            self._buf = b""
            if status == 101 or wants_close(version, index) or kind == framing.CLOSE:
                self.reusable = False
            self._bulk = kind != framing.NONE and (kind != framing.LENGTH or length > BULK_BODY)
            if self._bulk:
                read_size(self.transport, True)
            if kind == framing.LENGTH and len(buf) >= length and not self._bulk:
                # The whole (small) body came with the head, as it does from
                # most servers: it goes to the client with the head, in one
                # write instead of two, and needs no reader.
                body, buf = buf[:length], buf[length:]
                self.exchange.response_head(status, reason, fields, index, kind, length, body)
                if self.exchange is not None:
                    self._finish(buf, ())
                return None
            self._reader = framing.BodyReader(kind, length, self._on_body)
            self.exchange.response_head(status, reason, fields, index, kind, length)
            if self.tunnel is not None:
                if buf:
                    self.tunnel.from_server(buf)
                return None
            if self.exchange is None:
                return None
            if self._bulk and kind == framing.LENGTH:
                self._start_raw()
            return buf

    def _start_raw(self):
        """
        Move the rest of a large length-framed body raw where it can be
        (L{origdst.rawcopy}: under PyPy).
        """
        sink = self.exchange.response_sink()
        if sink is not None and rawcopy.usable(self.transport, sink):
            rawcopy.start(self.transport, self._raw_limit, self._raw_received)

    def _raw_limit(self):
        reader = self._reader
        if self.exchange is None or reader is None or reader.done:
            return 0
        return reader.remaining

    def _raw_received(self, n):
        self._count(n)
        reader = self._reader
        reader.consumed(n)
        self.exchange.response_forward(n)
        if reader.done and self._reader is reader:
            self._finish(b"", reader.trailers)

    def _on_body(self, data):
        exchange = self.exchange
        if exchange is not None:
            exchange.response_data(data)

    def bad_response(self, error):
        exchange = self.exchange
        self.abort()
        if exchange is not None:
            exchange.upstream_failed(error)

    def _finish(self, rest, trailers):
        exchange = self.exchange
        self._reader = None
        self.exchange = None
        self.reused = True
        if self._bulk:
            self._bulk = False
            rawcopy.stop(self.transport)
            read_size(self.transport, False)
        if rest:
            # Bytes after a complete response belong to no request.
            self.reusable = False
        if exchange is not None:
            exchange.response_end(trailers)
        if self.reusable and self.request_sent:
            self.pool.release(self)
        else:
            self.reusable = False
            self.transport.loseConnection()

    def readConnectionLost(self):
        if self.tunnel is not None:
            self.tunnel.server_read_closed()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.reusable = False
        self.pool.connection_lost(self)
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None:
            tunnel.server_lost()
            return
        exchange = self.exchange
        if exchange is None:
            return
        if self._reader is not None and self._reader.kind == framing.CLOSE:
            self._finish(b"", self._reader.trailers)
            return
        self.exchange = None
        exchange.upstream_lost(
            response_started=self._got_bytes, reused=self.reused
        )


class UpstreamFactory(ClientFactory):
    """
    Builds the connections of one pool and reports failed attempts to it.
    """

    protocol = UpstreamProtocol
    noisy = False

    def __init__(self, pool):
        self.pool = pool

    def buildProtocol(self, addr):
        return UpstreamProtocol(self.pool)

    def clientConnectionFailed(self, connector, reason):
        self.pool.connection_failed(reason)
