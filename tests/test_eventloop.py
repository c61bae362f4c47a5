"""
Tests for L{origdst.eventloop}: the lean poll loop still dispatches events
and still logs errors, and the installed Twisted still has what it needs.
"""

import os
import sys

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
            if sys.platform.startswith("linux"):
                self.fail("Twisted's epoll reactor does not import on Linux")
            raise unittest.SkipTest("no epoll on this platform")
        self.reactor = EPollReactor()
        self.addCleanup(self.reactor._poller.close)
        self.fds = os.pipe()
        self.addCleanup(os.close, self.fds[0])
        self.addCleanup(os.close, self.fds[1])

    def dispatch_one(self):
        """
        Make the pipe readable and run one iteration of the reactor's loop.

        @return: what the reader read, and the calls that went through
            Twisted's C{log.callWithLogger} meanwhile.
        """
        from twisted.internet import epollreactor
        wrapped = []
        self.patch(epollreactor.log, "callWithLogger",
                   lambda *args, **kwargs: wrapped.append(args))
        reader = Reader(self.fds[0])
        self.reactor.addReader(reader)
        os.write(self.fds[1], b"ping")
        self.reactor.doIteration(0)
        self.reactor.removeReader(reader)
        return reader.read, wrapped

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

    def test_reactor_attributes(self):
        """
        The installed Twisted's epoll reactor has the private attributes the
        lean loop uses, of the kinds it uses them as. A Twisted release that
        renames or changes them fails here instead of silently losing the
        lean loop.
        """
        self.assertEqual(eventloop.missing_attributes(self.reactor), [])
        self.assertTrue(callable(self.reactor._poller.poll))
        self.assertIsInstance(self.reactor._selectables, dict)
        self.assertTrue(callable(self.reactor._doReadOrWrite))
        reader = Reader(self.fds[0])
        self.reactor.addReader(reader)
        self.assertIs(self.reactor._selectables[self.fds[0]], reader)
        self.reactor.removeReader(reader)

    def test_default_reactor_is_epoll(self):
        """
        On Linux, twistd's default reactor is the epoll one that L{eventloop.tune} tunes.
        """
        if not sys.platform.startswith("linux"):
            raise unittest.SkipTest("epoll is Linux's")
        from twisted.internet import default, epollreactor
        from twisted.python.runtime import platform
        self.assertIs(default._getInstallFunction(platform), epollreactor.install)

    def test_installs_lean_loop(self):
        """
        L{eventloop.tune} replaces the reactor's poll loop with its own, and
        events are then dispatched without Twisted's per-event logging
        context (C{log.callWithLogger}), which is the point of it.
        """
        self.assertTrue(eventloop.tune(self.reactor))
        self.assertTrue(getattr(self.reactor.doIteration, "lean", False))
        self.assertIs(self.reactor.doPoll, self.reactor.doIteration)
        self.assertEqual(self.dispatch_one(), (b"ping", []))

    def test_untuned_loop_uses_logging_context(self):
        """
        The check above can fail: Twisted's own loop does go through
        C{log.callWithLogger}.
        """
        read, wrapped = self.dispatch_one()
        self.assertEqual(len(wrapped), 1)

    def test_missing_attribute_warns(self):
        """
        An epoll reactor without one of the attributes keeps its own loop and
        a warning names what is missing.
        """
        del self.reactor._selectables
        self.addCleanup(setattr, self.reactor, "_selectables", {})
        own = self.reactor.doIteration
        events = []
        from twisted.logger import globalLogPublisher
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.assertFalse(eventloop.tune(self.reactor))
        self.assertEqual(self.reactor.doIteration, own)
        self.assertEqual([e.get("missing") for e in events if "missing" in e], ["_selectables"])

    def test_switch_per_runtime(self):
        """
        L{eventloop.LEAN_DISPATCH} turns the lean loop off for a runtime.
        """
        self.patch(eventloop, "LEAN_DISPATCH", {"cpython": True, "pypy": False})
        own = self.reactor.doIteration
        self.assertFalse(eventloop.tune(self.reactor, runtime="pypy"))
        self.assertEqual(self.reactor.doIteration, own)
        self.assertTrue(eventloop.tune(self.reactor, runtime="cpython"))
        self.assertTrue(self.reactor.doIteration.lean)
