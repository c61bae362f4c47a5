"""
Protocol detection on one port: TLS, HTTP/1.x, or the TCP relay.

Like Envoy's C{tls_inspector} and C{http_inspector}, a L{Detector} looks at
the first bytes a redirected client sends before anything is connected:

  - a TLS record header (C{0x16 0x03}): TLS passthrough; the ClientHello is
    read for its server name (L{origdst.tls}) and the bytes are relayed;
  - the HTTP/2 connection preface (C{PRI * HTTP/2.0}): the relay;
  - a request line (L{classify} says when a first line is one): the HTTP
    proxy (L{origdst.downstream}), which answers a malformed request with
    C{400} as before;
  - anything else, or nothing within C{--detect-timeout} (the server speaks
    first: SSH, SMTP, MySQL): the relay (L{origdst.tcp}).

Ports in C{--tcp-ports} take the relay and ports in C{--http-ports} the HTTP
proxy, without waiting. The bytes read while deciding are handed to the
chosen side unchanged.

Detection sits in front of every connection, so it is kept cheap: bytes that
came with the connection (a client that speaks first has often sent its
request by the time the proxy accepts) are read at once and decide without a
timer; the others wait in the listener's L{Waiting}, one timer for all. A
timeout that finds bytes waiting on the socket, not yet read because the proxy
was busy (a burst of new connections, a long collection), reads them first:
the client did speak in time, and an HTTP request relayed as TCP would go
unparsed, unlogged and unchecked by C{Host}.
"""

import errno
import re

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from origdst import tls
from origdst.logs import debug_enabled, logger

log = logger("origdst.detect")

HTTP = "http"
TLS = "tls"
RELAY = "relay"

PREFACE = b"PRI * HTTP/2.0"
# Methods a first line may start with (llhttp's list, which Envoy's
# http_inspector uses); a line with another token is HTTP when it names a
# version ("HTTP/"), so custom methods still reach the strict parser.
METHODS = (
    b"GET HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH PROPFIND PROPPATCH MKCOL COPY "
    b"MOVE LOCK UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH "
    b"NOTIFY SUBSCRIBE UNSUBSCRIBE PURGE MKCALENDAR LINK UNLINK SEARCH SOURCE QUERY"
).split()
_METHOD_START = re.compile(b"^(?:" + b"|".join(re.escape(m) for m in METHODS) + b")[ \t]")
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
# Longer than the longest request line origdst accepts (16 KiB, then 414).
MAX_LINE = 16 * 1024 + 64


def classify(data, final=False):
    """
    @param data: the first bytes of a connection.
    @param final: no more bytes will be waited for (the detect timeout
        passed, or the client shut down its side).
    @return: L{HTTP}, L{TLS}, L{RELAY}, or C{None} while it cannot tell.
    """
    data = data.lstrip(b"\r\n")
    if not data:
        return RELAY if final else None
    first = data[0]
    if first == 0x16:
        return TLS if data[1:2] in (b"", b"\x03") else RELAY
    if PREFACE.startswith(data[:14]):
        if len(data) >= len(PREFACE):
            return RELAY
        return RELAY if final else None
    if first not in _TCHAR:
        return RELAY
    cut = len(data)
    for end in (b"\r", b"\n"):
        at = data.find(end, 0, cut)
        if at >= 0:
            cut = at
    line = data[:cut]
    if _METHOD_START.match(line) or b"HTTP/" in line:
        return HTTP
    if cut < len(data) or len(line) > MAX_LINE:
        return RELAY
    if final:
        # A client cut short in its method still gets HTTP's answer.
        return HTTP if any(m.startswith(line) for m in METHODS) else RELAY
    return None


class Waiting:
    """
    The detectors of one listener waiting for their first bytes, each until
    its own deadline, under one timer: no C{callLater} is armed and
    cancelled for each connection (the reactor keeps cancelled calls in its
    heap until it cleans it up), and under load most connections wait for
    microseconds if at all.

    Deadlines are kept in order of arrival, which is their order as the wait
    is the same for all; the timer is armed for the first one only.
    """

    def __init__(self, reactor, timeout):
        """
        @param timeout: seconds each detector may wait (C{--detect-timeout}).
        """
        self.reactor = reactor
        self.timeout = timeout
        self.deadlines = {}
        self.timer = None

    def add(self, detector):
        """
        Call C{detector.timed_out()} in C{timeout} seconds unless it is
        L{discard}ed first.
        """
        self.deadlines[detector] = self.reactor.seconds() + self.timeout
        if self.timer is None:
            self.timer = self.reactor.callLater(self.timeout, self._expire)

    def discard(self, detector):
        self.deadlines.pop(detector, None)

    def _expire(self):
        self.timer = None
        deadlines = self.deadlines
        now = self.reactor.seconds()
        while deadlines:
            detector = next(iter(deadlines))
            deadline = deadlines[detector]
            if deadline > now:
                self.timer = self.reactor.callLater(deadline - now, self._expire)
                return
            del deadlines[detector]
            detector.timed_out()


def arrived(transport):
    """
    @return: the bytes already in the socket of C{transport} (a just accepted
        connection, or one whose timeout came), read without waiting; C{b""}
        when there are none yet (or the client already closed: the reactor's
        own read then finds that).
    """
    sock = getattr(transport, "socket", None)
    if sock is None:
        return b""
    try:
        return sock.recv(transport.bufferSize)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
            # The reactor's next read reports the connection's end.
            log.debug("{error} reading a waiting connection", error=e)
        return b""


@implementer(IHalfCloseableProtocol)
class Detector(Protocol):
    """
    A client connection while its protocol is being decided.

    @ivar buf: the bytes received so far (handed on unchanged).
    @ivar hello: the L{tls.HelloReader} once the bytes are TLS.
    """

    def __init__(self, factory, tag):
        """
        @param factory: the L{origdst.listener.ListenerFactory}: it resolves
            the destination and starts the chosen side.
        """
        self.factory = factory
        self.tag = tag
        self.buf = b""
        self.hello = None
        self.timer = None
        self.waiting = None
        self.done = False
        self.peer = self.destination = self.refusal = None

    def connectionMade(self):
        factory = self.factory
        self.peer, self.destination, self.refusal = factory.resolve(self.transport, self.tag)
        if self.refusal is not None:
            # Not proxied at all: the HTTP side answers why, as before.
            self._hand(HTTP)
            return
        port = self.destination[1]
        if port in factory.tcp_ports:
            self._hand(RELAY)
            return
        if port in factory.http_ports:
            self._hand(HTTP)
            return
        data = arrived(self.transport)
        if data:
            self.dataReceived(data)
        if not self.done and self.hello is None:
            self.waiting = factory.waiting
            self.waiting.add(self)

    def dataReceived(self, data):
        if self.done:
            return
        if self.hello is not None:
            self._read_hello(data)
            return
        self.buf += data
        kind = classify(self.buf)
        if kind is TLS:
            self._start_hello()
        elif kind is not None:
            self._hand(kind)

    def _start_hello(self):
        self._cancel()
        self.factory.cluster.stats.tls_found += 1
        self.hello = tls.HelloReader()
        wait = self.factory.settings.request_headers_timeout
        if wait:
            self.timer = self.factory.reactor.callLater(wait, self._hello_timed_out)
        data, self.buf = self.buf, b""
        self._read_hello(data)

    def _read_hello(self, data):
        try:
            hello = self.hello.feed(data)
        except tls.Malformed as e:
            self._no_hello(f"malformed ClientHello ({e})")
            return
        if hello is not None:
            stats = self.factory.cluster.stats
            if hello.server_name:
                stats.sni_found += 1
            else:
                stats.sni_not_found += 1
            if hello.alpn:
                stats.alpn_found += 1
            else:
                stats.alpn_not_found += 1
            self._hand(RELAY, hello)

    def _no_hello(self, why):
        """
        The ClientHello cannot be read: relayed as plain TCP without a server
        name, which L{origdst.tcp.Relay} refuses when C{--allow-sni} is set.
        """
        log.info(
            "{tag} {why}: relaying as TCP without a server name.", tag=self.tag, why=why
        )
        self.factory.cluster.stats.sni_not_found += 1
        self._hand(RELAY, tls.ClientHello())

    def timed_out(self):
        """
        Nothing decided within C{--detect-timeout}: called by L{Waiting}.

        The reactor fires due timers before it reads: after the process
        stalled (a loaded machine, a long collection) a client's first bytes
        can be waiting unread, and an HTTP client would be taken for one whose
        server speaks first. They are read before deciding.
        """
        self.waiting = None
        if self.done:
            return
        data = arrived(self.transport)
        if data:
            self.dataReceived(data)
        if not self.done and self.hello is None:
            self._hand(classify(self.buf, final=True))

    def _hello_timed_out(self):
        self.timer = None
        if not self.done:
            self._no_hello("ClientHello not complete in time")

    def readConnectionLost(self):
        """
        The client shut down its side before the protocol was known: decide
        with what came, and pass the half-close on.
        """
        if self.done:
            return
        if self.hello is not None:
            self._no_hello("ClientHello cut short")
        else:
            self._hand(classify(self.buf, final=True))
        protocol = IHalfCloseableProtocol(self.transport.protocol, None)
        if protocol is not None and protocol is not self:
            protocol.readConnectionLost()

    def writeConnectionLost(self):
        pass

    def _hand(self, kind, hello=None):
        self.done = True
        self._cancel()
        stats = self.factory.cluster.stats
        if hello is None:
            if kind is HTTP:
                stats.http_found += 1
            elif self.refusal is None:
                stats.http_not_found += 1
        data = self.hello.raw if self.hello is not None else self.buf
        self.buf = b""
        if debug_enabled():
            log.debug("{tag} detected {kind}.", tag=self.tag, kind="tls" if hello else kind)
        transport = self.transport
        if kind is HTTP:
            protocol = self.factory.http_channel(self.tag, (self.destination, self.refusal))
        else:
            protocol = self.factory.relay(self.tag, self.peer, self.destination, hello)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        if data and transport.protocol is protocol and not getattr(transport, "disconnecting", False):
            protocol.dataReceived(data)

    def _cancel(self):
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.discard(self)
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def connectionLost(self, reason):
        self.done = True
        self._cancel()
