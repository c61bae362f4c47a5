"""
The downstream side: HTTP/1.1 requests from redirected clients.

L{ProxyChannel} reads the requests of one client connection, one at a time
(pipelined requests wait their turn), asks L{origdst.admission} whether each
is forwarded, and hands each admitted one to an L{origdst.exchange.Exchange},
which carries it upstream and streams the response back. What the proxy
answers itself goes through L{origdst.localreply}.
"""

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from origdst import accesslog, framing, heads, replies
from origdst.addresses import describe, socket_ip
from origdst.admission import Admitted
from origdst.exchange import CONNECTING_REASON, Exchange
from origdst.flow import BULK_BODY, Pauser, read_size
from origdst.interfaces import IClientChannel
from origdst.localreply import LocalReplies
from origdst.logs import debug_enabled, logger
from origdst.tunnel import Tunnel

# The HTTP data path's log namespace, as before it had several modules.
log = logger("origdst.http")

# Why a client connection is not being read.
PIPELINE = "a pipelined request waits for the previous response"

# The states of a client connection (see ProxyChannel).
IDLE = "IDLE"
HEAD = "HEAD"
BODY = "BODY"
AWAITING = "AWAITING"
TUNNEL = "TUNNEL"
CLOSED = "CLOSED"


@implementer(IHalfCloseableProtocol, IClientChannel)
class ProxyChannel(LocalReplies, Protocol):
    """
    One client connection; its local replies are L{origdst.localreply}'s.

    Half-closeable, so a client that shuts down its side after a request
    still gets the response, and a tunnel passes the half-close on.

    @ivar state: what the connection is doing. Possible values:

         - C{IDLE}: no request under way and no byte of one buffered; the
           idle timeout runs from C{idle_since}.

         - C{HEAD}: part of a request head is buffered; the request headers
           timeout runs from C{head_since}.

         - C{BODY}: a request was admitted and its body is being read by
           C{reader} and streamed to C{exchange}.

         - C{AWAITING}: the request has been read; its response is under way
           in C{exchange}. Pipelined bytes wait in C{buf}, the client paused.

         - C{TUNNEL}: an upgrade or CONNECT succeeded; bytes pass through
           C{tunnel} until either side closes.

         - C{CLOSED}: the connection is closing or gone; nothing more is read
           or answered.

       C{AWAITING} returns to C{IDLE} when the response is complete (or to
       C{HEAD} straight away for a pipelined request); any state may end in
       C{CLOSED}, and C{BODY} or C{AWAITING} may become C{TUNNEL}.

    @ivar read_closed: the client has shut down its sending side; tracked
        apart from C{state}, since a half-closed client still gets its
        response.
    @ivar destination: C{(ip, port)} the client was really connecting to, or
        C{None} when the connection is refused (C{refusal}, a
        L{origdst.replies.Reply}, says why).
    @ivar access_log: the L{origdst.accesslog.AccessLog} when it is on (the
        listener sets it), and C{log_record} the record of the last request
        head parsed.
    """

    state = IDLE
    access_log = None
    log_record = None
    # The listener's L{origdst.drain.Connections}, and whether a drain began.
    connections = None
    draining = False

    def __init__(self, cluster, settings, reactor, tag, resolve, admission):
        """
        @param resolve: called with this channel once connected; returns
            C{(destination, refusal)}, one of them C{None}.
        @param admission: the L{origdst.admission.Admission} requests are
            checked with.
        """
        self.cluster = cluster
        # The (local, remote) addresses of the proxy's own upstream connections
        # (the cluster's set, kept by its pools): a client connection with the
        # same two addresses is a loop.
        self.own_addresses = cluster.own_addresses
        self.admission = admission
        self.settings = settings
        self.reactor = reactor
        self.tag = tag
        self.resolve = resolve
        self.destination = None
        self.refusal = None
        self.peer = None
        self.pauser = None
        self.exchange = None
        self.reader = None
        self.tunnel = None
        self.read_closed = False
        self.buf = b""
        # One timer per connection serves every client-side timeout (see
        # _on_timer): it is re-armed lazily, so a request costs no timer work.
        self.timer = None
        self.idle_since = 0.0
        self.head_since = None
        self.timer_period = min(
            [t for t in (
                settings.idle_timeout,
                settings.request_headers_timeout,
                settings.stream_idle_timeout,
                settings.request_timeout,
            ) if t] or [0]
        )
        self.max_head = settings.max_request_headers_kb * 1024
        self.server = settings.server_name.encode("latin-1")
        self.prefix = settings.header_prefix.encode("ascii")
        self.via = b"1.1 " + settings.via.encode("ascii") if settings.via else None

    def connectionMade(self):
        self.pauser = Pauser(self.transport)
        stats = self.cluster.stats
        stats.downstream_cx_total += 1
        stats.downstream_cx_active += 1
        peer = self.transport.getPeer()
        self.peer = (socket_ip(peer.host), peer.port)
        self.destination, self.refusal = self.resolve(self)
        self.idle_since = self.reactor.seconds()
        if self.timer_period:
            self.timer = self.reactor.callLater(self.timer_period, self._on_timer)

    def dataReceived(self, data):
        state = self.state
        if state is BODY:
            reader = self.reader
            try:
                data = reader.feed(data)
            except framing.BadMessage as e:
                self.reject(e)
                return
            if not reader.done:
                return
            self.reader = None
            self.state = AWAITING
            read_size(self.transport, False)
            self.exchange.request_received(reader.trailers)
            if not data or self.state is CLOSED:
                return
        elif state is TUNNEL:
            self.tunnel.from_client(data)
            return
        elif state is CLOSED:
            return
        self.buf = self.buf + data if self.buf else data
        self.next_request()

    def next_request(self):
        """
        Start the buffered request if none is in progress.
        """
        state = self.state
        while state is IDLE or state is HEAD:
            buf = self.buf
            if buf[:1] in (b"\r", b"\n"):
                # RFC 9112 section 2.2: ignore empty lines before a request.
                buf = buf.lstrip(b"\r\n")
            end = buf.find(heads.HEAD_END)
            if end < 0 or end > self.max_head:
                self.buf = buf
                try:
                    heads.check_incomplete_head(buf[:end] if end > 0 else buf, self.max_head)
                except framing.BadMessage as e:
                    self.reject(e)
                    return
                if not buf:
                    self.idle_since = self.reactor.seconds()
                    self.state = IDLE
                elif state is IDLE:
                    self.head_since = self.reactor.seconds()
                    self.state = HEAD
                return
            self.head_since = None
            self.buf = buf[end + 4 :]
            self.start_request(buf[:end])
            state = self.state
        if self.buf and state is AWAITING:
            self.pauser.pause(PIPELINE)

    def start_request(self, head):
        """
        Admit the request whose head is C{head}, or answer it locally.
        """
        peer = self.peer
        decision = self.admission.admit(
            head, self.destination, self.refusal, peer,
            (peer, self.destination) in self.own_addresses,
        )
        if decision.parsed is not None and self.access_log is not None:
            self.log_record = self.access_log.begin(self, *decision.parsed)
        if decision.__class__ is not Admitted:
            if decision.note is not None:
                log.emit(decision.level, "{tag} {note}", tag=self.tag, note=decision.note)
            self.local_reply(decision.reply, method=decision.method)
            return
        ip, port = decision.destination
        pool = self.cluster.host(ip, port, decision.tls_name).pool
        exchange = self.exchange = Exchange(self, pool, decision)
        if self.draining:
            exchange.close_after = True
        if debug_enabled():
            log.debug(
                "{tag} {method} {target} to {key}.",
                tag=exchange.tag,
                method=decision.method.decode("latin-1"),
                target=decision.target.decode("latin-1"),
                key=pool.key,
            )
        kind, length = decision.kind, decision.length
        if kind == framing.NONE or (kind == framing.LENGTH and not length):
            # No body to read (most requests): no reader to make.
            self.state = AWAITING
            exchange.request_received(())
        else:
            self.reader = framing.BodyReader(kind, length, exchange.body_data)
            self.state = BODY
            self.pauser.pause(CONNECTING_REASON)
            if kind == framing.CHUNKED or length > BULK_BODY:
                read_size(self.transport, True)
        pool.request(exchange)
        if self.state is BODY and self.exchange is exchange and self.buf:
            data, self.buf = self.buf, b""
            self.dataReceived(data)

    def exchange_done(self, exchange):
        """
        The response to the current request is complete.
        """
        self.exchange = None
        if self.access_log is not None:
            self.access_log.end(exchange)
        if exchange.close_after or self.read_closed:
            self.close()
            return
        self.state = IDLE
        self.pauser.resume(PIPELINE)
        self.idle_since = self.reactor.seconds()
        if self.buf:
            self.next_request()

    def start_tunnel(self, conn):
        """
        The server accepted an upgrade or a CONNECT: from now on bytes pass
        both ways unchanged (L{origdst.tunnel}).
        """
        if self.access_log is not None:
            self.access_log.end(self.exchange)
        self.exchange = None
        self.reader = None
        self.state = TUNNEL
        self.tunnel = Tunnel(self, conn)
        self.pauser.resume(PIPELINE)
        self.pauser.resume(CONNECTING_REASON)
        early, self.buf = self.buf, b""
        self.tunnel.open(early, self.read_closed)

    def drain(self):
        """
        The proxy drains (L{origdst.drain}): an idle connection closes now;
        the request under way, and any begun later, is answered with
        C{connection: close}, then the connection closes.
        """
        self.draining = True
        if self.state is IDLE:
            self.close()
        elif self.exchange is not None:
            self.exchange.close_after = True

    def readConnectionLost(self):
        """
        The client shut down its sending side: a tunnel passes that on; a
        request already read is still answered, then the connection closes.
        """
        self.read_closed = True
        state = self.state
        if state is TUNNEL:
            self.tunnel.client_read_closed()
        elif state is AWAITING:
            self.exchange.close_after = True
        else:
            self.close()

    def writeConnectionLost(self):
        if self.read_closed:
            self.transport.loseConnection()

    def _on_timer(self):
        """
        Check every client-side deadline of this connection, act on the one
        that passed, and re-arm.

        Every deadline is set at least C{timer_period} (the shortest timeout)
        after the moment it is set, so a timer that fires at most one period
        after it was armed is never late: requests just record times, and the
        timer catches up when it fires.
        """
        self.timer = None
        state = self.state
        if state is CLOSED or state is TUNNEL:
            return
        now = self.reactor.seconds()
        settings = self.settings
        if state is BODY or state is AWAITING:
            deadline = self.exchange.check_deadlines(now)
        elif state is HEAD and settings.request_headers_timeout:
            deadline = self.head_since + settings.request_headers_timeout
            if now >= deadline:
                log.info(
                    "{tag} request head from {peer} not complete in time.",
                    tag=self.tag,
                    peer=describe(self.peer),
                )
                self.local_reply(replies.HEADERS_TIMEOUT)
                return
        elif state is IDLE and settings.idle_timeout:
            deadline = self.idle_since + settings.idle_timeout
            if now >= deadline:
                log.debug("{tag} closing idle connection.", tag=self.tag)
                self.close()
                return
        else:
            deadline = None
        if self.state is CLOSED:
            return
        wait = self.timer_period
        if deadline is not None and deadline - now < wait:
            wait = deadline - now
        self.timer = self.reactor.callLater(wait, self._on_timer)

    def close(self):
        """
        Close the client connection, ending any exchange still under way.
        """
        if self.state is CLOSED:
            return
        self.state = CLOSED
        self.reader = None
        self._cancel_timers()
        if self.exchange is not None and self.access_log is not None:
            self.access_log.end(self.exchange, accesslog.LOCAL_DISCONNECT)
        self._abort_exchange()
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self.state = CLOSED
        self.cluster.stats.downstream_cx_active -= 1
        if self.connections is not None:
            self.connections.discard(self)
        self._cancel_timers()
        if self.exchange is not None and self.access_log is not None:
            self.access_log.end(self.exchange, accesslog.DOWNSTREAM_DISCONNECT)
        self._abort_exchange()
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None:
            tunnel.client_lost()

    def _cancel_timers(self):
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _abort_exchange(self):
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.abort()
