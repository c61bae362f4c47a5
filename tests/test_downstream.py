"""
Tests for the states of L{origdst.downstream.ProxyChannel}.
"""

from twisted.trial import unittest

from origdst import downstream as states

from tests.helpers import GET, OK, SWITCH, UPGRADE, ProxyHarness, capture_log

POST = b"POST /p HTTP/1.1\r\nHost: 10.250.0.3\r\nContent-Length: 4\r\n\r\n"


class StateTests(unittest.TestCase):
    def setUp(self):
        self.proxy = ProxyHarness(self, request_timeout=15)
        self.log = capture_log(self)
        self.channel, self.client = self.proxy.client()

    def test_request_cycle(self):
        """
        IDLE, HEAD while a head arrives, BODY while its body does, AWAITING
        for the response, IDLE again after it.
        """
        channel = self.channel
        seen = [channel.state]
        channel.dataReceived(POST[:10])
        seen.append(channel.state)
        channel.dataReceived(POST[10:])
        seen.append(channel.state)
        upstream = self.proxy.accept_upstream()
        channel.dataReceived(b"body")
        seen.append(channel.state)
        upstream.protocol.dataReceived(OK)
        seen.append(channel.state)
        self.assertEqual(
            seen, [states.IDLE, states.HEAD, states.BODY, states.AWAITING, states.IDLE]
        )

    def test_pipelined_head(self):
        """
        Part of a pipelined head buffered behind a request makes the
        connection HEAD as soon as the response is complete.
        """
        self.channel.dataReceived(GET + GET[:5])
        upstream = self.proxy.accept_upstream()
        self.assertEqual(self.channel.state, states.AWAITING)
        upstream.protocol.dataReceived(OK)
        self.assertEqual(self.channel.state, states.HEAD)

    def test_tunnel(self):
        """
        An accepted upgrade makes the connection TUNNEL.
        """
        self.channel.dataReceived(UPGRADE)
        self.proxy.accept_upstream().protocol.dataReceived(SWITCH)
        self.assertEqual((self.channel.state, self.channel.exchange), (states.TUNNEL, None))

    def test_half_close_awaiting(self):
        """
        A client that half-closes while AWAITING still gets its response,
        then the connection is CLOSED.
        """
        self.channel.dataReceived(GET)
        upstream = self.proxy.accept_upstream()
        self.channel.readConnectionLost()
        self.assertEqual(self.channel.state, states.AWAITING)
        upstream.protocol.dataReceived(OK)
        self.assertEqual(self.channel.state, states.CLOSED)
        self.assertTrue(self.client.value().endswith(b"hello"))

    def test_closed_ignores_bytes(self):
        """
        Once CLOSED (here after a malformed head), further bytes are ignored.
        """
        self.channel.dataReceived(b"BAD\r\n\r\n")
        self.assertEqual(self.channel.state, states.CLOSED)
        answered = self.client.value()
        self.channel.dataReceived(GET)
        self.assertEqual((self.client.value(), self.proxy.reactor.tcpClients), (answered, []))
