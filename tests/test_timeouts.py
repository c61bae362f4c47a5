"""
Tests for the client-side timeouts: idle connection, request headers
(slowloris), stream idle; driven by a memory reactor's clock.
"""

from twisted.trial import unittest

from tests.helpers import GET, OK, ProxyHarness, capture_log, parse_response


class IdleTimeoutTests(unittest.TestCase):
    def test_idle_connection_closed(self):
        """
        A client connection with no request for the idle timeout is closed,
        without a reply.
        """
        proxy = ProxyHarness(self, idle_timeout=60)
        channel, client = proxy.client()
        proxy.reactor.advance(59)
        self.assertTrue(client.connected)
        proxy.reactor.advance(1)
        self.assertFalse(client.connected)
        self.assertEqual(client.value(), b"")

    def test_idle_counts_from_last_response(self):
        """
        The idle time starts again after each response, and a request in
        progress is never cut by it.
        """
        proxy = ProxyHarness(self, idle_timeout=60, request_timeout=0, stream_idle_timeout=0)
        channel, client = proxy.client()
        proxy.reactor.advance(30)
        channel.dataReceived(GET)
        upstream = proxy.accept_upstream()
        proxy.reactor.advance(100)
        self.assertTrue(client.connected)
        upstream.protocol.dataReceived(OK)
        proxy.reactor.advance(59)
        self.assertTrue(client.connected)
        proxy.reactor.advance(1)
        self.assertFalse(client.connected)

    def test_disabled(self):
        """
        An idle timeout of 0 never closes.
        """
        proxy = ProxyHarness(self, idle_timeout=0)
        channel, client = proxy.client()
        proxy.reactor.advance(10**6)
        self.assertTrue(client.connected)
        proxy = ProxyHarness(
            self, idle_timeout=0, request_headers_timeout=0, stream_idle_timeout=0, request_timeout=0
        )
        channel, client = proxy.client()
        self.assertEqual(proxy.reactor.getDelayedCalls(), [])


class RequestHeadersTimeoutTests(unittest.TestCase):
    def setUp(self):
        self.log = capture_log(self)

    def test_slowloris(self):
        """
        A head that trickles in is answered 408 once the headers timeout
        passed since its first byte, however steadily bytes come.
        """
        proxy = ProxyHarness(self, request_headers_timeout=10)
        channel, client = proxy.client()
        for i in range(9):
            channel.dataReceived(b"X-Slow-%d: 1\r\n" % i if i else b"GET / HTTP/1.1\r\n")
            proxy.reactor.advance(1)
        self.assertTrue(client.connected)
        proxy.reactor.advance(1)
        status, _, body, _ = parse_response(client.value())
        self.assertEqual((status, body), (408, b"request headers timeout"))
        self.assertFalse(client.connected)
        self.assertEqual(proxy.reactor.tcpClients, [])

    def test_complete_head_in_time(self):
        """
        A head completed in time is proxied and the timer is gone.
        """
        proxy = ProxyHarness(self, request_headers_timeout=10)
        channel, client = proxy.client()
        channel.dataReceived(GET[:10])
        proxy.reactor.advance(9)
        channel.dataReceived(GET[10:])
        proxy.reactor.advance(5)
        self.assertEqual(len(proxy.reactor.tcpClients), 1)
        self.assertEqual(client.value(), b"")

    def test_timer_per_request(self):
        """
        The next request's head gets its own full time.
        """
        proxy = ProxyHarness(self, request_headers_timeout=10)
        channel, client = proxy.client()
        channel.dataReceived(GET)
        upstream = proxy.accept_upstream()
        upstream.protocol.dataReceived(OK)
        proxy.reactor.advance(30)
        channel.dataReceived(GET[:5])
        proxy.reactor.advance(9.5)
        self.assertEqual(client.value().count(b"HTTP/1.1"), 1)
        proxy.reactor.advance(0.5)
        self.assertEqual(parse_response(parse_response(client.value())[3])[0], 408)


class StreamIdleTimeoutTests(unittest.TestCase):
    def setUp(self):
        self.log = capture_log(self)

    def test_before_response(self):
        """
        An upload that stalls gets 408 stream timeout after the stream idle
        timeout, and the upstream connection is dropped.
        """
        proxy = ProxyHarness(self, stream_idle_timeout=300)
        channel, client = proxy.client()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n12345")
        upstream = proxy.accept_upstream()
        proxy.reactor.advance(200)
        channel.dataReceived(b"678")
        proxy.reactor.advance(299)
        self.assertEqual(client.value(), b"")
        proxy.reactor.advance(1)
        status, _, body, _ = parse_response(client.value())
        self.assertEqual((status, body), (408, b"stream timeout"))
        self.assertTrue(upstream.disconnected)

    def test_after_response_began(self):
        """
        A response that stalls after its head is cut: the client connection
        closes, since a status can no longer be sent.
        """
        proxy = ProxyHarness(self, stream_idle_timeout=300, request_timeout=0)
        channel, client = proxy.client()
        channel.dataReceived(GET)
        upstream = proxy.accept_upstream()
        upstream.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
        proxy.reactor.advance(300)
        self.assertFalse(client.connected)
        self.assertTrue(upstream.disconnected)

    def test_no_timer_per_request(self):
        """
        Requests schedule no timers of their own: a connection has one timer
        for all its timeouts, and a pool one for its idle connections,
        however many requests pass.
        """
        proxy = ProxyHarness(self)
        channel, client = proxy.client()
        channel.dataReceived(GET)
        upstream = proxy.accept_upstream()
        upstream.protocol.dataReceived(OK)
        timers = [c.func.__name__ for c in proxy.reactor.getDelayedCalls() if c.active()]
        self.assertEqual(sorted(timers), ["_on_timer", "_reap"])
        scheduled = []
        proxy.reactor.callLater = lambda *a, **kw: scheduled.append(a)
        for _ in range(50):
            channel.dataReceived(GET)
            upstream.protocol.dataReceived(OK)
        self.assertEqual(scheduled, [])
        self.assertEqual(client.value().count(b"HTTP/1.1 200 OK"), 51)

    def test_timer_period(self):
        """
        The connection's timer fires at least once per shortest timeout, and
        a deadline set later is never missed.
        """
        proxy = ProxyHarness(self, request_timeout=3, stream_idle_timeout=300, idle_timeout=60)
        channel, client = proxy.client()
        proxy.reactor.advance(2.5)
        channel.dataReceived(GET)
        proxy.accept_upstream()
        proxy.reactor.advance(2.9)
        self.assertEqual(client.value(), b"")
        proxy.reactor.advance(0.1)
        self.assertEqual(parse_response(client.value())[0], 504)
