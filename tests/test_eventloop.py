"""
Tests for L{origdst.eventloop}: the lean poll loop still dispatches events
and still logs errors.
"""

import os

from twisted.internet.testing import MemoryReactor
from twisted.trial import unittest

from origdst import eventloop

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:
    EPollReactor = None


class Reader:
    def __init__(self, fd, fail=False):
        self.fd = fd
        self.fail = fail
        self.read = b""

    def fileno(self):
        return self.fd

    def logPrefix(self):
        return "Reader"

    def doRead(self):
        if self.fail:
            raise ValueError("broken reader")
        self.read += os.read(self.fd, 100)

    def connectionLost(self, reason):
        pass


class TuneTests(unittest.TestCase):
    def setUp(self):
        if EPollReactor is None:
            raise unittest.SkipTest("no epoll on this platform")
        self.reactor = EPollReactor()
        self.addCleanup(self.reactor._poller.close)
        self.fds = os.pipe()
        self.addCleanup(os.close, self.fds[0])
        self.addCleanup(os.close, self.fds[1])

    def test_other_reactors_untouched(self):
        """
        Only epoll reactors are tuned.
        """
        self.assertFalse(eventloop.tune(MemoryReactor()))

    def test_dispatches(self):
        """
        A ready reader is read by the tuned loop.
        """
        self.assertTrue(eventloop.tune(self.reactor))
        reader = Reader(self.fds[0])
        self.reactor.addReader(reader)
        os.write(self.fds[1], b"ping")
        self.reactor.doIteration(0)
        self.assertEqual(reader.read, b"ping")
        self.reactor.removeReader(reader)

    def test_errors_logged(self):
        """
        An error in a reader is logged and disconnects it, as before.
        """
        eventloop.tune(self.reactor)
        reader = Reader(self.fds[0], fail=True)
        self.reactor.addReader(reader)
        os.write(self.fds[1], b"x")
        self.reactor.doIteration(0)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertNotIn(reader, self.reactor.getReaders())
