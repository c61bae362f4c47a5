"""
Tests for upgrades (WebSocket) and CONNECT: once the server agrees, the two
connections become one byte tunnel with flow control and half-close.
"""

import re

from twisted.trial import unittest

from tests.helpers import GET, OK, SWITCH, UPGRADE, ProxyHarness, parse_response


class UpgradeTests(unittest.TestCase):
    def setUp(self):
        self.proxy = ProxyHarness(self, request_timeout=5, stream_idle_timeout=10, idle_timeout=20)
        self.channel, self.client = self.proxy.client()

    def open_tunnel(self, early_client=b"", early_server=b""):
        self.channel.dataReceived(UPGRADE + early_client)
        self.upstream = self.proxy.accept_upstream()
        self.upstream.protocol.dataReceived(SWITCH + early_server)

    def test_upgrade_forwarded(self):
        """
        The upgrade request keeps Upgrade and Connection: upgrade upstream.
        """
        self.channel.dataReceived(UPGRADE)
        upstream = self.proxy.accept_upstream()
        head = upstream.value()
        self.assertIn(b"connection: upgrade\r\nupgrade: websocket\r\n", head)
        self.assertIn(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", head)

    def test_switch_and_relay(self):
        """
        The 101 reaches the client with its upgrade headers; then bytes pass
        both ways unchanged, including bytes sent right after the heads.
        """
        self.open_tunnel(early_client=b"\x81\x85early", early_server=b"\x81\x02hi")
        answer = self.client.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"))
        self.assertIn(b"connection: upgrade\r\nupgrade: websocket\r\n", answer)
        self.assertIn(b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n", answer)
        self.assertTrue(answer.endswith(b"\r\n\r\n\x81\x02hi"))
        self.assertTrue(self.upstream.value().endswith(b"\x81\x85early"))
        self.client.clear()
        self.upstream.clear()
        self.channel.dataReceived(b"GET / HTTP/1.1\r\n\r\n not parsed")
        self.upstream.protocol.dataReceived(b"HTTP/1.1 200 also not parsed")
        self.assertEqual(self.upstream.value(), b"GET / HTTP/1.1\r\n\r\n not parsed")
        self.assertEqual(self.client.value(), b"HTTP/1.1 200 also not parsed")

    def test_early_bytes_counted(self):
        """
        Bytes sent right after the upgrade request, in the same read, count as
        sent upstream.
        """
        self.open_tunnel(early_client=b"\x81\x85early")
        pool = self.proxy.cluster.host("10.250.0.3", 80).pool
        sent = len(self.upstream.value())
        self.assertEqual((pool.tx_bytes, self.proxy.cluster.stats.upstream_cx_tx_bytes_total), (sent, sent))

    def test_no_timeouts_in_tunnel(self):
        """
        Neither route, stream idle nor idle timeouts cut a quiet tunnel.
        """
        self.open_tunnel()
        self.proxy.reactor.advance(1000)
        self.assertTrue(self.client.connected)
        self.assertTrue(self.upstream.connected)

    def test_flow_control(self):
        """
        Each side of the tunnel pauses the other when its buffer is full.
        """
        self.open_tunnel()
        self.client.producer.pauseProducing()
        self.assertEqual(self.upstream.producerState, "paused")
        self.client.producer.resumeProducing()
        self.upstream.producer.pauseProducing()
        self.assertEqual(self.client.producerState, "paused")

    def test_half_close_both_ways(self):
        """
        A client's half-close reaches the server and the server can still
        answer; its half-close then ends the tunnel.
        """
        self.open_tunnel()
        closed = []
        self.upstream.loseWriteConnection = lambda: closed.append("upstream")
        self.client.loseWriteConnection = lambda: closed.append("client")
        self.channel.readConnectionLost()
        self.assertEqual(closed, ["upstream"])
        self.upstream.protocol.dataReceived(b"last words")
        self.assertTrue(self.client.value().endswith(b"last words"))
        self.upstream.protocol.readConnectionLost()
        self.assertEqual(closed, ["upstream", "client"])

    def test_close_ends_both(self):
        """
        When one side closes, the other is closed too, and the upstream
        connection is never pooled.
        """
        self.open_tunnel()
        self.upstream.loseConnection()
        self.assertFalse(self.client.connected)
        self.assertEqual(self.proxy.cluster.host("10.250.0.3", 80).pool.idle, [])

    def test_refused_upgrade(self):
        """
        A server that answers the upgrade with a normal response is proxied
        as usual.
        """
        self.channel.dataReceived(UPGRADE)
        upstream = self.proxy.accept_upstream()
        upstream.protocol.dataReceived(OK)
        self.assertEqual(parse_response(self.client.value())[:3:2], (200, b"hello"))

    def test_unrequested_switch(self):
        """
        A 101 to a request that asked for no upgrade is a protocol error.
        """
        self.channel.dataReceived(GET)
        upstream = self.proxy.accept_upstream()
        upstream.protocol.dataReceived(SWITCH)
        self.assertEqual(parse_response(self.client.value())[0], 502)
        self.assertTrue(upstream.disconnected)


class ConnectTests(unittest.TestCase):
    def test_connect_tunnel(self):
        """
        CONNECT goes to the original destination as sent; a 2xx answer opens
        a tunnel, bytes after it included.
        """
        proxy = ProxyHarness(self)
        channel, client = proxy.client()
        channel.dataReceived(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01")
        upstream = proxy.accept_upstream()
        self.assertTrue(upstream.value().startswith(b"CONNECT example.com:443 HTTP/1.1\r\n"))
        upstream.protocol.dataReceived(b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x03")
        self.assertTrue(upstream.value().endswith(b"\r\n\r\n\x16\x03\x01"))
        answer = client.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 Connection established\r\n"))
        self.assertTrue(answer.endswith(b"\r\n\r\n\x16\x03\x03"))

    def test_connect_head(self):
        """
        A CONNECT goes upstream as C{CONNECT authority HTTP/1.1} with its Host
        and the proxy's headers, and nothing that asks for an upgrade.
        """
        proxy = ProxyHarness(self, request_timeout=15)
        channel, client = proxy.client()
        channel.dataReceived(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        head = proxy.accept_upstream().value()
        self.assertEqual(
            re.sub(rb"x-request-id: [^\r]*", b"x-request-id: ID", head),
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"
            b"x-forwarded-proto: http\r\nx-request-id: ID\r\n"
            b"x-envoy-expected-rq-timeout-ms: 15000\r\n\r\n",
        )

    def test_early_bytes_counted(self):
        """
        Bytes a client sends in the same read as its CONNECT head are counted
        as sent upstream, like every later tunnel byte.
        """
        proxy = ProxyHarness(self)
        channel, client = proxy.client()
        channel.dataReceived(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01")
        upstream = proxy.accept_upstream()
        upstream.protocol.dataReceived(b"HTTP/1.1 200 Connection established\r\n\r\n")
        channel.dataReceived(b"late")
        pool = proxy.cluster.host("10.250.0.3", 80).pool
        self.assertTrue(upstream.value().endswith(b"\x16\x03\x01late"))
        self.assertEqual(
            (pool.tx_bytes, proxy.cluster.stats.upstream_cx_tx_bytes_total),
            (len(upstream.value()), len(upstream.value())),
        )

    def test_connect_refused(self):
        """
        A CONNECT the server refuses gets the server's answer.
        """
        proxy = ProxyHarness(self)
        channel, client = proxy.client()
        channel.dataReceived(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        upstream = proxy.accept_upstream()
        upstream.protocol.dataReceived(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(parse_response(client.value())[0], 405)
