"""
Tests for L{origdst.fdlimit}: the fd limit raised at start, and running out of descriptors
handled cleanly and quietly (issue 12, item 4).
"""

import errno
import os
import re
import time

from twisted.internet.error import ConnectBindError, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import unittest

import testbed
from origdst import fdlimit

REFUSED = {"log_format": "EMFILE recovery: Closed socket from {address}", "address": "x"}
WAITING = {"log_format": "Could not accept new connection ({acceptError})", "acceptError": "ENFILE"}
QUIET = {"log_format": "EMFILE encountered; releasing reserved file descriptor."}


class FakeResource:
    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft, hard, refuse=False):
        self.limits = (soft, hard)
        self.refuse = refuse

    def getrlimit(self, which):
        return self.limits

    def setrlimit(self, which, limits):
        if self.refuse:
            raise ValueError("not allowed")
        self.limits = limits


class FakePort:
    connected = True

    def __init__(self):
        self.reading = True

    def stopReading(self):
        self.reading = False

    def startReading(self):
        self.reading = True


class RaiseLimitTests(unittest.TestCase):
    def test_raised_to_hard(self):
        """
        The soft limit goes up to the hard one.
        """
        fake = FakeResource(256, 4096)
        self.assertEqual(fdlimit.raise_limit(fake), (4096, 4096))
        self.assertEqual(fake.limits, (4096, 4096))

    def test_not_permitted(self):
        """
        Where it may not be raised, it is left as it is (and logged).
        """
        self.assertEqual(fdlimit.raise_limit(FakeResource(256, 4096, refuse=True)), (256, 4096))

    def test_no_resource_module(self):
        self.assertIsNone(fdlimit.raise_limit(None))


class AcceptErrorsTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.port = FakePort()
        self.passed = []
        self.guard = fdlimit.AcceptErrors(self.clock, self.port, self.passed.append)
        self.reports = []
        self.patch(self.guard, "report", self._report(self.guard.report))

    def _report(self, real):
        def report():
            if self.guard.refused:
                self.reports.append((self.clock.seconds(), self.guard.refused))
            real()
        return report

    def test_at_most_one_line_a_second_with_a_count(self):
        """
        A burst of refused connections makes one report at once and one a second later with
        the count of the others; Twisted's own lines about the reserve are dropped; other
        events pass.
        """
        self.guard(REFUSED)
        for _ in range(399):
            self.guard(QUIET)
            self.guard(REFUSED)
            self.clock.advance(0.001)
        self.guard({"log_format": "something else"})
        self.assertEqual(self.reports, [(0, 1)])
        self.clock.advance(1)
        self.assertEqual([count for _, count in self.reports], [1, 399])
        self.assertEqual(self.passed, [{"log_format": "something else"}])
        self.clock.advance(10)
        self.assertEqual(len(self.reports), 2)
        self.assertEqual(self.guard.total, 400)

    def test_left_waiting_pauses_accepting(self):
        """
        An error that leaves the connection in the backlog stops reading the port for a
        moment, so the poller does not call it again at once.
        """
        self.guard(WAITING)
        self.assertFalse(self.port.reading)
        self.guard(WAITING)
        self.clock.advance(fdlimit.AcceptErrors.PAUSE)
        self.assertTrue(self.port.reading)
        self.assertEqual(self.guard.total, 2)

    def test_upstream_shortage_counted_with_refusals(self):
        """
        A relayed connection whose upstream socket found no descriptor is counted in the
        port's report instead of logging a line of its own; other failures are not.
        """
        self.patch(fdlimit, "_guards", [self.guard])
        shortage = Failure(ConnectBindError(errno.EMFILE, "Too many open files"))
        self.assertTrue(fdlimit.count_refused(shortage))
        self.assertFalse(fdlimit.count_refused(Failure(ConnectBindError(errno.EADDRINUSE, "in use"))))
        self.assertFalse(fdlimit.count_refused(Failure(ConnectionRefusedError())))
        self.assertEqual((self.guard.total, self.reports), (1, [(0, 1)]))
        self.patch(fdlimit, "_guards", [])
        self.assertFalse(fdlimit.count_refused(shortage))


PROXY_PORT = 15001
LIMIT = 256
IDLE = 400
HOLD = 6
HERE = os.path.dirname(os.path.abspath(__file__))


class ExhaustionTests(testbed.TopologyTestCase):
    """
    The proxy under C{prlimit --nofile=256}, 400 idle client connections held 6 s.
    """

    tag = "fd"

    @classmethod
    def build(cls, topology):
        topology.start_backend()
        topology.add_redirect(testbed.SERVER_V4, 80, PROXY_PORT)
        topology.start_proxy(
            ["--port", "tcp6:%d" % PROXY_PORT, "--admin", "none"], PROXY_PORT,
            wrapper=["prlimit", "--nofile=%d:%d" % (LIMIT, LIMIT)])

    def test_exhaustion(self):
        """
        Connections beyond the limit are closed at once (not left hanging), the log says so at
        most once a second with a count, the proxy does not spin, and once the idle
        connections are gone it serves again.
        """
        topology = self.topology
        start = len(topology.proxy_log())
        self.assertIn("File descriptor limit: %d." % LIMIT, topology.proxy_log())
        cpu_before = _cpu_seconds(topology.proxy.popen.pid)
        began = time.monotonic()
        proc = topology.start_script(os.path.join(HERE, "idleclients.py"),
                                     [testbed.SERVER_V4, 80, IDLE, HOLD])
        result = topology.finish_script(proc, timeout=HOLD + 60)
        elapsed = time.monotonic() - began
        cpu = _cpu_seconds(topology.proxy.popen.pid) - cpu_before
        self.assertEqual(result["connected"], IDLE, result)
        # Those over the limit were closed by the proxy, not left waiting.
        self.assertGreater(result["closed_by_peer"], IDLE - LIMIT - 1, result)
        log = topology.proxy_log()[start:]
        lines = log.splitlines()
        reports = [l for l in lines if "Out of file descriptors" in l]
        self.assertGreater(len(reports), 0, log[-2000:])
        self.assertLessEqual(len(reports), int(elapsed) + 2, reports)
        self.assertEqual([l for l in lines if "EMFILE" in l], [])
        self.assertLessEqual(len(lines), len(reports) + 20, log[-3000:])
        counted = sum(int(re.search(r": (\d+) new connection", l).group(1)) for l in reports)
        self.assertEqual(counted, result["closed_by_peer"])
        self.assertLess(cpu, elapsed / 2, "the proxy spun: %.2f s CPU in %.2f s" % (cpu, elapsed))
        got = topology.run_client({"host": testbed.SERVER_V4, "port": 80,
                                   "requests": [{"path": "/echo"}]})
        self.assertEqual(got["responses"][0]["status"], 200, got)


def _cpu_seconds(pid):
    """
    CPU time of the proxy: the python process under ip netns exec and prlimit.
    """
    total = 0.0
    for task in testbed.descendants(pid) + [pid]:
        try:
            with open("/proc/%d/stat" % task) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return total


def testSuite():
    from twisted.trial import runner

    tests = runner.TestSuite()
    for cls in (RaiseLimitTests, AcceptErrorsTests):
        tests.addTests(cls(n) for n in sorted(dir(cls)) if n.startswith("test_"))
    tests.addTest(testbed.suite(ExhaustionTests))
    return tests
