"""
Tests for L{origdst.cluster}: hosts on demand and the cleanup sweep.
"""

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from origdst.cluster import OriginalDstCluster
from origdst.config import Settings

from tests.helpers import capture_log


class ClusterTests(unittest.TestCase):
    def setUp(self):
        self.clock = MemoryReactorClock()
        self.cluster = OriginalDstCluster(Settings(cleanup_interval=5), self.clock)
        self.log = capture_log(self)
        self.cluster.startService()
        self.addCleanup(self.cluster.stopService)

    def test_created_on_first_use(self):
        """
        A host is created once per ip:port and found again after that.
        """
        a = self.cluster.host("10.250.0.3", 80)
        self.assertIs(self.cluster.host("10.250.0.3", 80), a)
        b = self.cluster.host("fd00::3", 80)
        self.assertEqual((a.key, b.key), ("10.250.0.3:80", "[fd00::3]:80"))
        self.assertEqual(self.log, ["Created host 10.250.0.3:80.", "Created host [fd00::3]:80."])

    def test_sweep_keeps_used_then_removes(self):
        """
        A host used since the last sweep is kept and unmarked; at the next
        sweep without use it is removed, as in Envoy.
        """
        self.cluster.host("10.250.0.3", 80)
        del self.log[:]
        self.clock.advance(5)
        self.assertIn(("10.250.0.3", 80), self.cluster.hosts)
        self.assertEqual(self.log, ["Cleaning up stale original dst hosts.", "Keeping active host 10.250.0.3:80."])
        del self.log[:]
        self.clock.advance(5)
        self.assertEqual(self.cluster.hosts, {})
        self.assertEqual(self.log, ["Cleaning up stale original dst hosts.", "Removing stale host 10.250.0.3:80."])

    def test_no_sweep_before_interval(self):
        """
        The first sweep comes one interval after start, not at once.
        """
        self.cluster.host("10.250.0.3", 80)
        self.clock.advance(4.9)
        self.assertNotIn("Cleaning up stale original dst hosts.", self.log)

    def test_host_with_request_in_flight_is_kept(self):
        """
        A host still carrying a request is not removed, even when it was not
        chosen since the last sweep.
        """
        host = self.cluster.host("10.250.0.3", 80)
        host.pool.connecting = 1
        self.clock.advance(5)
        self.clock.advance(5)
        self.assertIn(("10.250.0.3", 80), self.cluster.hosts)
        self.assertEqual(self.log.count("Keeping active host 10.250.0.3:80."), 2)

    def test_removed_host_is_created_again(self):
        """
        After removal, a new request creates a new host.
        """
        first = self.cluster.host("10.250.0.3", 80)
        self.clock.advance(5)
        self.clock.advance(5)
        second = self.cluster.host("10.250.0.3", 80)
        self.assertIsNot(first, second)
        self.assertTrue(first.pool.closed)

    def test_stop(self):
        """
        Stopping the service stops the sweep.
        """
        self.cluster.host("10.250.0.3", 80)
        self.cluster.stopService()
        self.clock.advance(20)
        self.assertIn(("10.250.0.3", 80), self.cluster.hosts)

    def test_failed_sweep_is_logged_and_the_next_runs(self):
        """
        A sweep that raises is logged, and sweeps go on every interval.
        """
        errors = []

        def observer(event):
            if "log_failure" in event:
                errors.append(event)

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        host = self.cluster.host("10.250.0.3", 80)
        self.clock.advance(5)

        def broken():
            raise RuntimeError("close failed")

        host.pool.close = broken
        self.clock.advance(5)
        self.assertEqual([e["log_failure"].value.args for e in errors], [("close failed",)])
        self.flushLoggedErrors(RuntimeError)
        self.cluster.host("10.250.0.4", 80)
        self.clock.advance(5)
        self.clock.advance(5)
        self.assertNotIn(("10.250.0.4", 80), self.cluster.hosts)
