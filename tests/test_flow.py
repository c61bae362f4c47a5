"""
Tests for L{origdst.flow.write}: a write straight to the socket of a real
TCP connection on loopback, and Twisted's own write everywhere else.
"""

from twisted.internet import defer, reactor, tcp
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from origdst import flow


class Collect(Protocol):
    def __init__(self):
        self.data = b""
        self.done = defer.Deferred()
        self.want = 0

    def dataReceived(self, data):
        self.data += data
        if len(self.data) >= self.want and not self.done.called:
            self.done.callback(self.data)


class Keep(Protocol):
    def connectionMade(self):
        self.factory.connected.callback(self)


class WriteTests(unittest.TestCase):
    @defer.inlineCallbacks
    def connection(self):
        """
        @return: a L{Deferred} firing with C{(server protocol, client
            transport)} of a real loopback TCP connection.
        """
        server = Collect()
        port = reactor.listenTCP(0, Factory.forProtocol(lambda: server), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        factory = ClientFactory.forProtocol(Keep)
        factory.connected = defer.Deferred()
        connector = reactor.connectTCP("127.0.0.1", port.getHost().port, factory)
        self.addCleanup(connector.disconnect)
        client = yield factory.connected
        return server, client.transport

    def test_attributes(self):
        """
        Twisted's TCP transports have every attribute L{flow.write} reads: a
        Twisted release without one fails here rather than silently write
        through a path nobody tested.
        """
        for cls in (tcp.Server, tcp.Client):
            for name in flow.TRANSPORT_ATTRIBUTES:
                if name in ("socket", "dataBuffer", "offset", "_tempDataLen"):
                    continue  # set per instance: checked on a real one below
                self.assertTrue(hasattr(cls, name), f"{cls.__name__}.{name}")

    @defer.inlineCallbacks
    def test_direct(self):
        """
        With nothing buffered, the bytes go straight to the socket: the
        transport's buffer stays empty and it is not registered for writing.
        """
        server, transport = yield self.connection()
        for name in flow.TRANSPORT_ATTRIBUTES:
            self.assertTrue(hasattr(transport, name), name)
        server.want = 5
        flow.write(transport, b"hello")
        self.assertEqual((transport._tempDataLen, transport.dataBuffer), (0, b""))
        self.assertNotIn(transport, reactor.getWriters())
        data = yield server.done
        self.assertEqual(data, b"hello")

    @defer.inlineCallbacks
    def test_behind_buffered(self):
        """
        Behind bytes still in Twisted's buffer, a write is buffered too, so
        the order holds.
        """
        server, transport = yield self.connection()
        server.want = 10
        transport.write(b"first")
        flow.write(transport, b"-then")
        self.assertEqual(transport._tempDataLen, 10)
        data = yield server.done
        self.assertEqual(data, b"first-then")

    @defer.inlineCallbacks
    def test_tls_or_closing(self):
        """
        A closing transport, or one with TLS, gets Twisted's own write.
        """
        server, transport = yield self.connection()
        transport.TLS = True
        written = []
        transport.write = written.append
        flow.write(transport, b"x")
        transport.TLS = False
        transport.disconnecting = True
        flow.write(transport, b"y")
        self.assertEqual(written, [b"x", b"y"])
        del transport.write
        transport.disconnecting = False

    def test_other_transport(self):
        """
        Any other transport (here a test's) gets its own write.
        """
        transport = StringTransport()
        flow.write(transport, b"hello")
        self.assertEqual(transport.value(), b"hello")


class BulkReadSizeTests(unittest.TestCase):
    def test_cpython(self):
        """
        CPython reads a large body 1 MiB at a time.
        """
        self.assertEqual(flow.bulk_read_size("cpython"), 1024 * 1024)

    def test_pypy(self):
        """
        PyPy reads it in Twisted's usual size, which its nursery holds.
        """
        self.assertEqual(flow.bulk_read_size("pypy"), flow.SMALL_READ)


class FollowReadsTests(unittest.TestCase):
    def test_sizes(self):
        """
        A read that fills the buffer makes the next ones large; a small one
        makes them Twisted's usual size again; one in between keeps them.
        """
        transport = StringTransport()
        transport.bufferSize = flow.SMALL_READ
        flow.follow_reads(transport, 1000)
        self.assertEqual(transport.bufferSize, flow.SMALL_READ)
        flow.follow_reads(transport, flow.SMALL_READ)
        self.assertEqual(transport.bufferSize, flow.BULK_READ)
        flow.follow_reads(transport, 300 * 1024)
        self.assertEqual(transport.bufferSize, flow.BULK_READ)
        flow.follow_reads(transport, 100)
        self.assertEqual(transport.bufferSize, flow.SMALL_READ)

    def test_no_read_size(self):
        """
        A transport without a read size is left as it is.
        """
        transport = StringTransport()
        flow.follow_reads(transport, flow.BULK_READ)
        self.assertFalse(hasattr(transport, "bufferSize"))
