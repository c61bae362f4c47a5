"""
TLS origination end to end, in the test namespaces: an unprivileged client
speaks plain HTTP to ports 443 and 8443 of the server namespace; the
iptables REDIRECT rule sends it to origdst (C{--originate-tls 443,8443
--ca-file} a throwaway CA), which goes on over TLS to HTTPS servers made by
the test (tests/tlsbackend.py): one with a certificate from that CA, one
with a certificate from a CA the proxy does not trust.
"""

import json
import os
import sys

import testbed
from testbed.certs import Authority

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "tlsbackend.py")
PROXY_PORT = 15020
GOOD_PORT = 443
UNTRUSTED_PORT = 8443
NAME = "backend.example.test"


class OriginationTests(testbed.TopologyTestCase):
    """
    One proxy originating TLS on two ports, an HTTPS server behind each.
    """

    tag = "o"

    @classmethod
    def build(cls, topology):
        topology.add_redirect(testbed.SERVER_V4, [GOOD_PORT, UNTRUSTED_PORT], PROXY_PORT)
        directory = topology.workdir
        authority = Authority()
        ca = authority.write(os.path.join(directory, "ca.pem"))
        servers = [
            ("good", GOOD_PORT, authority.issue([NAME])),
            ("untrusted", UNTRUSTED_PORT, Authority("Elsewhere CA").issue([NAME])),
        ]
        for name, port, (cert, key) in servers:
            paths = [
                authority.write(os.path.join(directory, "%s.%s" % (name, ext)), content)
                for ext, content in (("pem", cert), ("key", key))
            ]
            topology.start_server(name, [sys.executable, SERVER, str(port)] + paths, port)
        topology.start_proxy(
            ["--port", "tcp:%d" % PROXY_PORT, "--access-log", "-",
             "--originate-tls", "%d,%d" % (GOOD_PORT, UNTRUSTED_PORT), "--ca-file", ca],
            PROXY_PORT,
        )

    def get(self, port, host, count=1):
        """
        @return: the responses to C{count} plain-HTTP GETs on one connection.
        """
        request = {"method": "GET", "path": "/", "headers": [["Host", host]]}
        result = self.topology.run_client(
            {"host": testbed.SERVER_V4, "port": port, "requests": [request] * count}
        )
        self.assertIsNone(result["error"], result)
        return result["responses"]

    def log_lines(self, fragment):
        return [line for line in self.topology.proxy_log().splitlines() if fragment in line]

    def test_good_certificate(self):
        """
        Through the REDIRECT rule, as plain HTTP: the server saw TLS with
        the Host as SNI, X-Forwarded-Proto http, and both requests on one
        upstream connection; the access log has them.
        """
        first, second = [json.loads(r["body"]) for r in self.get(GOOD_PORT, NAME, 2)]
        self.assertEqual(first["sni"], NAME)
        self.assertTrue(first["tls"].startswith("TLS"), first)
        self.assertEqual(first["x_forwarded_proto"], "http")
        self.assertEqual(first["host"], NAME)
        self.assertEqual(second["connection"], first["connection"])
        # (The connection may be one an earlier test left in the pool.)
        self.assertEqual(second["request"], first["request"] + 1)
        # Another client connection, later, reuses the pooled one too.
        third = json.loads(self.get(GOOD_PORT, NAME + ":443")[0]["body"])
        self.assertEqual(third["connection"], first["connection"])
        fragment = '"%s" "10.250.0.3:443"' % NAME
        testbed.wait_for(lambda: len(self.log_lines(fragment)) >= 3, 5, what="access log lines")
        self.assertIn('"GET / HTTP/1.1" 200 - ', self.log_lines(fragment)[-1])

    def test_bodies_on_one_connection(self):
        """
        Requests with bodies, one after the other on one kept-alive
        connection each way: all answered, all on one upstream connection.
        """
        request = {"method": "POST", "path": "/", "headers": [["Host", NAME]], "body": "x" * 1000}
        result = self.topology.run_client(
            {"host": testbed.SERVER_V4, "port": GOOD_PORT, "requests": [request] * 4}
        )
        self.assertIsNone(result["error"], result)
        answers = [json.loads(r["body"]) for r in result["responses"]]
        self.assertEqual([a["received"] for a in answers], [1000] * 4)
        self.assertEqual(len({a["connection"] for a in answers}), 1, answers)

    def assertRefused(self, response, fragment):
        self.assertEqual(response["status"], 503, response)
        self.assertIn(
            "reset reason: connection failure, transport failure reason: TLS error: " + fragment,
            response["body"],
        )
        testbed.wait_for(lambda: self.log_lines(fragment), 5, what="the log line")
        lines = self.log_lines(fragment)
        self.assertEqual(len(lines), 1, lines)
        testbed.wait_for(lambda: self.log_lines('" 503 UF '), 5, what="access log line")

    def test_name_mismatch(self):
        """
        A Host the certificate is not for: 503 that names both.
        """
        (response,) = self.get(GOOD_PORT, "other.example.test")
        self.assertRefused(
            response,
            'certificate verify failed: name mismatch: wanted "other.example.test", '
            'certificate is for "%s"' % NAME,
        )
        self.assertTrue(self.log_lines('"other.example.test" "10.250.0.3:443"'))

    def test_untrusted_ca(self):
        """
        A certificate from a CA not in --ca-file: 503 with the chain error.
        """
        (response,) = self.get(UNTRUSTED_PORT, NAME)
        self.assertRefused(
            response,
            'certificate verify failed: unable to get local issuer certificate '
            '(certificate for "%s", issued by "CN=Elsewhere CA")' % NAME,
        )

    def test_zz_no_traceback(self):
        """
        After all that, the proxy logged no traceback.
        """
        log = self.topology.proxy_log()
        self.assertNotIn("Traceback", log)
        self.assertNotIn("Unhandled", log)


def testSuite():
    return testbed.suite(OriginationTests)
