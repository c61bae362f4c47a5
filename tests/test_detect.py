"""
Tests for L{origdst.detect}: the first bytes of a connection choose the HTTP
proxy, TLS passthrough or the TCP relay; the clock is a L{MemoryReactorClock}.
"""

import errno

import socket

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.trial import unittest

from origdst.cluster import OriginalDstCluster
from origdst.config import Settings
from origdst.detect import HTTP, RELAY, TLS, Waiting, classify
from origdst.downstream import ProxyChannel
from origdst.listener import ListenerFactory
from origdst.tcp import Relay
from tests.helpers import capture_log
from tests.test_tls import hello, openssl_hello, sni

DEST = ("10.250.0.3", 443)


class ClassifyTests(unittest.TestCase):
    """
    L{classify} on first bytes.
    """

    def test_table(self):
        """
        Requests are HTTP (also malformed ones that start like one), TLS
        records are TLS, the rest is the relay, and too little is undecided.
        """
        cases = [
            (b"GET / HTTP/1.1\r\n", HTTP),
            (b"GET ", HTTP),
            (b"\r\nPOST /x HTTP/1.1\r\n", HTTP),
            (b"GE\x00T /h HTTP/1.1\r\n", HTTP),
            (b"GET\t/h\tHTTP/1.1\r\n", HTTP),
            (b"GET() /h HTTP/1.1\r\n", HTTP),
            (b"PURGEALL /x HTTP/1.1\r\n", HTTP),
            (b"GET /h/http09\r\n\r\n", HTTP),
            (b"\x16\x03\x01\x02\x00", TLS),
            (b"\x16", TLS),
            (b"\x16\x01", RELAY),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", RELAY),
            (b"SSH-2.0-OpenSSH_9.2\r\n", RELAY),
            (b"*1\r\n$4\r\nPING\r\n", RELAY),
            (b"PING\r\n", RELAY),
            (b"get key\r\n", RELAY),
            (b"\x00\x00\x00\x08\x04\xd2\x16\x2f", RELAY),
            (b"", None),
            (b"\r\n", None),
            (b"GE", None),
            (b"PRI * HT", None),
            (b"A" * 100, None),
        ]
        for data, kind in cases:
            self.assertEqual((data, classify(data)), (data, kind))

    def test_final(self):
        """
        When no more will come: nothing is the relay, the start of a method
        is HTTP, other undecided bytes the relay.
        """
        self.assertEqual(classify(b"", final=True), RELAY)
        self.assertEqual(classify(b"GE", final=True), HTTP)
        self.assertEqual(classify(b"PRI * HT", final=True), RELAY)
        self.assertEqual(classify(b"HELLO", final=True), RELAY)

    def test_long_line(self):
        """
        A first line longer than any request line, without a version, is the
        relay.
        """
        self.assertEqual(classify(b"A" * (17 * 1024)), RELAY)


class SettingsTests(unittest.TestCase):
    """
    The new settings are read and refused with their name.
    """

    def test_waiting_bytes_read_before_deciding(self):
        """
        When the timeout fires while the client's request is already in the
        socket, unread (the proxy stalled past the timeout, and the reactor
        fires timers before it reads), the request is read and goes to the
        HTTP proxy, not the relay.
        """
        proxy = Proxy(detect_timeout=0.3)
        transport = proxy.connect()
        transport.socket = WaitingSocket([b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"])
        transport.bufferSize = 65536
        proxy.reactor.advance(0.31)
        self.assertIsInstance(transport.protocol, ProxyChannel)
        self.assertEqual([c[:2] for c in proxy.reactor.tcpClients], [DEST])
        self.assertEqual((proxy.cluster.stats.http_found, proxy.cluster.stats.http_not_found),
                         (1, 0))

    def test_nothing_waiting_at_timeout(self):
        """
        A socket with nothing in it at the timeout (C{EAGAIN}) still means a
        server that speaks first: the relay.
        """
        proxy = Proxy(detect_timeout=0.3)
        transport = proxy.connect()
        transport.socket = WaitingSocket([])
        transport.bufferSize = 65536
        proxy.reactor.advance(0.31)
        self.assertIsInstance(transport.protocol, Relay)
        self.assertEqual(proxy.cluster.stats.http_not_found, 1)

    def test_tcp_ports(self):
        """
        Ports and ranges, spaces dropped; a bad one names the option.
        """
        from origdst import config

        self.assertEqual(config.parse("tcp-ports", " 22, 25,3306-3310 "), "22,25,3306-3310")
        self.assertEqual(config.parse("tcp-ports", ""), "")
        for bad in ("0", "22,x", "70000", "30-20"):
            e = self.assertRaises(config.ConfigError, config.parse, "tcp-ports", bad)
            self.assertIn("tcp-ports", str(e))

    def test_http_ports(self):
        """
        Read as --tcp-ports is, empty by default; a port in both lists is
        refused with the option's name.
        """
        from origdst import config
        from origdst.tap import Options
        from twisted.python import usage

        self.assertEqual(config.Settings().http_ports, "")
        self.assertEqual(config.parse("http-ports", " 80, 8080-8081 "), "80,8080-8081")
        e = self.assertRaises(config.ConfigError, config.parse, "http-ports", "80,x")
        self.assertIn("http-ports", str(e))
        e = self.assertRaises(
            usage.UsageError, Options().parseOptions,
            ["--tcp-ports", "22,8000-8100", "--http-ports", "80,8080"],
        )
        self.assertIn("--http-ports", str(e))
        self.assertIn("8080", str(e))

    def test_timeouts(self):
        """
        The defaults; a detect timeout must be positive; a bad server name
        pattern names the option.
        """
        from origdst import config

        self.assertEqual(config.Settings().detect_timeout, 0.3)
        self.assertEqual(config.Settings().tcp_idle_timeout, 3600)
        self.assertRaises(config.ConfigError, config.parse, "detect-timeout", "0")
        self.assertEqual(config.parse("tcp-idle-timeout", "0"), 0)
        e = self.assertRaises(config.ConfigError, config.parse, "allow-sni", "bad_name!")
        self.assertIn("allow-sni", str(e))


class Proxy:
    """
    A listener factory on a memory reactor; its connections go to L{DEST}.
    """

    def __init__(self, **settings):
        self.reactor = MemoryReactorClock()
        self.settings = Settings(**settings)
        self.cluster = OriginalDstCluster(self.settings, self.reactor)
        self.factory = ListenerFactory(
            self.cluster, self.settings, self.reactor, original_destination=lambda handle: DEST
        )

    def connect(self, arrived=None):
        """
        @param arrived: what the socket holds when the connection is
            accepted: bytes, or an C{OSError} its C{recv} raises; no socket
            (as a test transport has none) if C{None}.
        """
        transport = StringTransportWithDisconnection(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 4999),
            peerAddress=IPv4Address("TCP", "10.250.0.2", 40000),
        )
        transport.getHandle = lambda: transport
        if arrived is not None:
            transport.socket = FakeSocket(arrived)
            transport.bufferSize = 65536
        detector = self.factory.buildProtocol(None)
        transport.protocol = detector
        detector.makeConnection(transport)
        return transport


class WaitingSocket:
    """
    The socket under a transport, with C{pieces} waiting in it unread;
    once they are read, C{EAGAIN} as from a non-blocking socket.
    """

    def __init__(self, pieces):
        self.pieces = list(pieces)

    def recv(self, size):
        if not self.pieces:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return self.pieces.pop(0)
class FakeSocket:
    """
    The C{recv} of a non-blocking socket that holds C{arrived}, then nothing.
    """

    def __init__(self, arrived):
        self.arrived = arrived
        self.reads = []

    def recv(self, size):
        self.reads.append(size)
        arrived, self.arrived = self.arrived, OSError(errno.EAGAIN, "again")
        if isinstance(arrived, OSError):
            raise arrived
        return arrived


class WaitingTests(unittest.TestCase):
    """
    L{Waiting}: one timer for every detector's deadline.
    """

    class Detector:
        def __init__(self, fired, name):
            self.fired, self.name = fired, name

        def timed_out(self):
            self.fired.append(self.name)

    def test_deadlines(self):
        """
        Each waits its own timeout, under one timer at a time; a discarded
        one is not called.
        """
        clock = MemoryReactorClock()
        waiting = Waiting(clock, 0.3)
        fired = []
        a, b, c = (self.Detector(fired, name) for name in "abc")
        waiting.add(a)
        clock.advance(0.1)
        waiting.add(b)
        clock.advance(0.1)
        waiting.add(c)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        waiting.discard(a)
        clock.advance(0.1)
        self.assertEqual(fired, [])
        clock.advance(0.1)
        self.assertEqual(fired, ["b"])
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(0.1)
        self.assertEqual(fired, ["b", "c"])
        self.assertEqual((clock.getDelayedCalls(), waiting.deadlines), ([], {}))
        waiting.add(a)
        clock.advance(0.3)
        self.assertEqual(fired, ["b", "c", "a"])


class DetectorTests(unittest.TestCase):
    """
    L{origdst.detect.Detector} hands each connection on.
    """

    def test_http(self):
        """
        A request goes to the HTTP proxy, which forwards it.
        """
        proxy = Proxy()
        transport = proxy.connect()
        transport.protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertIsInstance(transport.protocol, ProxyChannel)
        self.assertEqual([c[:2] for c in proxy.reactor.tcpClients], [DEST])
        self.assertEqual(proxy.cluster.stats.http_found, 1)

    def test_malformed_http(self):
        """
        Bytes that start like a request but are malformed still get 400.
        """
        proxy = Proxy()
        transport = proxy.connect()
        transport.protocol.dataReceived(b"GE\x00T / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "))
        self.assertEqual(proxy.reactor.tcpClients, [])

    def test_http_in_pieces(self):
        """
        A request line in one-byte pieces is still HTTP, and arrives whole.
        """
        proxy = Proxy()
        transport = proxy.connect()
        for byte in b"GET / HTTP/1.1\r\nHost: a\r\n\r\n":
            transport.protocol.dataReceived(bytes([byte]))
        self.assertIsInstance(transport.protocol, ProxyChannel)
        self.assertEqual(len(proxy.reactor.tcpClients), 1)

    def test_server_speaks_first(self):
        """
        Nothing within the detect timeout: the relay, connected at once.
        """
        proxy = Proxy(detect_timeout=0.3)
        transport = proxy.connect()
        proxy.reactor.advance(0.29)
        self.assertEqual(proxy.reactor.tcpClients, [])
        proxy.reactor.advance(0.02)
        self.assertIsInstance(transport.protocol, Relay)
        self.assertEqual([c[:2] for c in proxy.reactor.tcpClients], [DEST])
        self.assertEqual(proxy.cluster.stats.http_not_found, 1)

    def test_tcp_ports(self):
        """
        A port in --tcp-ports takes the relay without waiting.
        """
        proxy = Proxy(tcp_ports="22,400-450")
        transport = proxy.connect()
        self.assertIsInstance(transport.protocol, Relay)
        self.assertEqual(len(proxy.reactor.tcpClients), 1)

    def test_h2_preface(self):
        """
        HTTP/2 prior knowledge takes the relay with its preface.
        """
        proxy = Proxy()
        transport = proxy.connect()
        transport.protocol.dataReceived(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        self.assertIsInstance(transport.protocol, Relay)
        self.assertEqual(transport.protocol.pending, [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"])

    def test_tls_one_byte_at_a_time(self):
        """
        A ClientHello fed one byte at a time is read; then the relay has every
        byte, and the server name.
        """
        proxy = Proxy()
        transport = proxy.connect()
        raw = openssl_hello()
        for i in range(len(raw) - 1):
            transport.protocol.dataReceived(raw[i : i + 1])
        self.assertEqual(proxy.reactor.tcpClients, [])
        transport.protocol.dataReceived(raw[-1:])
        relay = transport.protocol
        self.assertIsInstance(relay, Relay)
        self.assertEqual(relay.hello.server_name, "backend.example.test")
        self.assertEqual(b"".join(relay.pending), raw)
        stats = proxy.cluster.stats
        self.assertEqual((stats.tls_found, stats.sni_found, stats.alpn_found), (1, 1, 1))

    def test_malformed_hello(self):
        """
        A malformed ClientHello is relayed as TCP without a server name, with
        one log line.
        """
        messages = capture_log(self)
        proxy = Proxy()
        transport = proxy.connect()
        transport.protocol.dataReceived(hello(suites=b""))
        self.assertIsInstance(transport.protocol, Relay)
        self.assertIsNone(transport.protocol.hello.server_name)
        self.assertEqual(len(proxy.reactor.tcpClients), 1)
        self.assertTrue(any("malformed ClientHello" in m for m in messages), messages)

    def test_malformed_hello_with_allow_sni(self):
        """
        With an SNI allow list, a malformed ClientHello is refused: closed, not
        connected.
        """
        messages = capture_log(self)
        proxy = Proxy(allow_sni=("example.com",))
        transport = proxy.connect()
        transport.protocol.dataReceived(hello(suites=b""))
        self.assertFalse(transport.connected)
        self.assertEqual(proxy.reactor.tcpClients, [])
        self.assertTrue(any("no TLS server name and --allow-sni is set" in m for m in messages))

    def test_hello_timeout(self):
        """
        A ClientHello not complete within the request headers timeout is
        relayed without a server name.
        """
        proxy = Proxy(request_headers_timeout=10)
        transport = proxy.connect()
        transport.protocol.dataReceived(openssl_hello()[:50])
        proxy.reactor.advance(9)
        self.assertEqual(proxy.reactor.tcpClients, [])
        proxy.reactor.advance(1)
        self.assertIsInstance(transport.protocol, Relay)
        self.assertEqual(len(proxy.reactor.tcpClients), 1)

    def test_sni_denied(self):
        """
        A denied server name closes the connection at once, one log line.
        """
        messages = capture_log(self)
        proxy = Proxy(deny_sni=("*.example.com",))
        transport = proxy.connect()
        transport.protocol.dataReceived(hello(sni(b"ads.example.com")))
        self.assertFalse(transport.connected)
        self.assertEqual(proxy.reactor.tcpClients, [])
        lines = [m for m in messages if "denied by --deny-sni *.example.com" in m]
        self.assertEqual(len(lines), 1, messages)
        self.assertIn("SNI ads.example.com", lines[0])

    def test_half_close_before_deciding(self):
        """
        A client that sends a few bytes and shuts down its side is relayed,
        the half-close passed on.
        """
        proxy = Proxy()
        transport = proxy.connect()
        transport.protocol.dataReceived(b"HELLO")
        transport.protocol.readConnectionLost()
        relay = transport.protocol
        self.assertIsInstance(relay, Relay)
        self.assertTrue(relay.read_closed)

    def test_refused_connection_is_http(self):
        """
        A connection that has no original destination gets HTTP's answer
        as before (503 at its first request).
        """
        from origdst.sockopt import NoOriginalDestination

        proxy = Proxy()

        def lookup(handle):
            raise NoOriginalDestination("none")

        proxy.factory.original_destination = lookup
        transport = proxy.connect()
        self.assertIsInstance(transport.protocol, ProxyChannel)
        transport.protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 "))


class FastPathTests(unittest.TestCase):
    """
    Bytes already in the socket when the connection is accepted decide at
    once, without waiting; ports in --http-ports are HTTP without detection.
    """

    def test_arrived_http(self):
        """
        A request that came with the connection goes to the HTTP proxy
        during the accept, and nothing waits.
        """
        proxy = Proxy()
        transport = proxy.connect(arrived=b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertIsInstance(transport.protocol, ProxyChannel)
        self.assertEqual(transport.socket.reads, [65536])
        self.assertEqual([c[:2] for c in proxy.reactor.tcpClients], [DEST])
        self.assertEqual((proxy.factory.waiting.timer, proxy.factory.waiting.deadlines), (None, {}))
        self.assertEqual(proxy.cluster.stats.http_found, 1)

    def test_arrived_tls(self):
        """
        A whole ClientHello that came with the connection is read at once.
        """
        proxy = Proxy()
        raw = openssl_hello()
        transport = proxy.connect(arrived=raw)
        relay = transport.protocol
        self.assertIsInstance(relay, Relay)
        self.assertEqual(relay.hello.server_name, "backend.example.test")
        self.assertEqual(b"".join(relay.pending), raw)
        self.assertEqual(proxy.factory.waiting.deadlines, {})

    def test_arrived_part(self):
        """
        Too few bytes to decide: the connection waits with them, and the
        rest decides.
        """
        proxy = Proxy()
        transport = proxy.connect(arrived=b"GE")
        self.assertEqual(list(proxy.factory.waiting.deadlines), [transport.protocol])
        transport.protocol.dataReceived(b"T / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertIsInstance(transport.protocol, ProxyChannel)
        self.assertEqual(proxy.factory.waiting.deadlines, {})
        self.assertEqual(len(proxy.reactor.tcpClients), 1)

    def test_arrived_part_times_out(self):
        """
        Part of a method and nothing more within the detect timeout: HTTP,
        with the bytes that came.
        """
        proxy = Proxy(detect_timeout=0.3)
        transport = proxy.connect(arrived=b"GE")
        proxy.reactor.advance(0.3)
        self.assertIsInstance(transport.protocol, ProxyChannel)

    def test_nothing_yet(self):
        """
        A socket with nothing in it (C{EAGAIN}), or an error the reactor's
        read will report: the connection waits as before.
        """
        for arrived in (OSError(errno.EAGAIN, "again"), OSError(errno.ECONNRESET, "reset"), b""):
            proxy = Proxy(detect_timeout=0.3)
            transport = proxy.connect(arrived=arrived)
            self.assertNotIsInstance(transport.protocol, (ProxyChannel, Relay))
            proxy.reactor.advance(0.3)
            self.assertIsInstance(transport.protocol, Relay)

    def test_many_waiting_one_timer(self):
        """
        Silent connections share one timer; each still takes the relay at its
        own deadline.
        """
        proxy = Proxy(detect_timeout=0.3)
        first = [proxy.connect() for _ in range(50)]
        proxy.reactor.advance(0.1)
        second = [proxy.connect() for _ in range(50)]
        self.assertEqual(len(proxy.reactor.getDelayedCalls()), 1)
        proxy.reactor.advance(0.2)
        self.assertEqual({type(t.protocol) for t in first}, {Relay})
        self.assertNotIn(Relay, {type(t.protocol) for t in second})
        proxy.reactor.advance(0.1)
        self.assertEqual({type(t.protocol) for t in second}, {Relay})
        self.assertEqual(len(proxy.reactor.tcpClients), 100)

    def test_closed_while_waiting(self):
        """
        A connection lost while it waits leaves the waiting list.
        """
        proxy = Proxy()
        transport = proxy.connect()
        transport.loseConnection()
        self.assertEqual(proxy.factory.waiting.deadlines, {})

    def test_http_ports(self):
        """
        A port in --http-ports is HTTP at once: a client silent for longer
        than the detect timeout (a preconnect) is still proxied as HTTP, and
        bytes that are not HTTP get 400.
        """
        proxy = Proxy(http_ports="80,400-450", detect_timeout=0.3)
        transport = proxy.connect()
        self.assertIsInstance(transport.protocol, ProxyChannel)
        self.assertEqual(proxy.factory.waiting.deadlines, {})
        proxy.reactor.advance(5)
        transport.protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual([c[:2] for c in proxy.reactor.tcpClients], [DEST])
        self.assertEqual(proxy.cluster.stats.http_found, 1)
        other = proxy.connect()
        other.protocol.dataReceived(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        self.assertTrue(other.value().startswith(b"HTTP/1.1 400 "), other.value())

    def test_real_socket(self):
        """
        Over a real loopback connection whose request is sent before the
        reactor accepts it, the request is read during the accept: nothing
        waits, and the HTTP side gets every byte once.
        """
        request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        got = defer.Deferred()

        class Recorder(Protocol):
            def dataReceived(self, data):
                got.callback(data)

        settings = Settings()
        cluster = OriginalDstCluster(settings, reactor)
        factory = ListenerFactory(cluster, settings, reactor, original_destination=lambda handle: DEST)
        factory.http_channel = lambda tag, resolved: Recorder()
        waited = []
        factory.waiting.add = waited.append
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(client.close)
        client.sendall(request)

        def check(data):
            self.assertEqual(data, request)
            self.assertEqual(waited, [])

        return got.addCallback(check)
