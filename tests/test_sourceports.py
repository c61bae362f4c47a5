"""
Tests for L{origdst.sourceports}: the upstream connections' local ports.
"""

import errno
import os
import random

from twisted.internet import reactor as global_reactor
from twisted.internet.error import ConnectBindError, ConnectError
from twisted.internet.protocol import ClientFactory
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial import unittest

from origdst import readers, sourceports


class SourcePortsTests(unittest.TestCase):
    def test_cycles_through_the_range(self):
        """
        The cursor hands out every port of the range once before it repeats, from a random start.
        """
        ports = sourceports.SourcePorts(61000, 61003, rng=random.Random(1))
        taken = [ports.take() for _ in range(8)]
        self.assertEqual(sorted(taken[:4]), [61000, 61001, 61002, 61003])
        self.assertEqual(taken[4:], taken[:4])

    def test_memory_reactor_gets_the_bind_address(self):
        """
        A reactor that is not a real one is asked for a plain connectTCP bound to the next port,
        on the family's any-address.
        """
        reactor = MemoryReactorClock()
        ports = sourceports.SourcePorts(62000, 62000)
        sourceports.connect(reactor, "10.0.0.5", 80, ClientFactory(), 5, ports)
        sourceports.connect(reactor, "fd00::5", 80, ClientFactory(), 5, ports)
        sourceports.connect(reactor, "10.0.0.5", 80, ClientFactory(), 5, None)
        self.assertEqual([c[4] for c in reactor.tcpClients],
                         [("0.0.0.0", 62000), ("::", 62000), None])

    def test_taken(self):
        """
        Only a port already in use (bind, or the four-tuple at connect) makes the next port be
        tried; a refused connection is a failure.
        """
        self.assertTrue(sourceports._taken(Failure(ConnectBindError(errno.EADDRINUSE, "in use"))))
        self.assertTrue(sourceports._taken(Failure(ConnectError(errno.EADDRNOTAVAIL, "taken"))))
        self.assertFalse(sourceports._taken(Failure(ConnectError(errno.ECONNREFUSED, "refused"))))

    def test_next_port_when_taken(self):
        """
        On the real reactor, a port another socket holds (without SO_REUSEADDR) is skipped: the
        connection is made from the next port of the range.
        """
        import socket

        from twisted.internet import defer, protocol

        server = global_reactor.listenTCP(0, protocol.Factory.forProtocol(protocol.Protocol),
                                          interface="127.0.0.1")
        self.addCleanup(server.stopListening)
        blocker = socket.socket()
        blocker.bind(("0.0.0.0", 0))
        self.addCleanup(blocker.close)
        held = blocker.getsockname()[1]
        ports = sourceports.SourcePorts(held, held + 1, rng=random.Random())
        ports._next = 0
        made = defer.Deferred()

        class Client(protocol.Protocol):
            def connectionMade(self):
                made.callback(self.transport.getHost().port)
                self.transport.loseConnection()

        factory = protocol.ClientFactory.forProtocol(Client)
        factory.clientConnectionFailed = lambda c, reason: made.errback(reason)
        sourceports.connect(global_reactor, "127.0.0.1", server.getHost().port, factory, 5, ports)
        return made.addCallback(self.assertEqual, held + 1)

    def _proc(self, port_range, reserved):
        path = self.mktemp()
        os.mkdir(path)
        with open(os.path.join(path, "ip_local_port_range"), "w") as f:
            f.write(port_range)
        with open(os.path.join(path, "ip_local_reserved_ports"), "w") as f:
            f.write(reserved)
        return path + "/"

    def test_check_range(self):
        """
        A range above the ephemeral range, or reserved, is fine; one clients may be given is
        warned about, naming the setting, the overlap and the sysctls.
        """
        self.assertIsNone(sourceports.check_range(61000, 65535, self._proc("32768\t60999\n", "\n")))
        self.assertIsNone(sourceports.check_range(
            50000, 50009, self._proc("32768\t60999\n", "1000,50000-50009\n")))
        message = sourceports.check_range(50000, 50009, self._proc("32768\t60999\n", "50005\n"))
        self.assertIn("upstream-source-ports 50000-50009: 9 of them", message)
        self.assertIn("ip_local_reserved_ports", message)
        self.assertIsNone(sourceports.check_range(50000, 50009, "/nonexistent/"))


class PortRangeTests(unittest.TestCase):
    def test_reader(self):
        """
        LOW-HIGH within 1024..65535, or none.
        """
        self.assertEqual(readers.port_range("61000-65535"), (61000, 65535))
        self.assertEqual(readers.port_range(" None "), None)
        for bad in ("", "80-90", "61000", "65535-61000", "61000-70000", "a-b"):
            self.assertRaises(ValueError, readers.port_range, bad)
