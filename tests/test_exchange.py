"""
Tests for L{origdst.exchange}: the states of one exchange, and an abort that
ends it once however many paths lead to it.
"""

from twisted.trial import unittest

from origdst import exchange as states

from tests.helpers import GET, OK, ProxyHarness, capture_log

POST = b"POST /p HTTP/1.1\r\nHost: 10.250.0.3\r\nContent-Length: 4\r\n\r\n"


class StateTests(unittest.TestCase):
    def setUp(self):
        self.proxy = ProxyHarness(self, request_timeout=15)
        self.log = capture_log(self)

    def test_states_of_a_post(self):
        """
        CONNECTING while the pool dials, SENDING while the body streams,
        AWAITING_HEAD once it is sent, RESPONDING with the response head,
        DONE when the response is complete.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(POST)
        exchange = channel.exchange
        seen = [exchange.state]
        upstream = self.proxy.accept_upstream()
        seen.append(exchange.state)
        channel.dataReceived(b"body")
        seen.append(exchange.state)
        upstream.protocol.dataReceived(OK[:-2])
        seen.append(exchange.state)
        upstream.protocol.dataReceived(OK[-2:])
        seen.append(exchange.state)
        self.assertEqual(
            seen,
            [states.CONNECTING, states.SENDING, states.AWAITING_HEAD, states.RESPONDING, states.DONE],
        )

    def test_retry_returns_to_connecting(self):
        """
        A request sent again after a reused connection was closed waits for
        a connection once more.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        upstream = self.proxy.accept_upstream()
        upstream.protocol.dataReceived(OK)
        channel.dataReceived(GET)
        exchange = channel.exchange
        upstream.loseConnection()
        self.assertEqual((exchange.state, exchange.retried), (states.CONNECTING, True))


class AbortTests(unittest.TestCase):
    """
    An exchange ended by a timeout or a failure is then closed with its
    client connection: the second end finds it C{DONE} and does nothing.
    """

    def setUp(self):
        self.proxy = ProxyHarness(self, request_timeout=15, max_connections=1)
        self.log = capture_log(self)

    def test_timeout_while_waiting_cancels_once(self):
        """
        A route timeout while the request waits in the pool takes it out of
        the queue once.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        pool = self.proxy.cluster.host("10.250.0.3", 80).pool
        cancelled = []
        original = pool.cancel
        self.patch(pool, "cancel", lambda e: (cancelled.append(e), original(e)))
        exchange = channel.exchange
        self.proxy.reactor.advance(15)
        self.assertEqual((cancelled, exchange.state), ([exchange], states.DONE))
        self.assertFalse(client.connected)

    def test_timeout_while_responding_aborts_once(self):
        """
        A route timeout after the response began drops the upstream
        connection once, and never asks the pool to cancel anything.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        upstream = self.proxy.accept_upstream()
        upstream.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab")
        pool = self.proxy.cluster.host("10.250.0.3", 80).pool
        calls = []
        self.patch(pool, "cancel", lambda e: calls.append("cancel"))
        abort = upstream.protocol.abort
        self.patch(upstream.protocol, "abort", lambda: (calls.append("abort"), abort()))
        self.proxy.reactor.advance(15)
        self.assertEqual(calls, ["abort"])
        self.assertFalse(client.connected)

    def test_abort_idempotent(self):
        """
        Aborting a C{DONE} exchange does nothing.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        exchange = channel.exchange
        pool = exchange.pool
        cancelled = []
        self.patch(pool, "cancel", cancelled.append)
        exchange.abort()
        exchange.abort()
        self.assertEqual((cancelled, exchange.state), ([exchange], states.DONE))
