"""
Tests for L{origdst.tcp}: the TCP relay, on string transports and a memory
reactor.
"""

import io

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError, TimeoutError
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.python.failure import Failure
from twisted.trial import unittest

from origdst.accesslog import AccessLog
from origdst.tls import ClientHello
from tests.helpers import ENVOY_LINE, capture_log
from tests.test_detect import DEST, Proxy


class RelayHarness(Proxy):
    """
    A relay made by the listener factory, and its upstream.
    """

    def __init__(self, test, **settings):
        Proxy.__init__(self, **settings)
        self.out = io.StringIO()
        self.factory.access_log = AccessLog("-", settings.get("access_log_format", "envoy"), out=self.out)

    def relay(self, hello=None, peer=("10.250.0.2", 40000)):
        transport = StringTransportWithDisconnection(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 4999), peerAddress=IPv4Address("TCP", *peer)
        )
        relay = self.factory.relay("[C1]", peer, DEST, hello)
        transport.protocol = relay
        relay.makeConnection(transport)
        return relay, transport

    def accept(self):
        host, port, factory, timeout, bind = self.reactor.tcpClients[-1]
        upstream = factory.buildProtocol(None)
        transport = StringTransportWithDisconnection(
            hostAddress=IPv4Address("TCP", "10.250.0.2", 50000), peerAddress=IPv4Address("TCP", host, port)
        )
        # What the upstream had received when its write side was shut.
        transport.shut = []
        transport.loseWriteConnection = lambda: transport.shut.append(transport.value())
        transport.protocol = upstream
        upstream.makeConnection(transport)
        return transport

    def fail(self, reason):
        self.reactor.tcpClients[-1][2].clientConnectionFailed(None, Failure(reason))


class RelayTests(unittest.TestCase):

    def test_bytes_both_ways(self):
        """
        Bytes pass unchanged both ways; the client waits, paused, until the
        upstream connection is made, and what it sent before arrives first.
        """
        proxy = RelayHarness(self)
        relay, client = proxy.relay()
        self.assertEqual(proxy.reactor.tcpClients[0][:2], DEST)
        self.assertEqual(proxy.reactor.tcpClients[0][3], proxy.settings.connect_timeout)
        self.assertEqual(client.producerState, "paused")
        relay.dataReceived(b"\x00early")
        upstream = proxy.accept()
        self.assertEqual(client.producerState, "producing")
        self.assertEqual(upstream.value(), b"\x00early")
        relay.dataReceived(b"\xffmore")
        upstream.protocol.dataReceived(b"answer\r\n")
        self.assertEqual(upstream.value(), b"\x00early\xffmore")
        self.assertEqual(client.value(), b"answer\r\n")
        stats = proxy.cluster.stats
        self.assertEqual((stats.tcp_cx_total, stats.tcp_cx_active), (1, 1))
        self.assertEqual(stats.upstream_cx_tx_bytes_total, 11)
        self.assertIn((("10.250.0.2", 50000), DEST), proxy.cluster.own_addresses)
        upstream.loseConnection()
        self.assertFalse(client.connected)
        self.assertEqual((stats.tcp_rx_bytes, stats.tcp_tx_bytes, stats.tcp_cx_active), (11, 8, 0))
        self.assertNotIn((("10.250.0.2", 50000), DEST), proxy.cluster.own_addresses)

    def test_stats_names(self):
        """
        The relay's counters show under Envoy's tcp_proxy names, bytes as
        they pass; the ClientHello counts under tls_inspector.
        """
        from origdst import stats as statsmodule

        proxy = RelayHarness(self)
        relay, client = proxy.relay()
        upstream = proxy.accept()
        relay.dataReceived(b"1234")
        upstream.protocol.dataReceived(b"12")
        proxy.cluster.stats.sni_found += 1
        text = statsmodule.as_text(statsmodule.collect(proxy.cluster.stats, 0, "original_dst", {}, "0.0.0.0_4999"))
        for line in (
            "tcp.origdst.downstream_cx_total: 1",
            "tcp.origdst.downstream_cx_active: 1",
            "tcp.origdst.downstream_cx_rx_bytes_total: 4",
            "tcp.origdst.downstream_cx_tx_bytes_total: 2",
            "tcp.origdst.idle_timeout: 0",
            "tcp.origdst.downstream_cx_denied: 0",
            "tls_inspector.sni_found: 1",
            "listener.0.0.0.0_4999.downstream_cx_total: 1",
            "cluster.original_dst.upstream_cx_total: 1",
        ):
            self.assertIn(line + "\n", text)
        prometheus = statsmodule.as_prometheus(statsmodule.collect(proxy.cluster.stats, 0, "original_dst", {}))
        self.assertIn('envoy_tcp_downstream_cx_total{envoy_tcp_prefix="origdst"} 1', prometheus)

    def test_flow_control(self):
        """
        Each side is the other's producer: a full upstream buffer pauses the
        client, a full client buffer pauses the upstream.
        """
        proxy = RelayHarness(self)
        relay, client = proxy.relay()
        upstream = proxy.accept()
        upstream.producer.pauseProducing()
        self.assertEqual(client.producerState, "paused")
        upstream.producer.resumeProducing()
        self.assertEqual(client.producerState, "producing")
        client.producer.pauseProducing()
        self.assertEqual(upstream.producerState, "paused")
        client.producer.resumeProducing()
        self.assertEqual(upstream.producerState, "producing")

    def test_half_close(self):
        """
        The client's half-close reaches the server, whose answer still comes
        back; its own half-close then ends the connection.
        """
        proxy = RelayHarness(self)
        relay, client = proxy.relay()
        upstream = proxy.accept()
        shut = []
        upstream.loseWriteConnection = lambda: shut.append("upstream")
        client.loseWriteConnection = lambda: shut.append("client")
        relay.readConnectionLost()
        self.assertEqual(shut, ["upstream"])
        upstream.protocol.dataReceived(b"last words")
        self.assertEqual(client.value(), b"last words")
        upstream.protocol.readConnectionLost()
        self.assertEqual(shut, ["upstream", "client"])
        relay.writeConnectionLost()
        self.assertFalse(client.connected)

    def test_half_close_before_connect(self):
        """
        A half-close that comes before the upstream connection is passed on
        once it is made, after the early bytes.
        """
        proxy = RelayHarness(self)
        relay, client = proxy.relay()
        relay.dataReceived(b"bye")
        relay.readConnectionLost()
        upstream = proxy.accept()
        self.assertEqual(upstream.shut, [b"bye"])

    def test_denied(self):
        """
        A destination the egress policy denies: the client is closed at once,
        nothing is connected, one log line names the rule.
        """
        messages = capture_log(self)
        proxy = RelayHarness(self, deny=("10.250.0.3:443",))
        relay, client = proxy.relay()
        self.assertFalse(client.connected)
        self.assertEqual(proxy.reactor.tcpClients, [])
        lines = [m for m in messages if "denied by --deny 10.250.0.3:443" in m]
        self.assertEqual(len(lines), 1, messages)
        self.assertEqual(proxy.cluster.stats.tcp_cx_denied, 1)
        self.assertEqual(proxy.cluster.hosts, {})

    def test_loop(self):
        """
        A connection from one of the proxy's own upstream connections is a
        loop: closed, not connected.
        """
        proxy = RelayHarness(self)
        proxy.cluster.own_addresses.add((("10.250.0.2", 40000), DEST))
        relay, client = proxy.relay()
        self.assertFalse(client.connected)
        self.assertEqual(proxy.reactor.tcpClients, [])
        self.assertEqual(proxy.cluster.stats.redirect_loop, 1)

    def test_upstream_port_towards_another_destination(self):
        """
        A connection from the local address of an upstream connection to
        another destination (a port REDIRECT chose for the client) is relayed.
        """
        proxy = RelayHarness(self)
        proxy.cluster.own_addresses.add((("10.250.0.2", 40000), ("10.250.0.9", 443)))
        relay, client = proxy.relay()
        self.assertTrue(client.connected)
        self.assertEqual(proxy.reactor.tcpClients[0][:2], DEST)
        self.assertEqual(proxy.cluster.stats.redirect_loop, 0)

    def test_connect_failure(self):
        """
        A refused or timed-out connection closes the client; the access log
        says UF.
        """
        for reason, timeouts in ((ConnectionRefusedError(), 0), (TimeoutError(), 1)):
            proxy = RelayHarness(self)
            relay, client = proxy.relay()
            proxy.fail(reason)
            self.assertFalse(client.connected)
            stats = proxy.cluster.stats
            self.assertEqual((stats.upstream_cx_connect_fail, stats.upstream_cx_connect_timeout), (1, timeouts))
            self.assertEqual(ENVOY_LINE.match(proxy.out.getvalue()).group("response_flags"), "UF")

    def test_client_gone_while_connecting(self):
        """
        A client that goes away while its upstream connection is being made
        stops the attempt; a failure reported after that changes nothing.
        """
        proxy = RelayHarness(self)
        relay, client = proxy.relay()
        connector = proxy.reactor.connectors[-1]
        stopped = []
        connector.stopConnecting = lambda: stopped.append(True)
        connector.state = "connecting"
        client.loseConnection()
        self.assertEqual(stopped, [True])
        proxy.fail(ConnectionRefusedError())
        self.assertEqual(proxy.cluster.stats.upstream_cx_connect_fail, 0)
        self.assertEqual(proxy.cluster.stats.tcp_cx_active, 0)

    def test_idle_timeout(self):
        """
        A connection that passes no byte for --tcp-idle-timeout is closed;
        traffic keeps it open.
        """
        proxy = RelayHarness(self, tcp_idle_timeout=10)
        relay, client = proxy.relay()
        upstream = proxy.accept()
        proxy.reactor.advance(6)
        relay.dataReceived(b"x")
        proxy.reactor.advance(6)
        self.assertTrue(client.connected)
        proxy.reactor.advance(4)
        self.assertFalse(client.connected)
        self.assertFalse(upstream.connected)
        self.assertEqual(proxy.cluster.stats.tcp_idle_timeout, 1)

    def test_host_kept_by_sweep(self):
        """
        The destination is a host of the cluster, kept by the sweep while a
        relay is open and removed after.
        """
        proxy = RelayHarness(self)
        relay, client = proxy.relay()
        upstream = proxy.accept()
        proxy.cluster.sweep()
        proxy.cluster.sweep()
        self.assertIn(DEST, proxy.cluster.hosts)
        upstream.loseConnection()
        proxy.cluster.sweep()
        self.assertNotIn(DEST, proxy.cluster.hosts)

    def test_access_log(self):
        """
        One line per connection, as Envoy's tcp_proxy logs it: bytes each
        way, the duration, the destination, and a TLS connection's server
        name in the authority's place and ALPN in the protocol's.
        """
        proxy = RelayHarness(self)
        relay, client = proxy.relay(ClientHello("a.example.com", ("h2", "http/1.1")))
        upstream = proxy.accept()
        relay.dataReceived(b"12345")
        proxy.reactor.advance(1.5)
        upstream.protocol.dataReceived(b"123")
        client.loseConnection()
        line = ENVOY_LINE.match(proxy.out.getvalue())
        self.assertIsNotNone(line, proxy.out.getvalue())
        fields = line.groupdict()
        self.assertEqual(
            (fields["method"], fields["path"], fields["protocol"], fields["response_code"]),
            ("-", "-", "h2,http/1.1", "0"),
        )
        self.assertEqual((fields["bytes_received"], fields["bytes_sent"], fields["duration"]), ("5", "3", "1500"))
        self.assertEqual((fields["authority"], fields["upstream_host"]), ("a.example.com", "10.250.0.3:443"))

    def test_access_log_json(self):
        """
        The JSON line names the server name and ALPN protocols.
        """
        import json

        proxy = RelayHarness(self, access_log_format="json")
        relay, client = proxy.relay(ClientHello("a.example.com", ("h2",)))
        proxy.accept()
        client.loseConnection()
        line = json.loads(proxy.out.getvalue())
        self.assertEqual((line["requested_server_name"], line["alpn"]), ("a.example.com", ["h2"]))
        self.assertEqual(line["upstream_host"], "10.250.0.3:443")
