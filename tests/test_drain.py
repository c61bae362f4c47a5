"""
Tests for L{origdst.drain}: the graceful drain, on a memory reactor.
"""

import signal

from twisted.internet import defer
from twisted.trial import unittest

from origdst import admin, downstream as states, stats, workers
from origdst.drain import Drain
from origdst.tap import ProxyService, _exit_zero

from tests.helpers import CHANGE, GET, OK, SWITCH, UPGRADE, ProxyHarness, capture_log, fetch, parse_response


class FakeListener:
    """
    Stands for L{origdst.tap.ListenerService}: records that it stopped.
    """

    def __init__(self):
        self.stopped = 0

    def stop_listening(self):
        self.stopped += 1


class FakeWorkers:
    def __init__(self):
        self.drained = []
        self.ended = defer.Deferred()

    def drain(self, timeout):
        self.drained.append(timeout)
        return self.ended


class DrainTests(unittest.TestCase):
    def setUp(self):
        self.log = capture_log(self)
        self.proxy = ProxyHarness(self)
        self.clock = self.proxy.reactor
        self.listener = FakeListener()
        self.stats = self.proxy.cluster.stats
        self.drain = Drain(self.clock, self.stats, 25, [self.listener], self.proxy.factory.connections)

    def finished(self, d):
        result = []
        d.addCallback(result.append)
        return result

    def test_idle_connections_close_at_once(self):
        """
        Idle connections (one that never sent a byte, one between requests)
        close at once; with nothing else open the drain is over at once, the
        port closed and the state DRAINING.
        """
        fresh, fresh_client = self.proxy.client()
        used, used_client = self.proxy.client()
        used.dataReceived(GET)
        self.proxy.accept_upstream().protocol.dataReceived(OK)
        self.assertEqual(used.state, states.IDLE)
        done = self.finished(self.drain.start())
        self.assertEqual(done, [None])
        self.assertEqual((fresh.state, used.state), (states.CLOSED, states.CLOSED))
        self.assertFalse(fresh_client.connected or used_client.connected)
        self.assertEqual((self.listener.stopped, self.stats.state), (1, stats.DRAINING))
        self.assertEqual(len(self.proxy.factory.connections), 0)

    def test_request_in_flight_finishes_with_close(self):
        """
        A request under way is answered in full, with connection: close, and
        its connection closes after it; only then is the drain over, before
        the timeout.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        upstream = self.proxy.accept_upstream()
        done = self.finished(self.drain.start())
        self.clock.advance(10)
        self.assertEqual((done, channel.state), ([], states.AWAITING))
        upstream.protocol.dataReceived(OK)
        status, headers, body, rest = parse_response(client.value())
        self.assertEqual((status, body, headers[b"connection"]), (200, b"hello", [b"close"]))
        self.assertEqual((channel.state, client.connected, done), (states.CLOSED, False, [None]))
        self.assertFalse([line for line in self.log if "Drain timeout" in line])
        self.assertTrue([line for line in self.log if line.startswith("Drained")])

    def test_response_already_begun(self):
        """
        A response whose head went out before the drain began ends the
        connection once it is complete.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        upstream = self.proxy.accept_upstream()
        upstream.protocol.dataReceived(OK[:-3])
        done = self.finished(self.drain.start())
        self.assertEqual(done, [])
        upstream.protocol.dataReceived(OK[-3:])
        self.assertTrue(client.value().endswith(b"hello"))
        self.assertEqual((channel.state, done), (states.CLOSED, [None]))

    def test_head_under_way(self):
        """
        A request whose head is still arriving is forwarded when complete,
        and answered with connection: close.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET[:10])
        done = self.finished(self.drain.start())
        self.assertEqual(channel.state, states.HEAD)
        channel.dataReceived(GET[10:])
        self.proxy.accept_upstream().protocol.dataReceived(OK)
        status, headers, body, _ = parse_response(client.value())
        self.assertEqual((status, headers[b"connection"]), (200, [b"close"]))
        self.assertEqual(done, [None])

    def test_timeout_closes_what_is_left(self):
        """
        Nothing is cut before the timeout; at the timeout what is still open
        (a slow response, a tunnel) is closed, with one log line that counts
        them, and the drain is over.
        """
        slow, slow_client = self.proxy.client()
        slow.dataReceived(GET)
        self.proxy.accept_upstream()
        tunnel, tunnel_client = self.proxy.client()
        tunnel.dataReceived(UPGRADE)
        self.proxy.accept_upstream().protocol.dataReceived(SWITCH)
        self.assertEqual(tunnel.state, states.TUNNEL)
        # Shorter than the request timeout (15 s), which would end the slow one.
        drain = Drain(self.clock, self.stats, 10, [], self.proxy.factory.connections)
        done = self.finished(drain.start())
        self.clock.advance(9.9)
        self.assertEqual((slow_client.connected, tunnel_client.connected, done), (True, True, []))
        self.clock.advance(0.1)
        self.assertEqual((slow_client.connected, tunnel_client.connected, done), (False, False, [None]))
        timeouts = [line for line in self.log if line.startswith("Drain timeout")]
        self.assertEqual(timeouts, ["Drain timeout (10 s): closing 2 client connections still open."])

    def test_zero_timeout(self):
        """
        --drain-timeout 0 closes what is open at once.
        """
        drain = Drain(self.clock, self.stats, 0, [], self.proxy.factory.connections)
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        self.proxy.accept_upstream()
        done = self.finished(drain.start())
        self.clock.advance(0)
        self.assertEqual((client.connected, done), (False, [None]))

    def test_started_once(self):
        """
        A second start (SIGTERM after POST /drain_listeners) waits for the
        same drain; once over, it is over at once.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        upstream = self.proxy.accept_upstream()
        first = self.finished(self.drain.start())
        self.clock.advance(5)
        second = self.finished(self.drain.start())
        self.assertEqual(self.listener.stopped, 1)
        upstream.protocol.dataReceived(OK)
        self.assertEqual((first, second), ([None], [None]))
        self.assertEqual(self.finished(self.drain.start()), [None])

    def test_waits_for_workers(self):
        """
        With workers, the drain is over only when they have ended too; they
        are given the same timeout.
        """
        pool = FakeWorkers()
        drain = Drain(self.clock, self.stats, 25, [], self.proxy.factory.connections, pool)
        done = self.finished(drain.start())
        self.assertEqual((pool.drained, done), ([25], []))
        pool.ended.callback(None)
        self.assertEqual(done, [None])


class FakeProcess:
    def __init__(self):
        self.signals = []

    def signalProcess(self, sig):
        self.signals.append(sig)


class Ended:
    def getErrorMessage(self):
        return "exit 0"


class WorkerPoolDrainTests(unittest.TestCase):
    def setUp(self):
        capture_log(self)
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.pool = workers.WorkerPool(self.clock, 3, ["python"])
        self.pool.running = True
        self.processes = {1: FakeProcess(), 2: FakeProcess()}
        self.pool.processes = dict(self.processes)

    def test_drain_signals_and_waits(self):
        """
        Each worker gets SIGTERM; the drain ends when the last has ended, and
        none is restarted.
        """
        done = []
        self.pool.drain(25).addCallback(done.append)
        self.assertEqual([p.signals for p in self.processes.values()], [[signal.SIGTERM]] * 2)
        self.pool.ended(workers.Worker(self.pool, 1), Ended())
        self.assertEqual(done, [])
        self.pool.ended(workers.Worker(self.pool, 2), Ended())
        self.assertEqual(done, [None])
        self.clock.advance(60)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_drain_gives_up(self):
        """
        Workers that do not end are waited for their drain timeout and a
        grace period, no longer.
        """
        done = []
        self.pool.drain(25).addCallback(done.append)
        self.clock.advance(25 + workers.WorkerPool.DRAIN_GRACE - 0.1)
        self.assertEqual(done, [])
        self.clock.advance(0.1)
        self.assertEqual(done, [None])


class AdminDrainTests(unittest.TestCase):
    def setUp(self):
        capture_log(self)
        self.proxy = ProxyHarness(self)
        self.started = []
        state = admin.Admin(
            self.proxy.settings, self.proxy.cluster, self.proxy.reactor, drain=lambda: self.started.append(1)
        )
        self.site = admin.site(state)

    def test_post_drains(self):
        """
        POST /drain_listeners with the admin header starts the drain.
        """
        response = fetch(self.site, "/drain_listeners", b"POST", CHANGE)
        self.assertEqual((response.code, response.text(), self.started), (200, "OK\n", [1]))

    def test_guarded(self):
        """
        It changes the proxy: a GET is 405, and a POST without the admin
        header (what a web page can send) is refused by the cross-site guard.
        """
        self.assertEqual(fetch(self.site, "/drain_listeners").code, 405)
        self.assertEqual(fetch(self.site, "/drain_listeners", b"POST").code, 403)
        self.assertEqual(self.started, [])
        self.assertIn(("drain_listeners", admin.DrainListeners, True), admin.ENDPOINTS)


class ServiceTests(unittest.TestCase):
    def test_stop_waits_for_the_drain(self):
        """
        The proxy service stops its children only after the drain, a
        further signal meanwhile is only logged, and a SIGTERM'd process
        then exits with 0.
        """
        proxy = ProxyHarness(self)
        capture_log(self)
        top = ProxyService(proxy.cluster.stats)
        proxy.cluster.setServiceParent(top)
        listener = FakeListener()
        top.drain = Drain(proxy.reactor, proxy.cluster.stats, 25, [listener], proxy.factory.connections)
        top.startService()
        channel, client = proxy.client()
        channel.dataReceived(GET)
        upstream = proxy.accept_upstream()
        proxy.reactor._exitSignal = signal.SIGTERM
        for number in (signal.SIGTERM, signal.SIGINT):
            self.addCleanup(signal.signal, number, signal.getsignal(number))
        before = signal.getsignal(signal.SIGTERM)
        stopped = []
        top.stopService().addCallback(stopped.append)
        # Another SIGTERM during the drain is only logged.
        self.assertNotEqual(signal.getsignal(signal.SIGTERM), before)
        self.assertEqual((stopped, proxy.cluster.running, top.stats.state), ([], 1, stats.DRAINING))
        upstream.protocol.dataReceived(OK)
        self.assertEqual(len(stopped), 1)
        self.assertFalse(proxy.cluster.running)
        self.assertIsNone(proxy.reactor._exitSignal)

    def test_exit_zero_without_signal(self):
        """
        A reactor without the attribute is left alone.
        """
        class Reactor:
            pass

        reactor = Reactor()
        _exit_zero(reactor)
        self.assertFalse(hasattr(reactor, "_exitSignal"))
