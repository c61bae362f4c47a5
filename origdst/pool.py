"""
The keep-alive connections of one upstream host.

Requests take an idle connection when there is one (the most recently used,
whose server is least likely to have timed it out), else open a new one up to
the host's connection limit, else wait in a bounded queue.
"""

import collections

from twisted.internet.error import TimeoutError as ConnectTimeoutError

from origdst.addresses import endpoint
from origdst.logs import debug_enabled, logger
from origdst.replies import CONNECT_FAILURE, CONNECT_TIMEOUT, OVERFLOW
from origdst.sourceports import connect
from origdst.upstream import UpstreamFactory

log = logger("origdst.pool")

class Pool:
    """
    Upstream connections to one C{ip:port}.

    @ivar own_addresses: the set, shared by all pools, of the C{(local,
        remote)} addresses of the proxy's upstream connections; a redirected
        connection from one's local address to its remote one is the proxy
        talking to itself. (The local address alone is not enough: REDIRECT
        gives a client port that is in use towards another destination a new
        one at random, which can be a port of an upstream connection.)
    @ivar stats: the process's L{origdst.stats.Stats}; the other counters
        (C{rq_total}, C{rx_bytes}, ...) are this host's own, shown by the
        admin endpoint's C{/clusters}.
    """

    def __init__(self, key, ip, port, settings, reactor, own_addresses, stats, source_ports=None):
        self.key = key
        self.ip = ip
        self.port = port
        self.settings = settings
        self.reactor = reactor
        self.own_addresses = own_addresses
        self.stats = stats
        self.source_ports = source_ports
        self.rq_total = 0
        self.rq_success = 0
        self.rq_error = 0
        self.rq_timeout = 0
        self.cx_total = 0
        self.cx_connect_fail = 0
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.factory = UpstreamFactory(self)
        self.idle = []
        self.connections = set()
        self.connecting = 0
        self.pending = collections.deque()
        self._reaper = None
        self.closed = False

    def in_use(self):
        """
        Whether any request is waiting for or carried by a connection.
        """
        return bool(
            self.pending or self.connecting or len(self.connections) > len(self.idle)
        )

    def cx_active(self):
        """
        Connections open or being opened, as Envoy's C{cx_active} counts them.
        """
        return len(self.connections) + self.connecting

    def rq_active(self):
        """
        Requests being carried by a connection (waiting ones are pending).
        """
        return len(self.connections) - len(self.idle)

    def request(self, exchange, fresh=False):
        """
        Find a connection for C{exchange} (an L{origdst.interfaces.IExchange});
        it is told with C{attached}, or C{failed} and the
        L{origdst.replies.Reply} that says why.

        @param fresh: skip idle connections (a retry after a reused connection
            turned out to be closed); while waiting, it may still get one
            another request has just finished with, as in Envoy's pool.
        """
        while self.idle and not fresh:
            conn = self.idle.pop()
            if conn.reusable:
                if debug_enabled():
                    log.debug("{tag} reusing connection to {key}.", tag=exchange.tag, key=self.key)
                conn.start(exchange)
                return
        if self._room():
            if debug_enabled():
                log.debug("{tag} creating a new connection to {key}.", tag=exchange.tag, key=self.key)
            self.pending.append(exchange)
            self.stats.upstream_rq_pending_total += 1
            self._open()
        elif len(self.pending) < self.settings.max_pending_requests:
            self.pending.append(exchange)
            self.stats.upstream_rq_pending_total += 1
        else:
            self.stats.upstream_rq_pending_overflow += 1
            exchange.failed(OVERFLOW)

    def _room(self):
        return len(self.connections) + self.connecting < self.settings.max_connections

    def _open(self):
        self.connecting += 1
        self.cx_total += 1
        self.stats.upstream_cx_total += 1
        connect(self.reactor, self.ip, self.port, self.factory,
                self.settings.connect_timeout, self.source_ports)

    def cancel(self, exchange):
        """
        Forget a waiting exchange whose client went away.
        """
        try:
            self.pending.remove(exchange)
        except ValueError:
            pass

    def connection_made(self, conn):
        self.connecting -= 1
        self.connections.add(conn)
        conn.local_address = endpoint(conn.transport.getHost())
        self.own_addresses.add((conn.local_address, (self.ip, self.port)))
        self._dispatch(conn)

    def connection_failed(self, reason, reply=None):
        """
        One attempt failed: the oldest waiting exchange gets the failure; the
        others keep waiting for attempts still under way or busy connections,
        or get an attempt of their own.

        @param reply: the L{origdst.replies.Reply} that says why, when the
            caller knows better than C{reason} (a failed TLS handshake).
        """
        self.connecting -= 1
        self.cx_connect_fail += 1
        stats = self.stats
        stats.upstream_cx_connect_fail += 1
        if reply is None and reason.check(ConnectTimeoutError):
            # Envoy counts a connect timeout in both.
            stats.upstream_cx_connect_timeout += 1
            reply = CONNECT_TIMEOUT
        elif reply is None:
            reply = CONNECT_FAILURE
        log.debug(
            "Connection to {key} failed: {reason}.",
            key=self.key,
            reason=reason.getErrorMessage(),
        )
        if self.pending:
            self.pending.popleft().failed(reply)
        # The others were waiting for this attempt or a later one: unless
        # attempts under way can serve them, start the next, as a lost
        # connection does, so none is left waiting for nothing.
        if len(self.pending) > self.connecting and self._room():
            self._open()

    def release(self, conn):
        """
        C{conn} finished an exchange cleanly and can carry another.
        """
        self._dispatch(conn)

    def connection_lost(self, conn):
        self.connections.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        self.own_addresses.discard((conn.local_address, (self.ip, self.port)))
        # A request that queued behind the limit can now have a connection.
        if len(self.pending) > self.connecting and self._room():
            self._open()

    def close(self):
        """
        The host was removed: close idle connections now and busy ones when
        their exchange ends.
        """
        self.closed = True
        for conn in list(self.idle):
            conn.transport.loseConnection()

    def _dispatch(self, conn):
        if self.pending:
            conn.start(self.pending.popleft())
        elif self.closed:
            conn.transport.loseConnection()
        else:
            conn.idle_since = self.reactor.seconds()
            self.idle.append(conn)
            if self._reaper is None:
                self._reaper = self.reactor.callLater(
                    self.settings.upstream_idle_timeout, self._reap
                )

    def _reap(self):
        """
        Close the connections idle for the upstream idle timeout. Idle
        connections are kept oldest first, so one timer per pool, re-armed
        for the oldest, does for all of them.
        """
        self._reaper = None
        now = self.reactor.seconds()
        timeout = self.settings.upstream_idle_timeout
        while self.idle and now - self.idle[0].idle_since >= timeout:
            conn = self.idle.pop(0)
            log.debug("Closing idle connection to {key}.", key=self.key)
            conn.transport.loseConnection()
        if self.idle:
            self._reaper = self.reactor.callLater(
                self.idle[0].idle_since + timeout - now, self._reap
            )

