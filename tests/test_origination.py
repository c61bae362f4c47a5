"""
Tests for TLS origination (L{origdst.origination}): its options, the name a
request is verified for, and requests through the in-memory proxy to an
in-memory TLS server (L{twisted.test.iosim}), with good and bad
certificates.
"""

import os

from twisted.internet import ssl
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted
from twisted.internet.protocol import Factory, Protocol
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, connect
from twisted.trial import unittest

from origdst import clusterstatus, config, replies, stats
from origdst.addresses import server_name
from origdst.origination import Origination, tls_factory
from origdst.tap import Options
from origdst.upstream import UpstreamFactory
from tests.helpers import RESET, Authority, ProxyHarness, capture_log, parse_response

NAME = "a.example"
DEST = ("10.250.0.3", 443)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def client_transport(protocol):
    return FakeTransport(
        protocol, False, IPv4Address("TCP", "10.250.0.2", 61000), IPv4Address("TCP", *DEST)
    )


def get(host, path=b"/", method=b"GET"):
    return method + b" " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"


class OptionTests(unittest.TestCase):
    """
    C{--originate-tls} and C{--ca-file}.
    """

    def parse(self, *argv):
        options = Options()
        options.parseOptions(list(argv))
        return options.settings

    def test_defaults(self):
        """
        Off by default; the system's trust store.
        """
        settings = config.Settings()
        self.assertEqual((settings.originate_tls, settings.ca_file), ("", ""))

    def test_ports_and_file(self):
        """
        Ports as --tcp-ports takes them; a PEM file of CAs.
        """
        path = Authority().write(self.mktemp())
        settings = self.parse("--originate-tls", "443, 8443-8444", "--ca-file", path)
        self.assertEqual((settings.originate_tls, settings.ca_file), ("443,8443-8444", path))

    def test_bad_port(self):
        """
        A bad port is a usage error naming the option and the value.
        """
        e = self.assertRaises(usage.UsageError, self.parse, "--originate-tls", "443,http")
        self.assertIn("--originate-tls", str(e))
        self.assertIn("'http'", str(e))

    def test_missing_ca_file(self):
        """
        A CA file that cannot be read is a usage error naming the option and
        the path.
        """
        e = self.assertRaises(usage.UsageError, self.parse, "--ca-file", "/nonexistent/ca.pem")
        self.assertIn("--ca-file", str(e))
        self.assertIn("'/nonexistent/ca.pem'", str(e))

    def test_ca_file_without_certificate(self):
        """
        So is a file that holds no certificate, or a broken one.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"not a certificate\n")
        e = self.assertRaises(usage.UsageError, self.parse, "--ca-file", path)
        self.assertIn("--ca-file: %r holds no PEM certificate" % path, str(e))
        with open(path, "wb") as f:
            f.write(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        e = self.assertRaises(usage.UsageError, self.parse, "--ca-file", path)
        self.assertIn("certificate 1 is not valid", str(e))

    def test_config_file(self):
        """
        Both are config-file keys too.
        """
        ca = Authority().write(self.mktemp())
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[origdst]\noriginate-tls = 443\nca-file = %s\n" % ca)
        settings = self.parse("--config", path)
        self.assertEqual((settings.originate_tls, settings.ca_file), ("443", ca))


class ServerNameTests(unittest.TestCase):
    """
    L{server_name}: what a request's certificate is verified for.
    """

    def test_names(self):
        """
        The Host without its port, lowercased, without a final dot; an
        address in plain form; the destination's address without a Host;
        nothing for what is not a DNS name.
        """
        cases = [
            (b"A.Example:8443", "a.example"),
            (b"a.example.", "a.example"),
            (b"10.0.0.5:443", "10.0.0.5"),
            (b"[FD00::5]:443", "fd00::5"),
            (b"[::ffff:10.0.0.5]", "10.0.0.5"),
            (None, "10.250.0.3"),
            (b"a_b.example", None),
            (b"a%41.example", None),
            (b"", None),
            (b"a" * 64 + b".example", None),
        ]
        for host, name in cases:
            self.assertEqual(server_name(host, "10.250.0.3"), name, host)


class Backend(Protocol):
    """
    The TLS server's side: answers each request head with C{OK}.
    """

    def connectionMade(self):
        self.factory.connections.append(self)
        self.received = b""
        self.unread = b""

    def dataReceived(self, data):
        self.received += data
        self.unread += data
        while b"\r\n\r\n" in self.unread:
            head, _, rest = self.unread.partition(b"\r\n\r\n")
            length = 0
            for line in head.lower().split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if len(rest) < length:
                return
            self.unread = rest[length:]
            self.transport.write(OK)


class OriginationTests(unittest.TestCase):
    """
    Requests redirected from port 443 with C{--originate-tls 443}, through
    the in-memory proxy to an in-memory TLS server.
    """

    def setUp(self):
        self.authority = Authority()
        self.ca_file = self.authority.write(self.mktemp())
        self.proxy = ProxyHarness(self, originate_tls="443", ca_file=self.ca_file, connect_timeout=5.0)
        self.stats = self.proxy.cluster.stats
        self.messages = capture_log(self)
        self.server_names = []
        self.pumps = []

    def server(self, cert, key):
        """
        @return: a TLS server protocol presenting C{cert}, which records the
            SNI it was sent.
        """
        options = ssl.PrivateCertificate.loadPEM(cert + key).options()
        options.getContext().set_tlsext_servername_callback(
            lambda conn: self.server_names.append(conn.get_servername())
        )
        backend = Factory.forProtocol(Backend)
        backend.connections = []
        self.backend = backend
        return tls_factory(options, False, backend, self.proxy.reactor).buildProtocol(None)

    def dial(self, cert_and_key=None):
        """
        Connect the proxy's newest upstream attempt to a TLS server with
        C{cert_and_key} (a certificate for L{NAME} by default); @return: the
        pump.
        """
        cert, key = cert_and_key or self.authority.issue([NAME])
        host, port, factory, timeout, bind = self.proxy.reactor.tcpClients[-1]
        self.assertEqual((host, port), DEST)
        client = factory.buildProtocol(None)
        server = self.server(cert, key)
        pump = connect(server, FakeTransport(server, True), client, client_transport(client), clock=self.proxy.reactor)
        pump.flush()
        self.pumps.append(pump)
        return pump

    def request(self, data, channel=None):
        if channel is None:
            channel, transport = self.proxy.client(destination=DEST)
            self.transport = transport
        self.transport.clear()
        channel.dataReceived(data)
        return channel

    def test_good_certificate(self):
        """
        A certificate for the Host, from the trusted CA: the request goes
        over TLS with the name as SNI, still says it came as http, and the
        connection is kept for the next request.
        """
        channel = self.request(get(b"A.example:443"))
        self.assertEqual(len(self.proxy.reactor.tcpClients), 1)
        pump = self.dial()
        status, headers, body, _ = parse_response(self.transport.value())
        self.assertEqual((status, body), (200, b"ok"))
        self.assertEqual(self.server_names, [NAME.encode("ascii")])
        upstream = self.backend.connections[0].received
        self.assertIn(b"x-forwarded-proto: http\r\n", upstream.lower())
        self.assertTrue(upstream.startswith(b"GET / HTTP/1.1\r\n"), upstream)
        self.request(get(b"a.example", b"/again"), channel)
        pump.flush()
        status, _, body, _ = parse_response(self.transport.value())
        self.assertEqual((status, body), (200, b"ok"))
        self.assertEqual(len(self.proxy.reactor.tcpClients), 1)
        self.assertEqual(len(self.backend.connections), 1)
        self.assertIn(b"GET /again HTTP/1.1\r\n", self.backend.connections[0].received)
        self.assertEqual((self.stats.ssl_handshake, self.stats.ssl_connection_error), (1, 0))
        host = self.proxy.cluster.hosts[DEST + (NAME,)]
        self.assertEqual((host.key, host.tls_name), ("10.250.0.3:443", NAME))

    def test_streamed_bodies(self):
        """
        Request bodies that stream after the connection is made, twice on
        one kept-alive TLS connection: the client's flow control is attached
        to the TLS transport and detached again each time.
        """
        head = b"POST /up HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\n\r\n"
        channel = self.request(head)
        pump = self.dial()
        upstream = self.proxy.cluster.hosts[DEST + (NAME,)].pool.connections
        (conn,) = upstream
        self.assertIs(conn.transport.producer, channel.pauser)
        channel.dataReceived(b"abc")
        pump.flush()
        self.assertIsNone(conn.transport.producer)
        self.assertEqual(parse_response(self.transport.value())[0], 200)
        self.request(head, channel)
        pump.flush()
        self.assertIs(conn.transport.producer, channel.pauser)
        channel.dataReceived(b"def")
        pump.flush()
        self.assertEqual(parse_response(self.transport.value())[0], 200)
        self.assertTrue(self.backend.connections[0].received.endswith(b"\r\n\r\ndef"))
        self.assertEqual(len(self.backend.connections), 1)

    def test_figures(self):
        """
        The handshakes and their failures count by Envoy's names for an
        upstream TLS context; /clusters names a TLS host's verified name.
        """
        self.request(get(b"a.example"))
        self.dial()
        self.request(get(b"b.example"))
        self.dial()
        figures = stats.collect(self.stats, 0, "original_dst", {})
        values = {stat.name: stat.value for stat in figures}
        self.assertEqual(
            [(n, values["cluster.original_dst.ssl." + n]) for n in
             ("handshake", "connection_error", "fail_verify_san", "fail_verify_error")],
            [("handshake", 1), ("connection_error", 1), ("fail_verify_san", 1), ("fail_verify_error", 0)],
        )
        self.assertIn(
            'envoy_cluster_ssl_handshake{envoy_cluster_name="original_dst"} 1\n',
            stats.as_prometheus(figures),
        )
        text = clusterstatus.as_text(self.proxy.settings, clusterstatus.hosts(self.proxy.cluster))
        self.assertIn("original_dst::10.250.0.3:443::hostname::a.example\n", text)
        self.assertIn("original_dst::10.250.0.3:443::hostname::b.example\n", text)

    def test_pool_per_name(self):
        """
        Two Hosts on one ip:port: a connection each, never one verified for
        the other.
        """
        self.request(get(b"a.example"))
        self.dial()
        self.request(get(b"b.example"))
        self.assertEqual(len(self.proxy.reactor.tcpClients), 2)
        self.dial(self.authority.issue(["b.example"]))
        self.assertEqual(parse_response(self.transport.value())[0], 200)
        self.assertEqual(sorted(self.proxy.cluster.hosts), [DEST + ("a.example",), DEST + ("b.example",)])

    def test_plain_port(self):
        """
        A port not listed keeps plain HTTP upstream.
        """
        self.request(get(b"a.example:8443"))
        channel, transport = self.proxy.client(destination=("10.250.0.3", 8443))
        channel.dataReceived(get(b"a.example:8443"))
        factory = self.proxy.reactor.tcpClients[-1][2]
        self.assertIsInstance(factory, UpstreamFactory)
        self.assertIn(("10.250.0.3", 8443), self.proxy.cluster.hosts)

    def assertRefused(self, fragment, detail="certificate_verify_failed"):
        """
        The client got a 503 UF whose body says C{fragment}; the server got
        no byte of the request; one log line says why; nothing was tried
        again.
        """
        status, headers, body, _ = parse_response(self.transport.value())
        self.assertEqual(status, 503)
        self.assertTrue(body.startswith(RESET + b"connection failure, transport failure reason: TLS error: "), body)
        self.assertIn(fragment, body)
        self.assertEqual(headers[b"connection"], [b"close"])
        for conn in self.backend.connections:
            self.assertEqual(conn.received, b"")
        self.assertEqual(len(self.proxy.reactor.tcpClients), 1)
        lines = [m for m in self.messages if fragment.decode("ascii") in m]
        self.assertEqual(len(lines), 1, self.messages)
        self.assertEqual(self.stats.upstream_cx_connect_fail, 1)
        self.assertEqual(self.stats.ssl_handshake, 0)
        self.assertEqual(self.stats.upstream_rq_xx[5], 1)
        return body

    def test_name_mismatch(self):
        """
        A certificate for another name: 503 naming both.
        """
        self.request(get(b"b.example"))
        self.dial()
        self.assertRefused(b'certificate verify failed: name mismatch: wanted "b.example", certificate is for "a.example"')
        self.assertEqual((self.stats.ssl_connection_error, self.stats.ssl_fail_verify_san), (1, 1))

    def test_explaining_fails(self):
        """
        Should explaining a failure fail, the request still gets its 503,
        saying the kind of failure, and the error is logged.
        """
        from origdst import origination

        def broken(*args):
            raise ValueError("a certificate nobody can read")

        self.patch(origination, "explain", broken)
        self.request(get(b"b.example"))
        self.dial()
        status, _, body, _ = parse_response(self.transport.value())
        self.assertEqual((status, body), (503, replies.TLS_VERIFY_FAILED.body))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(self.proxy.cluster.hosts[DEST + ("b.example",)].pool.connecting, 0)

    def test_untrusted(self):
        """
        A certificate from a CA not in --ca-file: 503 with the chain error
        and who issued it.
        """
        self.request(get(b"a.example", b"/upload", b"POST").replace(b"\r\n\r\n", b"\r\nContent-Length: 3\r\n\r\nabc"))
        self.dial(Authority("Elsewhere CA").issue([NAME]))
        self.assertRefused(
            b'certificate verify failed: unable to get local issuer certificate '
            b'(certificate for "a.example", issued by "CN=Elsewhere CA")'
        )
        self.assertEqual((self.stats.ssl_connection_error, self.stats.ssl_fail_verify_error), (1, 1))

    def test_expired(self):
        """
        An expired certificate: 503 saying so.
        """
        self.request(get(b"a.example"))
        self.dial(self.authority.issue([NAME], expired=True))
        self.assertRefused(b"certificate verify failed: certificate has expired")

    def test_not_tls(self):
        """
        A server that answers in plain HTTP: the handshake failed.
        """
        self.request(get(b"a.example"))
        host, port, factory, timeout, bind = self.proxy.reactor.tcpClients[-1]
        client = factory.buildProtocol(None)
        backend = Factory.forProtocol(Backend)
        backend.connections = []
        self.backend = backend
        server = backend.buildProtocol(None)
        pump = connect(server, FakeTransport(server, True), client, client_transport(client), clock=self.proxy.reactor)
        server.transport.write(OK)
        pump.flush()
        body = parse_response(self.transport.value())[2]
        self.assertIn(b"TLS error: handshake failed: ", body)
        self.assertEqual(self.stats.ssl_connection_error, 1)

    def test_handshake_timeout(self):
        """
        A server that never finishes the handshake: a connect timeout.
        """
        self.request(get(b"a.example"))
        host, port, factory, timeout, bind = self.proxy.reactor.tcpClients[-1]
        client = factory.buildProtocol(None)
        transport = client_transport(client)
        client.makeConnection(transport)
        # The ClientHello went out, with the name as SNI.
        self.assertIn(b"a.example", b"".join(transport.stream))
        self.assertEqual(len(self.proxy.cluster.own_addresses), 1)
        self.proxy.reactor.advance(4.9)
        self.assertFalse(transport.disconnecting)
        self.proxy.reactor.advance(0.1)
        self.assertTrue(transport.disconnecting)
        client.connectionLost(Failure(ConnectionAborted()))
        status, _, body, _ = parse_response(self.transport.value())
        self.assertEqual((status, body), (503, replies.CONNECT_TIMEOUT.body))
        self.assertEqual(self.stats.upstream_cx_connect_timeout, 1)
        self.assertEqual(self.proxy.cluster.own_addresses, set())

    def test_ip_host(self):
        """
        An IP-literal Host is verified as an address, and sent no SNI.
        """
        self.request(get(b"10.250.0.3:443"))
        self.dial(self.authority.issue(ips=["10.250.0.3"]))
        self.assertEqual(parse_response(self.transport.value())[0], 200)
        self.assertEqual(self.server_names, [None])

    def test_ip_host_mismatch(self):
        """
        ... and refused when the certificate does not name that address.
        """
        self.request(get(b"10.250.0.3"))
        self.dial()
        self.assertRefused(b'name mismatch: wanted "10.250.0.3", certificate is for "a.example"')

    def test_unverifiable_name(self):
        """
        A Host that is not a DNS name: 503, nothing connected.
        """
        self.request(get(b"a_b.example"))
        self.assertEqual(self.proxy.reactor.tcpClients, [])
        status, _, body, _ = parse_response(self.transport.value())
        self.assertEqual(status, 503)
        self.assertIn(b'TLS error: unverifiable name: Host "a_b.example" is neither a DNS name nor an IP address', body)
        self.assertEqual(len([m for m in self.messages if "a_b.example" in m]), 1)


class TrustTests(unittest.TestCase):
    """
    Where the trusted CAs come from.
    """

    def test_system_store(self):
        """
        Without --ca-file: Twisted's platformTrust.
        """
        origination = Origination(config.Settings(originate_tls="443"), None)
        self.assertIsInstance(origination.trust(), type(ssl.platformTrust()))
        self.assertEqual(origination.ports, frozenset([443]))

    def test_ca_file_bundle(self):
        """
        A bundle: every certificate in it is trusted.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(Authority("one").pem + b"\n" + Authority("two").pem)
        origination = Origination(config.Settings(ca_file=path), None)
        self.assertEqual(len(origination.trust()._caCerts), 2)
        self.assertTrue(os.path.exists(path))
