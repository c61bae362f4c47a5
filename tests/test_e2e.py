"""
End-to-end tests in real network namespaces, set up like Envoy's original-destination tutorial.

An unprivileged client (uid 65534) in namespace C connects to the backend's address in
namespace S; an iptables nat OUTPUT REDIRECT rule with an owner match sends the connection to
the proxy (root, in C), which finds the original destination and connects to it for real, its
own connections passing the rule untouched.  See L{testbed} for the topology.

One fixture (namespaces, backend, proxy) serves each class.  Trial has no
C{setUpClass}/C{tearDownClass}, so the fixture is built lazily by the first C{setUp}, and
L{testSuite} runs a teardown test (L{testbed.suite}) after each class that tears it down and
checks that the namespaces are gone; when only some tests are selected by name, the C{atexit}
hook in L{testbed} removes the fixture instead.  Set C{ORIGDST_E2E_KEEP=1} to keep the logs.
"""

import hashlib
import json
import re
import uuid

from twisted.trial import runner, unittest

import testbed
from testbed import netclient
from testbed.backend import pattern
from testbed.figures import stat_values

PROXY_PORT = 15001
BACKEND_PORT = 80
#: In S nothing listens here: a refused destination.
CLOSED_PORT = 81
ADMIN_PORT = 9901
REQUEST_TIMEOUT = 3

PROXY_ARGS = [
    "--port", "tcp6:%d" % PROXY_PORT,
    "--log-level", "debug",
    "--cleanup-interval", "1",
    "--request-timeout", str(REQUEST_TIMEOUT),
]

#: Hop-by-hop headers a client may send; none of them may reach the backend.
HOP_BY_HOP = [
    ["Connection", "keep-alive, X-Hop"],
    ["X-Hop", "1"],
    ["Keep-Alive", "timeout=5"],
    ["Proxy-Connection", "keep-alive"],
    ["TE", "trailers"],
]

CONNECT_FAILURE = (
    "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
)

#: A repeat unit whose length is no power of two, so shifted or dropped bytes change the hash.
BODY_UNIT = "origdst-e2e-0123456789abcdefghij!"
BIG = 8 * 1024 * 1024


def values(headers, name):
    """
    @param headers: C{[name, value]} pairs.
    @return: the values of every header called C{name}, compared case-insensitively.
    """
    return [v for k, v in headers if k.lower() == name.lower()]


def single(testCase, headers, name):
    """
    Assert that C{name} occurs exactly once in C{headers} and return its value.
    """
    found = values(headers, name)
    testCase.assertEqual(len(found), 1, "expected one %s header in %r" % (name, headers))
    return found[0]


def backendSaw(testCase, response):
    """
    Decode the backend's C{/echo} report from a response.
    """
    testCase.assertEqual(response["status"], 200, response)
    return json.loads(response["body"])


class OriginalDestinationTests(testbed.TopologyTestCase):
    """
    Requests through the proxy from an unprivileged client, redirected by iptables.
    """

    @classmethod
    def build(cls, topology):
        """
        The rules (a REDIRECT with the owner match for the backend's addresses,
        one without it for a loop), the backend and the proxy.
        """
        try:
            for dst in (testbed.SERVER_V4, testbed.SERVER_V6):
                topology.add_redirect(dst, [BACKEND_PORT, CLOSED_PORT], PROXY_PORT)
            # No owner match: the proxy's own upstream connection to this address comes
            # straight back to it, a redirect loop.
            topology.add_redirect(testbed.UNASSIGNED_V4, BACKEND_PORT, PROXY_PORT,
                                  owner_match=False)
        except testbed.TopologyError as e:
            # A kernel without the nat table or the owner/multiport matches.
            raise unittest.SkipTest("cannot add the iptables REDIRECT rules: %s" % (e,))
        topology.start_backend(BACKEND_PORT)
        topology.start_proxy(PROXY_ARGS, PROXY_PORT)

    def setUp(self):
        testbed.TopologyTestCase.setUp(self)
        self.logMark = len(self.topology.proxy_log())

    # -- helpers ---------------------------------------------------------------------

    def connection(self, host, requests, port=BACKEND_PORT, timeout=20):
        """
        Send C{requests} on one connection as the unprivileged client; fail on any error.

        @return: the responses.
        """
        result = self.topology.run_client(
            {"host": host, "port": port, "timeout": timeout, "requests": requests})
        self.assertIsNone(result["error"], "%r\nproxy log:\n%s" % (result, self.newLog()))
        self.assertEqual(len(result["responses"]), len(requests))
        return result["responses"]

    def request(self, host, path="/", port=BACKEND_PORT, timeout=20, **spec):
        """
        One request on its own connection; C{spec} as in netclient.py.
        """
        spec["path"] = path
        return self.connection(host, [spec], port=port, timeout=timeout)[0]

    def newLog(self):
        """
        @return: what the proxy logged since this test began.
        """
        return self.topology.proxy_log()[self.logMark:]

    def waitForLog(self, predicate, timeout=10, what="a log line"):
        """
        Poll the proxy's log until C{predicate(text)} holds, bounded in time.
        """
        try:
            return testbed.wait_for(lambda: predicate(self.topology.proxy_log()), timeout,
                                    interval=0.1, what=what)
        except testbed.TopologyError as e:
            self.fail("%s\nproxy log since the test began:\n%s" % (e, self.newLog()[-4000:]))

    def assertProxyAnswered(self, response):
        """
        The response went through the proxy, not straight to the backend.
        """
        self.assertEqual(values(response["headers"], "server"), ["origdst"], response)

    def assertLocalReply(self, response, status, body):
        """
        A local reply of the proxy: status, exact text body, and C{Connection: close} since
        the failure came from the upstream.
        """
        self.assertEqual(response["status"], status, response)
        self.assertEqual(response["body"], body)
        contentType = single(self, response["headers"], "content-type")
        self.assertEqual(contentType.split(";")[0].strip(), "text/plain")
        self.assertIn("close", [v.strip().lower() for v in
                                ",".join(values(response["headers"], "connection")).split(",")])

    def assertRewritten(self, saw, host):
        """
        What every proxied request must look like at the backend.
        """
        headers = saw["headers"]
        self.assertEqual(values(headers, "host"), [host])
        self.assertEqual(values(headers, "x-forwarded-proto"), ["http"])
        self.assertEqual(values(headers, "x-envoy-expected-rq-timeout-ms"),
                         [str(REQUEST_TIMEOUT * 1000)])
        requestId = single(self, headers, "x-request-id")
        return requestId

    def assertUUID4(self, value):
        parsed = uuid.UUID(value)
        self.assertEqual(parsed.version, 4, value)
        self.assertEqual(str(parsed), value.lower())

    # -- tests -----------------------------------------------------------------------

    def test_tutorial_request(self):
        """
        The tutorial's request from uid 65534 to 10.250.0.3:80 reaches the backend through the
        proxy: request line and body intact, C{Host} kept, C{x-forwarded-proto} set (a
        client's value overwritten), a uuid4 C{x-request-id} and
        C{x-envoy-expected-rq-timeout-ms} added, hop-by-hop headers dropped, ordinary and
        repeated headers and a client-sent C{x-request-id} kept; the client sees
        C{server: origdst} and C{x-envoy-upstream-service-time}.
        """
        plain, withId, post = self.connection(testbed.SERVER_V4, [
            {"path": "/echo?x=1", "headers": HOP_BY_HOP + [
                ["X-Custom", "yes"], ["x-forwarded-proto", "https"],
                ["X-Repeated", "a"], ["x-repeated", "b"]]},
            {"path": "/echo?x=2", "headers": [["x-request-id", "abc-123"]]},
            {"method": "POST", "path": "/echo?y=%C3%A9&z", "body": "hello, backend",
             "headers": [["Content-Type", "text/plain"]]},
        ])
        for response in (plain, withId, post):
            self.assertProxyAnswered(response)
            serviceTime = single(self, response["headers"], "x-envoy-upstream-service-time")
            self.assertTrue(re.match(r"^\d+$", serviceTime), serviceTime)

        saw = backendSaw(self, plain)
        self.assertEqual((saw["method"], saw["uri"], saw["version"], saw["body_len"]),
                         ("GET", "/echo?x=1", "HTTP/1.1", 0))
        self.assertUUID4(self.assertRewritten(saw, testbed.SERVER_V4))
        self.assertEqual(values(saw["headers"], "X-Custom"), ["yes"])
        # Repeated headers keep their order; a client's x-forwarded-proto is overwritten
        # (assertRewritten saw exactly one, "http").
        self.assertEqual([h for h in saw["headers"] if h[0].lower() == "x-repeated"],
                         [["X-Repeated", "a"], ["x-repeated", "b"]])
        for name in ("x-hop", "keep-alive", "proxy-connection", "te"):
            self.assertEqual(values(saw["headers"], name), [], "%s reached the backend" % name)
        for value in values(saw["headers"], "connection"):
            self.assertNotIn("x-hop", value.lower())

        saw = backendSaw(self, withId)
        self.assertEqual(self.assertRewritten(saw, testbed.SERVER_V4), "abc-123")

        saw = backendSaw(self, post)
        self.assertEqual((saw["method"], saw["uri"]), ("POST", "/echo?y=%C3%A9&z"))
        body = b"hello, backend"
        self.assertEqual(saw["body_len"], len(body))
        self.assertEqual(saw["body_sha256"], post["sent_body_sha256"])
        self.assertEqual(values(saw["headers"], "content-type"), ["text/plain"])
        self.assertUUID4(self.assertRewritten(saw, testbed.SERVER_V4))

    def test_big_bodies(self):
        """
        8 MiB POSTed to C{/body} come back byte for byte, sent with Content-Length and with
        a chunked request body, on one keep-alive connection.
        """
        body = {"repeat": BODY_UNIT, "size": BIG}
        expected = netclient.make_body(body)
        digest = hashlib.sha256(expected).hexdigest()
        responses = self.connection(testbed.SERVER_V4, [
            {"method": "POST", "path": "/body", "body": body},
            {"method": "PUT", "path": "/body", "body": body, "chunked": True},
        ], timeout=30)
        for response in responses:
            self.assertProxyAnswered(response)
            self.assertEqual(response["status"], 200)
            self.assertEqual(response["sent_body_sha256"], digest)
            self.assertEqual(response["body_len"], BIG)
            self.assertEqual(response["body_sha256"], digest)

    def test_chunked_response(self):
        """
        A response written in 50 pieces with no Content-Length (chunked upstream) arrives
        complete and intact.
        """
        response = self.request(testbed.SERVER_V4, "/chunked?n=50&size=1000")
        self.assertProxyAnswered(response)
        self.assertEqual(response["status"], 200)
        self.assertEqual(response["body_len"], 50000)
        self.assertEqual(response["body_sha256"], hashlib.sha256(pattern(0, 50000)).hexdigest())

    def test_keep_alive_reuse(self):
        """
        Three requests on one client connection and one on a second client connection all
        reach the backend over the same pooled upstream connection.
        """
        result = self.topology.run_client({"connections": [
            {"host": testbed.SERVER_V4, "port": BACKEND_PORT,
             "requests": [{"path": "/peer"}] * 3},
            {"host": testbed.SERVER_V4, "port": BACKEND_PORT, "requests": [{"path": "/peer"}]},
        ]})
        first, second = result["connections"]
        self.assertIsNone(first["error"], first)
        self.assertIsNone(second["error"], second)
        responses = first["responses"] + second["responses"]
        for response in responses:
            self.assertProxyAnswered(response)
            self.assertEqual(response["status"], 200)
        # The client really used two connections, the first one three times.
        clientPorts = [r["local_port"] for r in responses]
        self.assertEqual(len(set(clientPorts[:3])), 1, clientPorts)
        self.assertNotEqual(clientPorts[0], clientPorts[3], clientPorts)
        upstreamPorts = [r["body"] for r in responses]
        self.assertEqual(len(set(upstreamPorts)), 1,
                         "upstream ports %r\nproxy log:\n%s" % (upstreamPorts, self.newLog()))

    def test_refused_destination(self):
        """
        Nothing listens on 10.250.0.3:81: Envoy's 503 connect-failure reply.
        """
        response = self.request(testbed.SERVER_V4, "/", port=CLOSED_PORT)
        self.assertProxyAnswered(response)
        self.assertLocalReply(response, 503, CONNECT_FAILURE)

    def test_request_timeout(self):
        """
        A backend slower than C{--request-timeout 3}: 504 C{upstream request timeout} after
        about three seconds.
        """
        response = self.request(testbed.SERVER_V4, "/slow?delay=6")
        self.assertProxyAnswered(response)
        self.assertLocalReply(response, 504, "upstream request timeout")
        self.assertTrue(REQUEST_TIMEOUT - 0.5 <= response["elapsed"] < REQUEST_TIMEOUT + 2.5,
                        response["elapsed"])

    def test_host_removal(self):
        """
        A host is created on demand and, unused, removed by the cleanup sweep (every second
        here), with the log telling the story.
        """
        created = "Created host 10.250.0.3:80."
        removed = "Removing stale host 10.250.0.3:80."
        # Earlier tests may have left the host alive; wait until it is gone so that this
        # request creates it afresh.
        self.waitForLog(lambda log: log.count(created) == log.count(removed), timeout=10,
                        what="the host left by earlier tests to be removed")
        self.logMark = len(self.topology.proxy_log())
        self.assertEqual(self.request(testbed.SERVER_V4, "/peer")["status"], 200)

        def story(log):
            log = log[self.logMark:]
            at = log.find(created)
            return at >= 0 and "Cleaning up stale original dst hosts." in log[at:] \
                and removed in log[at:]

        self.waitForLog(story, timeout=10, what="%r, a sweep and %r" % (created, removed))

    def test_redirect_loop(self):
        """
        A destination whose REDIRECT rule lacks the owner match sends the proxy's own
        upstream connection back to the proxy: refused with 508 and logged once, not a
        connection storm; the proxy keeps serving.  A client connecting straight to the
        proxy's port gets 508 too.
        """
        response = self.request(testbed.UNASSIGNED_V4, "/", timeout=10)
        self.assertProxyAnswered(response)
        self.assertEqual(response["status"], 508, response)
        loopLines = [line for line in self.newLog().splitlines() if "loop" in line.lower()]
        self.assertTrue(loopLines, "no log line mentions the loop:\n" + self.newLog())
        self.assertLessEqual(len(loopLines), 10, "a connection storm?\n" + "\n".join(loopLines))

        self.assertEqual(self.request(testbed.SERVER_V4, "/peer")["status"], 200)

        response = self.request(testbed.CLIENT_V4, "/", port=PROXY_PORT, timeout=10)
        self.assertEqual(response["status"], 508, response)

    def test_ipv6(self):
        """
        The tutorial request to [fd00:250::3]:80, redirected by ip6tables, reaches the
        backend with its C{Host} and the rewritten headers, and the host is keyed by the
        bracketed address.
        """
        response = self.request(testbed.SERVER_V6, "/echo?x=1", headers=[["X-Custom", "yes"]])
        self.assertProxyAnswered(response)
        single(self, response["headers"], "x-envoy-upstream-service-time")
        saw = backendSaw(self, response)
        self.assertEqual((saw["method"], saw["uri"]), ("GET", "/echo?x=1"))
        self.assertUUID4(self.assertRewritten(saw, "[%s]" % testbed.SERVER_V6))
        self.assertEqual(values(saw["headers"], "X-Custom"), ["yes"])
        self.waitForLog(lambda log: "Created host [fd00:250::3]:80." in log, timeout=5,
                        what="Created host [fd00:250::3]:80.")


class NotRedirectedTests(testbed.TopologyTestCase):
    """
    The proxy in a namespace of its own with no NAT rule at all: conntrack tracks nothing
    there, so a connection straight to the proxy's port has no original destination (with
    NAT active in a namespace, conntrack would record the proxy's own address as the
    destination, which L{OriginalDestinationTests.test_redirect_loop} answers with 508).
    """

    tag = "n"
    assertLocalReply = OriginalDestinationTests.assertLocalReply

    @classmethod
    def build(cls, topology):
        """
        The proxy and its admin endpoint on loopback; no rule, no backend.
        """
        topology.start_proxy(PROXY_ARGS + ["--admin", "tcp:%d:interface=127.0.0.1" % ADMIN_PORT],
                             PROXY_PORT)
        testbed.wait_for(lambda: topology.listening(topology.client, ADMIN_PORT), 10,
                         what="the admin endpoint")

    def stat(self, name):
        """
        @return: the value of stat C{name}, read from the admin endpoint by the client.
        """
        result = self.topology.run_client({"host": "127.0.0.1", "port": ADMIN_PORT,
                                           "requests": [{"path": "/stats?format=json"}]})
        self.assertIsNone(result["error"], result)
        [response] = result["responses"]
        self.assertEqual(response["status"], 200, response)
        return stat_values(response["body"])[name]

    def test_no_original_destination(self):
        """
        A connection to the proxy's port that no REDIRECT rule brought there gets Envoy's 503
        C{no healthy upstream} with C{Connection: close}, one warning naming the likely
        cause (no REDIRECT rule), and counts in C{origdst.no_original_dst}.
        """
        self.assertEqual(self.stat("origdst.no_original_dst"), 0)
        mark = len(self.topology.proxy_log())
        result = self.topology.run_client({"host": "127.0.0.1", "port": PROXY_PORT,
                                           "timeout": 10, "requests": [{"path": "/"}]})
        self.assertIsNone(result["error"], result)
        [response] = result["responses"]
        self.assertEqual(values(response["headers"], "server"), ["origdst"], response)
        self.assertLocalReply(response, 503, "no healthy upstream")
        self.assertEqual(self.stat("origdst.no_original_dst"), 1)
        log = self.topology.proxy_log()[mark:]
        lines = [line for line in log.splitlines() if "no original destination" in line]
        self.assertEqual(len(lines), 1, log)
        self.assertIn("REDIRECT rule", lines[0])


def testSuite():
    """
    The end-to-end tests, then their fixture's teardown.  Trial uses this when the module is
    loaded as a whole (C{trial tests.test_e2e}, C{trial tests}).
    """
    names = sorted(name for name in dir(OriginalDestinationTests) if name.startswith("test_"))
    # The loop test last: a proxy that does fall into the loop should not take the other
    # tests down with it.
    names.sort(key=lambda name: name == "test_redirect_loop")
    return runner.TestSuite([testbed.suite(OriginalDestinationTests, names),
                             testbed.suite(NotRedirectedTests)])
