"""
The TCP relay: a client's bytes passed unchanged to its original destination.

Modelled on L{twisted.protocols.portforward}: the client is not read until
the upstream connection is made; from then on each side is the other's
producer, so a slow reader pauses the fast side and memory stays flat. A
half-close passes on, and the connection closes when both directions are
done or either side goes away.

Before anything is connected the egress policy is applied (addresses, and
for TLS the server name) and loops are refused: a denied connection is
closed at once, with one log line that names the rule. The destination is a
host of the original-destination cluster, kept by the sweep while a relay is
open.
"""

from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ClientFactory, Protocol
from zope.interface import implementer

from origdst import accesslog, fdlimit, rawcopy, relaylog, replies, sourceports
from origdst.addresses import endpoint, host_port
from origdst.flow import Pauser, connect_flow, follow_reads, write
from origdst.logs import debug_enabled, logger

log = logger("origdst.tcp")

CONNECTING = "the upstream connection is being made"

# Access log endings (flags, details): the catalogue is origdst.accesslog's
# and origdst.relaylog's, and a relay refused as an HTTP request would be
# ends with that reply's.
RELAYED = accesslog.VIA_UPSTREAM
CONNECT_FAILED = relaylog.CONNECT_FAILED
CONNECT_TIMED_OUT = relaylog.CONNECT_TIMED_OUT
IDLE_TIMEOUT = relaylog.IDLE_TIMEOUT
SNI_DENIED = relaylog.SNI_DENIED
DENIED = (replies.EGRESS_DENIED.flags, replies.EGRESS_DENIED.details)
LOOP = (replies.REDIRECT_LOOP.flags, replies.REDIRECT_LOOP.details)


@implementer(IHalfCloseableProtocol)
class Relay(Protocol):
    """
    The client side of one relayed connection.

    @ivar upstream: the L{RelayUpstream} once connected, else C{None}.
    @ivar pending: client bytes that arrived before it was.
    @ivar hello: the L{origdst.tls.ClientHello} of a TLS connection, else
        C{None}; its server name and ALPN go to the log and access log.
    @ivar received: bytes from the client; C{sent}: bytes to it.
    @ivar ending: C{(flags, details)} for the access log.
    """

    upstream = None
    connector = None
    host = None
    timer = None
    closed = False

    def __init__(self, cluster, settings, reactor, policy, tag, peer, destination, hello=None, access_log=None):
        self.cluster = cluster
        self.settings = settings
        self.reactor = reactor
        self.policy = policy
        self.tag = tag
        self.peer = peer
        self.destination = destination
        self.hello = hello
        self.access_log = access_log
        self.key = host_port(*destination)
        self.pending = []
        self.received = 0
        self.sent = 0
        self.read_closed = False
        self.write_closed = False
        self.ending = RELAYED
        self.started = reactor.seconds()
        self.last_active = self.started

    def connectionMade(self):
        stats = self.cluster.stats
        stats.tcp_cx_total += 1
        stats.tcp_cx_active += 1
        self.pauser = Pauser(self.transport)
        refused = self._refusal()
        if refused is not None:
            ending, why = refused
            stats.tcp_cx_denied += 1
            log.info(
                "{tag} TCP connection from {peer} to {key}{sni} closed: {why}.",
                tag=self.tag, peer=host_port(*self.peer), key=self.key, sni=self._sni(), why=why,
            )
            self.ending = ending
            self.close()
            return
        ip, port = self.destination
        host = self.host = self.cluster.host(ip, port)
        host.relays += 1
        self.pauser.pause(CONNECTING)
        stats.upstream_cx_total += 1
        host.pool.cx_total += 1
        if debug_enabled():
            log.debug("{tag} relaying TCP to {key}{sni}.", tag=self.tag, key=self.key, sni=self._sni())
        # From the proxy's own source ports, like the pools' connections, so
        # a client cannot collide with a relayed connection either.
        self.connector = sourceports.connect(
            self.reactor, ip, port, RelayFactory(self), self.settings.connect_timeout,
            self.cluster.source_ports,
        )
        if self.settings.tcp_idle_timeout:
            self.timer = self.reactor.callLater(self.settings.tcp_idle_timeout, self._idle_check)

    def _sni(self):
        hello = self.hello
        if hello is None:
            return ""
        return f" (SNI {hello.server_name})" if hello.server_name else " (TLS, no SNI)"

    def _refusal(self):
        """
        @return: C{(ending, why)} when this connection may not be relayed.
        """
        if (self.peer, self.destination) in self.cluster.own_addresses:
            self.cluster.stats.redirect_loop += 1
            return LOOP, (
                "redirect loop: it comes from origdst's own upstream connection "
                "(is the iptables owner match missing?)"
            )
        why = self.policy.destination_denied(*self.destination)
        if why is not None:
            return DENIED, why
        if self.hello is not None:
            why = self.policy.sni_denied(self.hello.server_name)
            if why is not None:
                return SNI_DENIED, why
        return None

    # The client.

    def dataReceived(self, data):
        n = len(data)
        self._from_client(n)
        upstream = self.upstream
        if upstream is not None:
            follow_reads(self.transport, n)
            write(upstream.transport, data)
        elif not self.closed:
            self.pending.append(data)

    def _from_client(self, n):
        self.received += n
        self.last_active = self.reactor.seconds()
        stats = self.cluster.stats
        stats.tcp_rx_bytes += n
        if self.upstream is not None:
            stats.upstream_cx_tx_bytes_total += n

    def readConnectionLost(self):
        self.read_closed = True
        if self.upstream is not None:
            self.upstream.transport.loseWriteConnection()
        if self.write_closed or self.closed:
            self.transport.loseConnection()

    def writeConnectionLost(self):
        self.write_closed = True
        if self.read_closed:
            self.transport.loseConnection()

    # The upstream connection.

    def upstream_connected(self, upstream):
        if self.closed:
            upstream.transport.loseConnection()
            return
        self.upstream = upstream
        local = upstream.local_address = endpoint(upstream.transport.getHost())
        self.cluster.own_addresses.add((local, self.destination))
        connect_flow(self.pauser, upstream.transport)
        connect_flow(upstream.pauser, self.transport)
        pending, self.pending = self.pending, []
        if pending:
            data = b"".join(pending)
            self.cluster.stats.upstream_cx_tx_bytes_total += len(data)
            upstream.transport.write(data)
        if self.read_closed:
            upstream.transport.loseWriteConnection()
        if rawcopy.usable(self.transport, upstream.transport):
            rawcopy.start(self.transport, self._raw_limit, self._client_raw)
            rawcopy.start(upstream.transport, self._raw_limit, self._upstream_raw)
        self.pauser.resume(CONNECTING)

    # Under PyPy both directions go raw once connected (origdst.rawcopy).

    def _raw_limit(self):
        return 0 if self.closed else rawcopy.BUFFER_SIZE

    def _client_raw(self, n):
        self._from_client(n)
        rawcopy.forward(self.upstream.transport, n, self.pauser)

    def _upstream_raw(self, n):
        self._from_server(n)
        rawcopy.forward(self.transport, n, self.upstream.pauser)

    def upstream_failed(self, reason):
        if self.closed:
            # The client went away first (close stopped the attempt).
            return
        stats = self.cluster.stats
        stats.upstream_cx_connect_fail += 1
        self.host.pool.cx_connect_fail += 1
        if reason.check(ConnectTimeoutError):
            stats.upstream_cx_connect_timeout += 1
            self.ending = CONNECT_TIMED_OUT
        else:
            self.ending = CONNECT_FAILED
        if not fdlimit.count_refused(reason):
            log.info(
                "{tag} TCP connection to {key} failed: {reason}; closing the client connection.",
                tag=self.tag, key=self.key, reason=reason.getErrorMessage(),
            )
        self.close()

    def from_upstream(self, data):
        self._from_server(len(data))
        write(self.transport, data)

    def _from_server(self, n):
        self.sent += n
        self.last_active = self.reactor.seconds()
        stats = self.cluster.stats
        stats.upstream_cx_rx_bytes_total += n
        stats.tcp_tx_bytes += n

    def upstream_read_closed(self):
        self.transport.loseWriteConnection()

    def upstream_lost(self, upstream):
        self.cluster.own_addresses.discard((upstream.local_address, self.destination))
        self.close()

    # Both.

    def _idle_check(self):
        self.timer = None
        if self.closed:
            return
        timeout = self.settings.tcp_idle_timeout
        now = self.reactor.seconds()
        if now - self.last_active >= timeout:
            self.cluster.stats.tcp_idle_timeout += 1
            log.info("{tag} TCP connection to {key} idle for {s:g} s: closing.",
                     tag=self.tag, key=self.key, s=timeout)
            self.ending = IDLE_TIMEOUT
            self.close()
            return
        self.timer = self.reactor.callLater(self.last_active + timeout - now, self._idle_check)

    def close(self):
        if self.closed:
            return
        self.closed = True
        self.pending = []
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self.transport.loseConnection()
        if self.upstream is not None:
            self.upstream.transport.loseConnection()
        elif getattr(self.connector, "state", None) == "connecting":
            self.connector.stopConnecting()

    def connectionLost(self, reason):
        self.close()
        stats = self.cluster.stats
        stats.tcp_cx_active -= 1
        host, self.host = self.host, None
        if host is not None:
            host.relays -= 1
            host.pool.rx_bytes += self.sent
            host.pool.tx_bytes += self.received
        if self.access_log is not None:
            relaylog.write(self.access_log, self, self.reactor.seconds())


@implementer(IHalfCloseableProtocol)
class RelayUpstream(Protocol):
    """
    The upstream side of a L{Relay}.
    """

    local_address = None

    def __init__(self, relay):
        self.relay = relay
        self.read_closed = False
        self.write_closed = False

    def connectionMade(self):
        self.pauser = Pauser(self.transport)
        self.relay.upstream_connected(self)

    def dataReceived(self, data):
        follow_reads(self.transport, len(data))
        self.relay.from_upstream(data)

    def readConnectionLost(self):
        self.read_closed = True
        self.relay.upstream_read_closed()
        if self.write_closed:
            self.transport.loseConnection()

    def writeConnectionLost(self):
        self.write_closed = True
        if self.read_closed:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.relay.upstream_lost(self)


class RelayFactory(ClientFactory):
    """
    Connects one L{Relay} to its destination.
    """

    noisy = False

    def __init__(self, relay):
        self.relay = relay

    def buildProtocol(self, addr):
        return RelayUpstream(self.relay)

    def clientConnectionFailed(self, connector, reason):
        self.relay.upstream_failed(reason)
