"""
Tests for L{origdst.rawcopy}: bytes moved from one real loopback TCP
connection to another through the raw buffer, a client that cannot take
them all holding the rest, and the order of writes behind it.

The raw path is PyPy's, but cffi is there on CPython too (pyOpenSSL's
cryptography needs it), so these run on both by loading it as PyPy would.
"""

import fcntl
import os
import socket
import struct
import termios

from twisted.internet import defer, error, reactor, task
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from origdst import flow, rawcopy


class End(Protocol):
    """
    One end of a connection: collects what arrives, tells when it is lost.
    """

    def __init__(self):
        self.data = bytearray()
        self.lost = defer.Deferred()

    def connectionMade(self):
        self.factory.made.callback(self)

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost.callback(reason.value)


def until(predicate, seconds=30.0):
    """
    @return: a L{Deferred} that fires once C{predicate()} is true (real
        sockets take real time); it fails after C{seconds}.
    """
    waited = [0.0]

    def check():
        if predicate():
            return None
        waited[0] += 0.01
        if waited[0] > seconds:
            raise AssertionError("not within %s s" % (seconds,))
        return task.deferLater(reactor, 0.01, check)

    return defer.maybeDeferred(check)


def queued(sock, request):
    """
    @return: the byte count C{ioctl(sock, request)} reports (FIONREAD: to
        be read; TIOCOUTQ: not yet sent).
    """
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0" * 4))[0]


def stalled(parts):
    """
    @return: a predicate true once the client side holds a buffer and
        neither the reader's nor the sender's socket queue moved since the
        last call: the reader's socket is full. (Just after a buffer is
        held, the bytes in flight may still make room and let it go.)
    """
    last = [None]

    def check():
        now = (queued(parts["reader"].transport.socket, termios.FIONREAD),
               queued(parts["sink"].transport.socket, termios.TIOCOUTQ))
        still = "doWrite" in parts["sink"].transport.__dict__ and now == last[0]
        last[0] = now
        return still

    return check


class RawCopyTests(unittest.TestCase):
    def setUp(self):
        self.raw = rawcopy.load("pypy", size=256 * 1024)
        if self.raw is None:
            raise unittest.SkipTest("cffi cannot be loaded here")

    @defer.inlineCallbacks
    def pair(self):
        """
        @return: a L{Deferred} firing with C{(server end, client end)} of a
            real loopback TCP connection.
        """
        server_factory = Factory.forProtocol(End)
        server_factory.made = defer.Deferred()
        port = reactor.listenTCP(0, server_factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client_factory = ClientFactory.forProtocol(End)
        client_factory.made = defer.Deferred()
        reactor.connectTCP("127.0.0.1", port.getHost().port, client_factory)
        client = yield client_factory.made
        server = yield server_factory.made
        for end in (client, server):
            self.addCleanup(end.transport.abortConnection)
        return server, client

    @defer.inlineCallbacks
    def relay(self, data, after=b""):
        """
        Start moving C{len(data)} bytes raw from a server (which sends
        C{data + after}) to a reader that does not read yet, through small
        socket buffers so that the client side must hold a buffer.

        @return: a L{Deferred} firing with a dict of the parts, once a buffer
            is held.
        """
        server, source = yield self.pair()
        reader, sink = yield self.pair()
        sink.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        reader.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        reader.transport.pauseProducing()
        pauser = flow.Pauser(source.transport)
        left = [len(data)]

        def received(n):
            left[0] -= n
            rawcopy.forward(sink.transport, n, pauser, self.raw)

        rawcopy.start(source.transport, lambda: left[0], received, self.raw)
        server.transport.write(data + after)
        yield until(lambda: "doWrite" in sink.transport.__dict__)
        return {"source": source, "sink": sink, "reader": reader, "pauser": pauser, "left": left}

    @defer.inlineCallbacks
    def test_in_order(self):
        """
        The bytes arrive whole and in order; while the client side holds a
        buffer, the source is paused and a write goes behind the held bytes
        and before the ones still to be read; bytes past the limit are the
        source's own reads again.
        """
        data = os.urandom(4 * 1024 * 1024)
        parts = yield self.relay(data, after=b"NEXT")
        sink, reader, left = parts["sink"], parts["reader"], parts["left"]
        self.assertIn(flow.Pauser.PEER_FULL, parts["pauser"].reasons)
        self.assertFalse(flow.can_send_now(sink.transport))
        moved = len(data) - left[0]
        flow.write(sink.transport, b"TAIL")
        reader.transport.resumeProducing()
        yield until(lambda: len(reader.data) == len(data) + 4)
        self.assertEqual(bytes(reader.data), data[:moved] + b"TAIL" + data[moved:])
        self.assertEqual(left[0], 0)
        yield until(lambda: parts["source"].data == b"NEXT")
        self.assertNotIn("doRead", parts["source"].transport.__dict__)
        self.assertNotIn("doWrite", sink.transport.__dict__)
        self.assertEqual(parts["pauser"].reasons, set())
        self.assertTrue(flow.can_send_now(sink.transport))

    @defer.inlineCallbacks
    def test_client_gone(self):
        """
        A client that goes away while its side holds a buffer: its
        connection is lost as with Twisted's own writes, and the source is
        not resumed for it.
        """
        parts = yield self.relay(os.urandom(4 * 1024 * 1024))
        yield until(stalled(parts))
        parts["reader"].transport.abortConnection()
        why = yield parts["sink"].lost
        self.assertIsInstance(why, error.ConnectionLost)
        # Still paused: what is to become of the source is its exchange's
        # business (origdst aborts it).
        self.assertIn(flow.Pauser.PEER_FULL, parts["pauser"].reasons)

    def test_stop(self):
        """
        L{rawcopy.stop} gives a transport Twisted's reads back, and does
        nothing to one that has them.
        """
        transport = StringTransport()
        transport.doRead = lambda: None
        rawcopy.stop(transport)
        self.assertNotIn("doRead", transport.__dict__)
        rawcopy.stop(transport)


class LoadTests(unittest.TestCase):
    def test_cpython(self):
        """
        CPython moves bodies as bytes: nothing is loaded there.
        """
        self.assertIsNone(rawcopy.load("cpython"))

    def test_not_tcp(self):
        """
        Transports that are not Twisted's TCP connections (a test's, or TLS)
        are never moved raw.
        """
        raw = rawcopy.load("pypy")
        if raw is None:
            raise unittest.SkipTest("cffi cannot be loaded here")
        self.assertFalse(rawcopy.usable(StringTransport(), StringTransport(), raw=raw))
