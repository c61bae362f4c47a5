"""
The downstream side: HTTP/1.1 requests from redirected clients.

L{ProxyChannel} parses the requests of one client connection, one at a time
(pipelined requests wait their turn), and hands each to an L{Exchange}, which
carries it to an upstream connection of the destination's pool and streams the
response back. Bodies flow piece by piece, each side pausing the other when
its write buffer fills.
"""

import itertools
from http.client import responses

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from origdst import accesslog, framing
from origdst.flow import BULK_BODY, Pauser, connect_flow, disconnect_flow, read_size
from origdst.headers import (
    LOOP_HEADER,
    informational_head,
    request_head,
    response_head,
    forwardable_trailers,
    wants_close,
    wants_upgrade,
)
from origdst.logs import debug_enabled, logger
from origdst.pool import OVERFLOW
from origdst.sockopt import host_key, plain_ip, socket_ip

log = logger("origdst.http")

HTTP11 = b"HTTP/1.1"
RESET_BEFORE_HEADERS = b"upstream connect error or disconnect/reset before headers. reset reason: "
NO_HEALTHY_UPSTREAM = b"no healthy upstream"
REQUEST_TIMEOUT = b"upstream request timeout"
HEADERS_TIMEOUT = b"request headers timeout"
STREAM_TIMEOUT = b"stream timeout"

# Stream ids: each request's log lines carry [C<connection>][S<stream>].
_streams = itertools.count(1)

# How long a client that sent Expect: 100-continue waits for the server's
# 100 before the proxy sends one (curl waits 1 s before sending anyway).
CONTINUE_AFTER = 1.0

# Why a client connection is not being read.
CONNECTING = "waiting for an upstream connection"
PIPELINE = "a pipelined request waits for the previous response"

# Requests that may be sent again when a reused connection turns out to have
# been closed by the server before it answered (RFC 9110 section 9.2.2).
IDEMPOTENT = frozenset([b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"])


class Refusal:
    """
    Why a connection will not be proxied, and what its client is answered.
    """

    __slots__ = ("status", "body")

    def __init__(self, status, body):
        self.status = status
        self.body = body


def parse_authority(authority, default_port=80):
    """
    @param authority: C{host[:port]}, an IPv6 host in brackets.
    @return: C{(host, port)} with C{host} a str (an IP address in plain form
        when it is one) and C{port} an int or C{default_port}; or C{None}
        when it is malformed.
    """
    text = authority.decode("latin-1")
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = text.partition(":")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return None
        port = int(port_text)
    else:
        port = default_port
    try:
        host = plain_ip(host)
    except ValueError:
        if not host or text.startswith("["):
            return None
    return host, port


def absolute_target(target, destination):
    """
    Turn an absolute-form target (C{http://host/path}, as proxy-aware clients
    send) into origin-form. The request still goes to its original
    destination, so an authority that names another IP address or port is
    refused rather than silently ignored; a name is not resolved, only made
    the Host header (RFC 9112 section 3.2.2).

    @return: C{(origin-form target, authority)}.
    @raise framing.BadMessage: for a malformed or disagreeing authority.
    """
    rest = target[7:]
    end = len(rest)
    for i, c in enumerate(rest):
        if c in (0x2F, 0x3F):  # "/" or "?"
            end = i
            break
    authority, path = rest[:end], rest[end:]
    parsed = parse_authority(authority) if authority and b"@" not in authority else None
    if parsed is None:
        raise framing.BadMessage(400, "malformed absolute-form target")
    host, port = parsed
    if _is_ip(host) and (host, port) != tuple(destination):
        raise framing.BadMessage(
            400, "absolute-form target disagrees with the original destination"
        )
    if not path.startswith(b"/"):
        path = b"/" + path
    return path, authority


@implementer(IHalfCloseableProtocol)
class ProxyChannel(Protocol):
    """
    One client connection.

    Half-closeable, so a client that shuts down its side after a request
    still gets the response, and a tunnel passes the half-close on.

    @ivar destination: C{(ip, port)} the client was really connecting to, or
        C{None} when the connection is refused.
    @ivar access_log: the L{origdst.accesslog.AccessLog} when it is on (the
        listener sets it), and C{log_record} the record of the last request
        head parsed.
    """

    access_log = None
    log_record = None

    def __init__(self, cluster, settings, reactor, tag, resolve, policy):
        """
        @param resolve: called with this channel once connected; returns
            C{(destination, refusal)}, one of them C{None}.
        @param policy: the L{origdst.policy.Policy} requests are checked with.
        """
        self.cluster = cluster
        self.policy = policy
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
        self.closing = False
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
        if self.tunnel is not None:
            # Through the upstream connection's send, which counts the bytes.
            self.tunnel.send((data,))
            return
        if self.closing:
            return
        reader = self.reader
        if reader is not None:
            try:
                data = reader.feed(data)
            except framing.BadMessage as e:
                self.reject(e)
                return
            if not reader.done:
                return
            self.reader = None
            read_size(self.transport, False)
            self.exchange.request_received(reader.trailers)
            if not data or self.closing:
                return
        self.buf = self.buf + data if self.buf else data
        self.next_request()

    def next_request(self):
        """
        Start the buffered request if none is in progress.
        """
        while self.exchange is None and not self.closing:
            buf = self.buf
            if buf[:1] in (b"\r", b"\n"):
                # RFC 9112 section 2.2: ignore empty lines before a request.
                buf = buf.lstrip(b"\r\n")
            end = buf.find(framing.HEAD_END)
            if end < 0 or end > self.max_head:
                self.buf = buf
                try:
                    framing.check_incomplete_head(buf[:end] if end > 0 else buf, self.max_head)
                except framing.BadMessage as e:
                    self.reject(e)
                    return
                if not buf:
                    self.idle_since = self.reactor.seconds()
                elif self.head_since is None:
                    self.head_since = self.reactor.seconds()
                return
            self.head_since = None
            self.buf = buf[end + 4 :]
            self.start_request(buf[:end])
        if self.buf and self.exchange is not None and self.reader is None:
            self.pauser.pause(PIPELINE)

    def start_request(self, head):
        try:
            method, target, version, fields = framing.parse_request_head(head)
            if self.access_log is not None:
                self.log_record = self.access_log.begin(self, method, target, version, fields)
            if len(fields) > self.settings.max_request_headers_count:
                raise framing.BadMessage(431, "too many request headers")
            index = framing.index(fields)
            kind, length = framing.request_framing(index, version)
            hosts = index.get(b"host", ())
            framing.check_host(hosts)
            if version == HTTP11 and not hosts:
                raise framing.BadMessage(400, "missing Host header")
            upgrade = wants_upgrade(method, version, index)
            if self.refusal is None:
                destination = self.route(index)
                if target[:7].lower() == b"http://":
                    target, authority = absolute_target(target, destination)
                    # The authority replaces Host where it stands (RFC 9112
                    # section 3.2.2), or comes first when there was none.
                    if hosts:
                        fields = [(n, authority) if n.lower() == b"host" else (n, v) for n, v in fields]
                    else:
                        fields.insert(0, (b"Host", authority))
                    index[b"host"] = [authority]
        except framing.BadMessage as e:
            self.reject(e)
            return
        if self.refusal is not None:
            self.local_reply(self.refusal.status, self.refusal.body, method=method)
            return
        if self.is_loop(index):
            self.local_reply(508, b"redirect loop detected", method=method)
            return
        ip, port = destination
        denied = self.policy.destination_denied(ip, port) or self.policy.host_denied(
            index.get(b"host", (b"",))[0]
        )
        if denied:
            log.info(
                "{tag} {method} {target} from {peer} to {dest} refused: {why}.",
                tag=self.tag,
                method=method.decode("latin-1"),
                target=target.decode("latin-1"),
                peer=_format(self.peer),
                dest=host_key(ip, port),
                why=denied,
            )
            self.local_reply(403, b"destination denied by egress policy", method=method)
            return
        timeout = self.settings.request_timeout
        if kind == framing.CHUNKED:
            frame = b"transfer-encoding: chunked\r\n"
        elif kind == framing.LENGTH:
            frame = b"content-length: %d\r\n" % length
        else:
            frame = b""
        if upgrade and method != b"CONNECT":
            # A CONNECT asks for a tunnel by its method (RFC 9110 section
            # 9.3.6), not by Upgrade.
            frame += b"connection: upgrade\r\nupgrade: " + upgrade + b"\r\n"
        if b"host" in index:
            host = b""
        else:
            host = (
                (f"[{ip}]" if ":" in ip else ip) + ("" if port == 80 else f":{port}")
            ).encode("ascii")
        upstream_head = request_head(
            method,
            target,
            fields,
            index,
            host,
            self.prefix,
            int(timeout * 1000),
            frame,
            self.policy.marker,
        )
        pool = self.cluster.host(ip, port).pool
        exchange = Exchange(self, pool, method, version, upstream_head, kind)
        exchange.upgrade = upgrade
        exchange.close_after = wants_close(version, index)
        # Bodies are streamed, not kept, so only a request without one can be
        # sent again; an Idempotency-Key marks any method as safe to repeat.
        exchange.replayable = kind == framing.NONE and (
            method in IDEMPOTENT or b"idempotency-key" in index
        )
        if kind != framing.NONE and version == HTTP11 and b"100-continue" in (
            v.lower() for v in index.get(b"expect", ())
        ):
            exchange.expect_continue()
        self.exchange = exchange
        if debug_enabled():
            log.debug(
                "{tag} {method} {target} to {key}.",
                tag=exchange.tag,
                method=method.decode("latin-1"),
                target=target.decode("latin-1"),
                key=pool.key,
            )
        reader = framing.BodyReader(kind, length, exchange.body_data)
        if reader.done:
            exchange.request_received(())
        else:
            self.reader = reader
            self.pauser.pause(CONNECTING)
            if kind == framing.CHUNKED or length > BULK_BODY:
                read_size(self.transport, True)
        pool.request(exchange)
        if self.exchange is exchange and self.reader is not None and self.buf:
            data, self.buf = self.buf, b""
            self.dataReceived(data)

    def route(self, index):
        """
        @return: where the request goes: the original destination, or with
            C{--use-original-dst-header} the one its header names.
        @raise framing.BadMessage: for an unusable override header.
        """
        if self.settings.use_original_dst_header:
            values = index.get(self.prefix + b"-original-dst-host")
            if values:
                override = parse_authority(values[0], None)
                if (
                    len(values) > 1
                    or override is None
                    or override[1] is None
                    or not _is_ip(override[0])
                ):
                    raise framing.BadMessage(
                        400, f"invalid {self.settings.header_prefix}-original-dst-host header"
                    )
                return override
        return self.destination

    def is_loop(self, index):
        """
        Whether this request is the proxy talking to itself: it comes from one
        of the proxy's own upstream connections (a REDIRECT rule without the
        owner match), or carries this proxy's loop marker (it went round
        through something else). Each is logged with its likely cause.
        """
        if self.cluster.is_own_upstream(*self.peer):
            log.warn(
                "{tag} redirect loop: the connection comes from origdst's own "
                "upstream connection to {dest}; the iptables rule lacks the "
                "owner match (-m owner ! --uid-owner <origdst's uid>). Answering 508.",
                tag=self.tag,
                dest=_format(self.destination),
            )
            return True
        if self.policy.marker in index.get(LOOP_HEADER, ()):
            log.warn(
                "{tag} redirect loop: a request from {peer} to {dest} has already "
                "passed through this proxy; check the iptables rules and any proxy "
                "it was forwarded through. Answering 508.",
                tag=self.tag,
                peer=_format(self.peer),
                dest=_format(self.destination),
            )
            return True
        return False

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
        self.pauser.resume(PIPELINE)
        self.idle_since = self.reactor.seconds()
        if self.buf:
            self.next_request()

    def start_tunnel(self, conn):
        """
        The server accepted an upgrade or a CONNECT: from now on bytes pass
        both ways unchanged, each side pausing the other when it falls
        behind, until either side closes. No timeout applies to a tunnel.
        """
        if self.access_log is not None:
            self.access_log.end(self.exchange)
        self.exchange = None
        self.tunnel = conn
        conn.start_tunnel(self)
        connect_flow(self.pauser, conn.transport)
        connect_flow(conn.pauser, self.transport)
        self.pauser.resume(PIPELINE)
        self.pauser.resume(CONNECTING)
        if self.buf:
            data, self.buf = self.buf, b""
            conn.send((data,))
        if self.read_closed:
            conn.transport.loseWriteConnection()

    def readConnectionLost(self):
        """
        The client shut down its sending side: a tunnel passes that on; a
        request already read is still answered, then the connection closes.
        """
        self.read_closed = True
        if self.tunnel is not None:
            self.tunnel.transport.loseWriteConnection()
        elif self.exchange is None or self.reader is not None or not self.exchange.request_done:
            self.close()
        else:
            self.exchange.close_after = True

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
        if self.closing or self.tunnel is not None:
            return
        now = self.reactor.seconds()
        settings = self.settings
        exchange = self.exchange
        if exchange is not None:
            deadline = exchange.check_deadlines(now)
        elif self.head_since is not None and settings.request_headers_timeout:
            deadline = self.head_since + settings.request_headers_timeout
            if now >= deadline:
                log.info(
                    "{tag} request head from {peer} not complete in time.",
                    tag=self.tag,
                    peer=_format(self.peer),
                )
                self.local_reply(408, HEADERS_TIMEOUT)
                return
        elif settings.idle_timeout and not self.buf:
            deadline = self.idle_since + settings.idle_timeout
            if now >= deadline:
                log.debug("{tag} closing idle connection.", tag=self.tag)
                self.close()
                return
        else:
            deadline = None
        if self.closing:
            return
        wait = self.timer_period
        if deadline is not None and deadline - now < wait:
            wait = deadline - now
        self.timer = self.reactor.callLater(wait, self._on_timer)

    def reject(self, error):
        """
        Answer a request that cannot be handled, and close: after a framing
        error nothing on the connection can be trusted. The body is Envoy's,
        the status's reason phrase; what was wrong goes to the logs.
        """
        log.info(
            "{tag} rejected a request from {peer}: {error}.",
            tag=self.tag,
            peer=_format(self.peer),
            error=error,
        )
        reason = responses.get(error.status, "Unknown").encode("ascii")
        self.local_reply(error.status, reason, details=error.reason)

    def local_reply(self, status, body, close=True, extra=b"", method=b"GET", details=None):
        """
        Answer the client from the proxy itself, in Envoy's plain-text form.
        """
        exchange = self.exchange
        if exchange is not None and exchange.response_started:
            # Too late for a reply: a response is under way (a request body
            # went bad while it streamed), so cut the connection, as Envoy
            # resets the stream.
            exchange.log_ending(accesslog.classify(status, body, exchange.retried, details))
            self.close()
            return
        stats = self.cluster.stats
        if self.exchange is None:
            # A request refused before it became an exchange counts here.
            stats.downstream_rq_total += 1
        stats.downstream_rq_xx[status // 100] += 1
        if status == 508:
            stats.redirect_loop += 1
        reason = responses.get(status, "Unknown").encode("ascii")
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-length: %d\r\ncontent-type: text/plain\r\n"
            b"server: %s\r\n%s%s\r\n"
            % (
                status,
                reason,
                len(body),
                self.server,
                extra,
                b"connection: close\r\n" if close else b"",
            )
        )
        self.transport.write(head if method == b"HEAD" else head + body)
        if self.access_log is not None:
            self.access_log.local_reply(self, status, body, method, details)
        if close:
            self.close()

    def close(self):
        """
        Close the client connection, ending any exchange still under way.
        """
        self.closing = True
        self.reader = None
        self._cancel_timers()
        if self.exchange is not None and self.access_log is not None:
            self.access_log.end(self.exchange, accesslog.LOCAL_DISCONNECT)
        self._abort_exchange()
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self.closing = True
        self.cluster.stats.downstream_cx_active -= 1
        self._cancel_timers()
        if self.exchange is not None and self.access_log is not None:
            self.access_log.end(self.exchange, accesslog.DOWNSTREAM_DISCONNECT)
        self._abort_exchange()
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None:
            tunnel.transport.loseConnection()

    def _cancel_timers(self):
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _abort_exchange(self):
        exchange = self.exchange
        self.exchange = None
        if exchange is not None:
            exchange.abort()


class Exchange:
    """
    One request and its response, from the moment the request head is parsed
    to the end of the response.

    @ivar conn: the upstream connection carrying it, once attached.
    @ivar replayable: safe to send again on a fresh connection.
    @ivar close_after: close the client connection after the response.
    """

    __slots__ = (
        "channel",
        "pool",
        "method",
        "version",
        "upstream_head",
        "chunked_in",
        "conn",
        "early",
        "request_done",
        "response_started",
        "chunked_out",
        "close_after",
        "replayable",
        "retried",
        "sent_at",
        "upgrade",
        "deadline",
        "active_at",
        "continued",
        "continue_timer",
        "tag",
        "log",
    )

    def __init__(self, channel, pool, method, version, upstream_head, kind):
        self.channel = channel
        self.pool = pool
        self.method = method
        self.version = version
        self.upstream_head = upstream_head
        self.chunked_in = kind == framing.CHUNKED
        self.conn = None
        self.early = []
        self.request_done = False
        self.response_started = False
        self.chunked_out = False
        self.close_after = False
        self.replayable = False
        self.retried = False
        self.sent_at = None
        self.deadline = None
        self.upgrade = None
        self.continued = False
        self.continue_timer = None
        self.active_at = channel.reactor.seconds()
        self.tag = "%s[S%d]" % (channel.tag, next(_streams))
        self.log = channel.log_record
        pool.stats.downstream_rq_total += 1

    # The request, from the client.

    def body_data(self, data):
        if self.log is not None:
            self.log.received += len(data)
        self.active_at = self.channel.reactor.seconds()
        pieces = framing.encode_chunk(data) if self.chunked_in else [data]
        if self.conn is not None:
            self.conn.send(pieces)
        else:
            self.early.extend(pieces)

    def request_received(self, trailers):
        """
        The whole request has been read from the client: the route timeout
        starts now.
        """
        self.request_done = True
        if self.chunked_in:
            last = framing.last_chunk(forwardable_trailers(trailers))
            if self.conn is not None:
                self.conn.send([last])
            else:
                self.early.append(last)
        conn = self.conn
        if conn is not None:
            conn.request_complete()
            disconnect_flow(self.channel.pauser, conn.transport)
        timeout = self.channel.settings.request_timeout
        if timeout:
            self.deadline = self.channel.reactor.seconds() + timeout

    # The upstream connection, from the pool.

    def attached(self, conn):
        self.conn = conn
        self.sent_at = self.channel.reactor.seconds()
        if self.early:
            conn.send(self.early)
            self.early = []
        if self.request_done:
            conn.request_complete()
        else:
            connect_flow(self.channel.pauser, conn.transport)
            self.channel.pauser.resume(CONNECTING)

    def failed(self, reason):
        """
        No upstream connection could be had: C{reason} is one of the pool's.
        """
        log.info(
            "{tag} upstream {key}: {reason}.", tag=self.tag, key=self.pool.key, reason=reason
        )
        extra = b""
        if reason == OVERFLOW:
            extra = self.channel.prefix + b"-overloaded: true\r\n"
        self.upstream_reply(503, RESET_BEFORE_HEADERS + reason.encode("ascii"), extra)

    # The response, from the upstream connection.

    def informational(self, status, reason, fields, index):
        if status == 100:
            if self.continued:
                return
            self.continued = True
        if self.version == HTTP11:
            self.channel.transport.write(informational_head(status, reason, fields, index))

    def expect_continue(self):
        """
        The client waits for C{100 Continue} before sending its body. The
        server's is passed on; if none came within a second (a server that
        ignores Expect, or a slow connect), the proxy sends one itself, and
        never a second one.
        """
        self.continue_timer = self.channel.reactor.callLater(CONTINUE_AFTER, self._send_continue)

    def _send_continue(self):
        self.continue_timer = None
        if not self.continued and not self.response_started:
            self.continued = True
            self.channel.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def response_head(self, status, reason, fields, index, kind, length):
        channel = self.channel
        if self.log is not None:
            self.log.response(status, channel.reactor.seconds() - self.sent_at)
        if status == 101 or (self.method == b"CONNECT" and status < 300):
            self.switch_protocols(status, reason, fields, index)
            return
        self.response_started = True
        stats = self.pool.stats
        stats.downstream_rq_xx[status // 100] += 1
        stats.upstream_rq_xx[status // 100] += 1
        if status >= 500:
            self.pool.rq_error += 1
        else:
            self.pool.rq_success += 1
        close = self.close_after or not self.request_done
        if kind == framing.LENGTH:
            frame = b"content-length: %d\r\n" % length
        elif kind == framing.NONE:
            frame = b""
            lengths = index.get(b"content-length")
            if lengths and (self.method == b"HEAD" or status == 304):
                frame = b"content-length: " + lengths[0] + b"\r\n"
        elif self.version == HTTP11:
            frame = b"transfer-encoding: chunked\r\n"
            self.chunked_out = True
        else:
            # An HTTP/1.0 client knows no chunked coding: the end of the body
            # is the end of the connection.
            frame = b""
            close = True
        if close:
            frame += b"connection: close\r\n"
        elif self.version != HTTP11:
            frame += b"connection: keep-alive\r\n"
        self.close_after = close
        service_ms = int((channel.reactor.seconds() - self.sent_at) * 1000)
        if debug_enabled():
            log.debug(
                "{tag} upstream headers complete: {status}, after {ms} ms.",
                tag=self.tag,
                status=status,
                ms=service_ms,
            )
        channel.transport.write(
            response_head(
                status, reason, fields, index, channel.server, channel.prefix, service_ms, frame
            )
        )
        connect_flow(self.conn.pauser, channel.transport)

    def switch_protocols(self, status, reason, fields, index):
        """
        The server accepted the client's upgrade (101) or CONNECT (2xx): pass
        its answer on and turn both connections into one tunnel.
        """
        if not self.upgrade:
            self.conn.bad_response(
                framing.BadMessage(502, "switching protocols without an upgrade request")
            )
            return
        channel = self.channel
        self.response_started = True
        self.pool.stats.downstream_rq_xx[status // 100] += 1
        self.pool.stats.upstream_rq_xx[status // 100] += 1
        self.pool.rq_success += 1
        frame = b""
        if status == 101:
            protocol = index.get(b"upgrade", [self.upgrade])[0]
            frame = b"connection: upgrade\r\nupgrade: " + protocol + b"\r\n"
        service_ms = int((channel.reactor.seconds() - self.sent_at) * 1000)
        channel.transport.write(
            response_head(
                status, reason, fields, index, channel.server, channel.prefix, service_ms, frame
            )
        )
        log.debug("{tag} tunnel to {key} open.", tag=self.tag, key=self.pool.key)
        conn = self.conn
        self._release()
        channel.start_tunnel(conn)

    def check_deadlines(self, now):
        """
        Called by the connection's timer: end the exchange if its route
        timeout or stream idle timeout passed.

        @return: the next deadline, or C{None}.
        """
        if self.deadline is not None and now >= self.deadline:
            self.timed_out()
            return None
        timeout = self.channel.settings.stream_idle_timeout
        if timeout:
            idle_deadline = self.active_at + timeout
            if now >= idle_deadline:
                self.idle_timed_out()
                return None
            if self.deadline is None or idle_deadline < self.deadline:
                return idle_deadline
        return self.deadline

    def idle_timed_out(self):
        """
        The stream idle timeout: no byte either way for that long ends the
        exchange, with a 408 while the response has not begun.
        """
        log.info("{tag} upstream {key}: stream idle timeout.", tag=self.tag, key=self.pool.key)
        channel = self.channel
        self.abort()
        if self.response_started:
            self.log_ending(accesslog.LATE_IDLE_TIMEOUT)
            channel.close()
        else:
            channel.local_reply(408, STREAM_TIMEOUT, method=self.method)

    def response_data(self, data):
        if self.log is not None:
            self.log.sent += len(data)
        self.active_at = self.channel.reactor.seconds()
        if self.chunked_out:
            self.channel.transport.writeSequence(framing.encode_chunk(data))
        else:
            self.channel.transport.write(data)

    def response_end(self, trailers):
        if self.chunked_out:
            self.channel.transport.write(framing.last_chunk(forwardable_trailers(trailers)))
        self._release()
        if debug_enabled():
            log.debug("{tag} response complete.", tag=self.tag)
        self.channel.exchange_done(self)

    def upstream_lost(self, response_started, reused):
        """
        The upstream connection closed before the response was complete.
        """
        self.conn = None
        if self.response_started:
            self.log_ending(accesslog.LATE_TERMINATION)
            self._release()
            self.channel.close()
        elif reused and not response_started and self.replayable and not self.retried:
            # The server closed an idle keep-alive connection just as it was
            # reused: nothing was processed, so send it once more, fresh.
            log.debug("{tag} reused connection was closed; retrying.", tag=self.tag)
            self.retried = True
            self.pool.stats.upstream_rq_retry += 1
            self.pool.request(self, fresh=True)
        else:
            self.upstream_reply(503, RESET_BEFORE_HEADERS + b"connection termination")

    def upstream_failed(self, error):
        """
        The upstream sent something that is not a valid response.
        """
        log.info("{tag} upstream {key}: {error}.", tag=self.tag, key=self.pool.key, error=error)
        self.conn = None
        if self.response_started:
            self.log_ending(accesslog.LATE_PROTOCOL_ERROR)
            self._release()
            self.channel.close()
        else:
            self.upstream_reply(502, RESET_BEFORE_HEADERS + b"protocol error")

    def timed_out(self):
        self.deadline = None
        self.pool.stats.upstream_rq_timeout += 1
        self.pool.rq_timeout += 1
        log.info("{tag} upstream {key}: request timeout.", tag=self.tag, key=self.pool.key)
        if self.response_started:
            self.log_ending(accesslog.LATE_TIMEOUT)
            self.abort()
            self.channel.close()
        else:
            self.upstream_reply(504, REQUEST_TIMEOUT)

    # Ending.

    def log_ending(self, ending):
        """
        Tell the access log why the exchange is being cut short.
        """
        if self.log is not None:
            self.log.ending = ending

    def upstream_reply(self, status, body, extra=b""):
        """
        A local reply caused by the upstream; the client connection is closed
        after it, as Envoy does, so the client does not reuse it blindly.
        Envoy charges it to the cluster as an upstream response of its status.
        """
        self.pool.stats.upstream_rq_xx[status // 100] += 1
        self.pool.rq_error += 1
        self.abort()
        self.channel.local_reply(status, body, extra=extra, method=self.method)

    def abort(self):
        """
        End the exchange before its response is complete.
        """
        conn = self.conn
        self._release()
        if conn is not None:
            conn.abort()
        else:
            self.pool.cancel(self)

    def _release(self):
        self.deadline = None
        if self.continue_timer is not None:
            self.continue_timer.cancel()
            self.continue_timer = None
        conn = self.conn
        if conn is not None:
            channel = self.channel
            disconnect_flow(channel.pauser, conn.transport)
            disconnect_flow(conn.pauser, channel.transport)
            self.conn = None
        self.channel.pauser.resume(CONNECTING)


def _is_ip(host):
    try:
        plain_ip(host)
    except ValueError:
        return False
    return True


def _format(address):
    return "?" if address is None else host_key(*address)
