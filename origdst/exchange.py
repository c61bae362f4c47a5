"""
One request and its response.

An L{Exchange} is made for each admitted request. Its pool attaches it to an
upstream connection; it relays the request body up and the response down
piece by piece, each side pausing the other when its write buffer fills,
answers C{Expect: 100-continue}, sends a request again once when a reused
connection turns out to have been closed, and turns the upstream's failures
into local replies.
"""

import itertools

from zope.interface import implementer

from origdst import accesslog, framing, rawcopy, replies
from origdst.flow import connect_flow, disconnect_flow, write
from origdst.headers import forwardable_trailers, informational_head, response_head
from origdst.interfaces import IExchange
from origdst.logs import debug_enabled, logger
from origdst.tunnel import switch_protocols

# The HTTP data path's log namespace, as before it had several modules.
log = logger("origdst.http")

# Stream ids: each request's log lines carry [C<connection>][S<stream>].
_streams = itertools.count(1)

# How long a client that sent Expect: 100-continue waits for the server's
# 100 before the proxy sends one (curl waits 1 s before sending anyway).
CONTINUE_AFTER = 1.0

# Why a client connection is not being read.
CONNECTING_REASON = "waiting for an upstream connection"

# The states of an exchange (see Exchange).
CONNECTING = "CONNECTING"
SENDING = "SENDING"
AWAITING_HEAD = "AWAITING_HEAD"
RESPONDING = "RESPONDING"
DONE = "DONE"


@implementer(IExchange)
class Exchange:
    """
    One request and its response, from the moment the request head is
    admitted to the end of the response.

    @ivar state: the exchange's progress. Possible values:

         - C{CONNECTING}: waiting in the pool for an upstream connection (a
           connect under way, or all connections busy). Request body pieces
           are kept in C{early}. A retry returns here.

         - C{SENDING}: attached to C{conn}, the request head sent; the body
           still streams from the client.

         - C{AWAITING_HEAD}: the whole request is sent; waiting for the
           response head (1xx responses are passed on meanwhile).

         - C{RESPONDING}: the response head went to the client; its body
           streams. The request body may still be streaming (an early
           response), and the client connection then closes after it.

         - C{DONE}: the response is complete, the exchange became a tunnel,
           a local reply was sent, or it was cut short. Nothing more
           happens: L{abort} is a no-op, so one end is never undone twice.

    @ivar request_done: the whole request has been read from the client;
        the route timeout starts then. It is tracked apart from C{state}
        because the request side and the response side overlap.
    @ivar conn: the L{origdst.interfaces.IUpstreamConnection} carrying it,
        while attached.
    @ivar replayable: safe to send again on a fresh connection.
    @ivar close_after: close the client connection after the response.
    """

    __slots__ = (
        "state", "channel", "pool", "method", "version", "upstream_head", "chunked_in",
        "conn", "early", "request_done", "chunked_out", "close_after", "replayable",
        "retried", "sent_at", "upgrade", "deadline", "active_at", "continued",
        "continue_timer", "stream", "log", "started", "done_at",
    )

    def __init__(self, channel, pool, request):
        """
        @param channel: the L{origdst.interfaces.IClientChannel}.
        @param request: the L{origdst.admission.Admitted} request.
        """
        self.state = CONNECTING
        self.channel = channel
        self.pool = pool
        self.method = request.method
        self.version = request.version
        self.upstream_head = request.upstream_head
        self.chunked_in = request.kind == framing.CHUNKED
        self.upgrade = request.upgrade
        self.close_after = request.close_after
        self.replayable = request.replayable
        self.conn = None
        self.early = []
        self.request_done = False
        self.chunked_out = False
        self.retried = False
        self.sent_at = self.done_at = None
        self.deadline = None
        self.continued = False
        self.continue_timer = None
        self.active_at = self.started = channel.reactor.seconds()
        self.stream = next(_streams)
        self.log = channel.log_record
        pool.stats.downstream_rq_total += 1
        if request.expect_continue:
            self.expect_continue()

    @property
    def tag(self):
        """
        The log tag, C{[C<n>][S<m>]}: made only when a line is logged.
        """
        return "%s[S%d]" % (self.channel.tag, self.stream)

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
        """The whole request has been read: the route timeout and upstream_rq_time start."""
        self.request_done = True
        if self.chunked_in:
            last = framing.last_chunk(forwardable_trailers(trailers))
            if self.conn is not None:
                self.conn.send([last])
            else:
                self.early.append(last)
        conn = self.conn
        if conn is not None:
            if self.state is SENDING:
                self.state = AWAITING_HEAD
            conn.request_complete()
            disconnect_flow(self.channel.pauser, conn.transport)
        self.done_at = now = self.channel.reactor.seconds()
        timeout = self.channel.settings.request_timeout
        if timeout:
            self.deadline = now + timeout

    # The upstream connection, from the pool.

    def attached(self, conn):
        self.conn = conn
        self.sent_at = self.channel.reactor.seconds()
        if self.early:
            conn.send(self.early)
            self.early = []
        if self.request_done:
            self.state = AWAITING_HEAD
            conn.request_complete()
        else:
            self.state = SENDING
            connect_flow(self.channel.pauser, conn.transport)
            self.channel.pauser.resume(CONNECTING_REASON)

    def failed(self, reply):
        log.info(
            "{tag} upstream {key}: {reason}.", tag=self.tag, key=self.pool.key, reason=reply.reason
        )
        self.upstream_reply(reply)

    # The response, from the upstream connection.

    def informational(self, status, reason, fields, index):
        if status == 100:
            if self.continued:
                return
            self.continued = True
        if self.version == b"HTTP/1.1":
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
        if not self.continued and self.state is not RESPONDING:
            self.continued = True
            self.channel.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def response_head(self, status, reason, fields, index, kind, length, body=None):
        channel = self.channel
        now = channel.reactor.seconds()
        if self.log is not None:
            self.log.response(status, now - self.sent_at)
        if status == 101 or (self.method == b"CONNECT" and status < 300):
            switch_protocols(self, status, reason, fields, index)
            return
        self.state = RESPONDING
        pool = self.pool
        stats = pool.stats
        stats.downstream_rq_xx[status // 100] += 1
        stats.upstream_rq_xx[status // 100] += 1
        if status >= 500:
            pool.rq_error += 1
        else:
            pool.rq_success += 1
        close = self.close_after or not self.request_done
        if kind == framing.LENGTH:
            frame = b"content-length: %d\r\n" % length
        elif kind == framing.NONE:
            frame = b""
            lengths = index.get(b"content-length")
            if lengths and (self.method == b"HEAD" or status == 304):
                frame = b"content-length: " + lengths[0] + b"\r\n"
        elif self.version == b"HTTP/1.1":
            frame = b"transfer-encoding: chunked\r\n"
            self.chunked_out = True
        else:
            # An HTTP/1.0 client knows no chunked coding: the end of the body
            # is the end of the connection.
            frame = b""
            close = True
        if close:
            frame += b"connection: close\r\n"
        elif self.version != b"HTTP/1.1":
            frame += b"connection: keep-alive\r\n"
        self.close_after = close
        service_ms = int((now - self.sent_at) * 1000)
        head = response_head(
            status, reason, fields, index, channel.server, channel.prefix, service_ms, frame,
            channel.via,
        )
        if body is not None:
            if self.log is not None:
                self.log.sent += len(body)
            self.active_at = now
            head += body
        write(channel.transport, head)
        if debug_enabled():
            log.debug(
                "{tag} upstream headers complete: {status}, after {ms} ms.",
                tag=self.tag,
                status=status,
                ms=service_ms,
            )
        if body is None:
            # More of the body is to come: a full client buffer pauses the
            # upstream until it drains. (A whole body was just written.)
            connect_flow(self.conn.pauser, channel.transport)

    def response_data(self, data):
        self._responding(len(data))
        if self.chunked_out:
            self.channel.transport.writeSequence(framing.encode_chunk(data))
        else:
            write(self.channel.transport, data)

    def response_sink(self):
        if self.chunked_out or self.state != RESPONDING:
            return None
        return self.channel.transport

    def response_forward(self, n):
        self._responding(n)
        rawcopy.forward(self.channel.transport, n, self.conn.pauser)

    def _responding(self, n):
        if self.log is not None:
            self.log.sent += n
        self.active_at = self.channel.reactor.seconds()

    def response_end(self, trailers):
        if self.chunked_out:
            self.channel.transport.write(framing.last_chunk(forwardable_trailers(trailers)))
        self.finish()
        self.pool.stats.responded(self.started, self.done_at, self.channel.reactor.seconds())
        if debug_enabled():
            log.debug("{tag} response complete.", tag=self.tag)
        self.channel.exchange_done(self)

    # Timeouts, from the client connection's timer.

    def check_deadlines(self, now):
        """
        End the exchange if its route or stream idle timeout passed; @return:
        the next deadline, or C{None}.
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
        if self.state is RESPONDING:
            self._cut(accesslog.LATE_IDLE_TIMEOUT)
        else:
            self.abort()
            self.channel.local_reply(replies.STREAM_TIMEOUT, method=self.method)

    def timed_out(self):
        self.deadline = None
        self.pool.stats.upstream_rq_timeout += 1
        self.pool.rq_timeout += 1
        log.info("{tag} upstream {key}: request timeout.", tag=self.tag, key=self.pool.key)
        if self.state is RESPONDING:
            self._cut(accesslog.LATE_TIMEOUT)
        else:
            self.upstream_reply(replies.REQUEST_TIMEOUT)

    # Upstream failures, from the upstream connection (see IExchange).

    def upstream_lost(self, response_started, reused):
        self.conn = None
        self.pool.stats.upstream_rq_rx_reset += 1
        if self.state is RESPONDING:
            log.info("{tag} upstream {key}: connection termination after the response began.",
                     tag=self.tag, key=self.pool.key)
            self._cut(accesslog.LATE_TERMINATION)
        elif reused and not response_started and self.replayable and not self.retried:
            # The server closed an idle keep-alive connection just as it was
            # reused: nothing was processed, so send it once more, fresh.
            log.debug("{tag} reused connection was closed; retrying.", tag=self.tag)
            self.retried = True
            self.state = CONNECTING
            self.pool.stats.upstream_rq_retry += 1
            self.pool.request(self, fresh=True)
        else:
            log.info("{tag} upstream {key}: connection termination.", tag=self.tag, key=self.pool.key)
            self.upstream_reply(replies.CONNECTION_TERMINATION)

    def upstream_failed(self, error):
        log.info("{tag} upstream {key}: {error}.", tag=self.tag, key=self.pool.key, error=error)
        self.conn = None
        if self.state is RESPONDING:
            self._cut(accesslog.LATE_PROTOCOL_ERROR)
        else:
            self.upstream_reply(replies.PROTOCOL_ERROR)

    # Ending.

    def log_ending(self, ending):
        """Tell the access log why the exchange is being cut short."""
        if self.log is not None:
            self.log.ending = ending

    def _cut(self, ending):
        """
        Too late for a reply, the response having begun: tell the access log
        why, and cut the client connection, as Envoy resets the stream.
        """
        self.log_ending(ending)
        self.abort()
        self.channel.close()

    def upstream_reply(self, reply):
        """
        A local reply caused by the upstream; the client connection is closed
        after it, as Envoy does, so the client does not reuse it blindly.
        Envoy charges it to the cluster as an upstream response of its status.
        """
        self.pool.stats.upstream_rq_xx[reply.status // 100] += 1
        self.pool.rq_error += 1
        self.abort()
        extra = self.channel.prefix + b"-overloaded: true\r\n" if reply.overloaded else b""
        self.channel.local_reply(reply, extra=extra, method=self.method)

    def abort(self):
        """
        End the exchange before its response is complete: drop its upstream
        connection, or its place in the pool's queue. Once C{DONE}, nothing.
        """
        if self.state is DONE:
            return
        conn = self.conn
        waiting = self.state is CONNECTING
        self.finish()
        if conn is not None:
            conn.abort()
        elif waiting:
            self.pool.cancel(self)

    def finish(self):
        """
        Enter C{DONE}: stop the timers and undo the flow control between the
        two connections (the response is complete, or a tunnel takes over).
        """
        self.state = DONE
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
        self.channel.pauser.resume(CONNECTING_REASON)
