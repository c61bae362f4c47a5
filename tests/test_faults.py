"""
Faults end to end (issue 12, item 2): a backend that misbehaves on request
(L{testbed.faults}) and a client that gives up, in the namespaces of L{testbed}, through the
real REDIRECT rule from the unprivileged client.

Each test asserts the documented status and body (the README's "When a peer fails"), the log line
(the proxy's, and the access log's entry with its Envoy flags), the counters in C{/stats}, that a
bystander keep-alive connection opened before the fault still works after it, and that the
proxy's open descriptors and C{/clusters} return to their starting values
(L{tests.faultbed.FaultTestCase.assertRecovered}).
"""

import json
import time

import testbed
from testbed.faults import pattern
from tests.faultbed import (
    CLOSED,
    CONNECT_TIMEOUT,
    FAULTY,
    REQUEST_TIMEOUT,
    RESET,
    STREAM_IDLE_TIMEOUT,
    FaultTestCase,
    header,
)

KEY = "%s:%d" % (testbed.SERVER_V4, FAULTY)
BIG_UPLOAD = 256 * 1024 * 1024


class BackendFaultTests(FaultTestCase):
    """
    A backend that refuses, hangs, resets, cuts its body short, sends too much, closes a
    pooled connection as it is reused, or dribbles.
    """

    def test_refused(self):
        """
        Nothing listens: Envoy's 503 connection failure, logged, counted as a connect failure.
        """
        self.open("f", port=CLOSED)
        got = self.exchange("f", "GET", "/refused")
        self.assertLocalReply(got, 503, RESET + "connection failure")
        self.assertLogged("upstream %s:%d: connection failure." % (testbed.SERVER_V4, CLOSED))
        self.assertAccess("/refused", 503, "UF")
        self.assertCounted(upstream_cx_connect_fail=1, upstream_rq_5xx=1, downstream_rq_5xx=1,
                           upstream_rq_total=0)
        self.assertRecovered()

    def test_hang(self):
        """
        A backend that never answers: 504 C{upstream request timeout} after
        C{--request-timeout}, and the upstream connection is dropped.
        """
        self.open("f")
        began = time.monotonic()
        got = self.exchange("f", "GET", "/fault?kind=hang")
        elapsed = time.monotonic() - began
        self.assertLocalReply(got, 504, "upstream request timeout")
        self.assertTrue(REQUEST_TIMEOUT - 0.5 < elapsed < REQUEST_TIMEOUT + 2.5, elapsed)
        self.assertLogged("upstream %s: request timeout." % (KEY,))
        self.assertAccess("/fault?kind=hang", 504, "UT")
        self.assertCounted(upstream_rq_timeout=1, upstream_rq_5xx=1, downstream_rq_5xx=1,
                           upstream_rq_total=1)
        self.assertEqual(self.backendSaw("fault hang: holding"), 1)
        self.assertRecovered()

    def test_reset_before_headers(self):
        """
        A backend that resets (RST) or closes (FIN) the connection after reading the request,
        before any byte of the response: 503 C{connection termination}, not retried (the
        connection was new), logged and counted.
        """
        for kind in ("reset-before-headers", "close-before-headers"):
            self.open("f")
            path = "/fault?kind=" + kind
            got = self.exchange("f", "GET", path)
            self.assertLocalReply(got, 503, RESET + "connection termination")
            self.assertAccess(path, 503, "UC")
            self.assertEqual(self.backendSaw("GET %s HTTP/1.1 from" % (path,)), 1)
            self.client("close", "f")
        self.assertEqual(self.newLog().count("upstream %s: connection termination." % (KEY,)), 2,
                         self.newLog()[-3000:])
        self.assertCounted(upstream_rq_5xx=2, downstream_rq_5xx=2, upstream_rq_total=2,
                           upstream_rq_retry=0)
        self.assertRecovered()

    def assertCut(self, path, body):
        """
        The response began (200 and part of the body reached the client), then the backend
        closed: the client connection is closed with the body short, never completed.
        """
        self.open("f")
        got = self.exchange("f", "GET", path)
        self.assertEqual(got["status"], 200, got)
        self.assertEqual(got["body"].encode("latin-1"), body)
        self.assertEqual((got["complete"], got["closed"]), (False, True), got)
        self.assertLogged("upstream %s: connection termination after the response began." % (
            KEY,))
        self.assertAccess(path, 200, "UC")
        self.assertCounted(upstream_rq_2xx=1, downstream_rq_2xx=1, upstream_rq_total=1)
        self.assertRecovered()

    def test_short_content_length(self):
        """
        500 of the 1000 bytes a C{Content-Length} announced, then the end of the connection.
        """
        self.assertCut("/fault?kind=short-length&n=1000&sent=500", pattern(0, 500))

    def test_short_chunked(self):
        """
        Three chunks, then the end of the connection instead of the last chunk: the client
        gets the three, and no last chunk of the proxy's making.
        """
        self.assertCut("/fault?kind=short-chunked&chunks=3", pattern(0, 300))

    def test_overlong(self):
        """
        A response followed, in the same write, by bytes of a response more: the client
        gets its 100 bytes and keeps its connection; the extra bytes reach nobody (the
        upstream connection is not reused), not this client's next request, nor another's.
        """
        self.open("f")
        path = "/fault?kind=overlong&n=100"
        got = self.exchange("f", "GET", path)
        self.assertEqual((got["status"], got["complete"], got["closed"]), (200, True, False), got)
        self.assertEqual(got["body"].encode("latin-1"), pattern(0, 100))
        again = self.exchange("f", "GET", "/echo?after=overlong")
        self.assertEqual(json.loads(again["body"])["uri"], "/echo?after=overlong")
        self.open("g")
        other = self.exchange("g", "GET", "/echo?other=overlong")
        self.assertEqual(json.loads(other["body"])["uri"], "/echo?other=overlong")
        self.assertNotIn("SMUGGLED", again["body"] + other["body"])
        self.assertAccess(path, 200, "-")
        self.assertCounted(upstream_rq_2xx=3, downstream_rq_2xx=3, upstream_rq_total=3,
                           upstream_cx_total=2)
        self.assertRecovered()

    def arm(self, c):
        """
        A request that makes its upstream connection close, unanswered, at the next
        request on it.
        """
        got = self.exchange(c, "GET", "/fault?kind=close-on-reuse")
        self.assertEqual((got["status"], got["body"]), (200, "armed\n"), got)

    def test_closed_on_reuse_retried(self):
        """
        The pooled connection closes just as the next request, a C{GET}, is sent on it: the
        request is sent once more on a fresh connection and succeeds; the backend saw it
        twice, once dropped and once served, never served twice.  The same for a C{POST}
        without a body that carries an C{Idempotency-Key}.
        """
        self.open("f")
        self.arm("f")
        got = self.exchange("f", "GET", "/echo?id=retried")
        self.assertEqual((got["status"], got["closed"]), (200, False), got)
        self.assertEqual(json.loads(got["body"])["uri"], "/echo?id=retried")
        self.assertEqual(self.backendSaw("closed unanswered at GET /echo?id=retried"), 1)
        self.assertEqual(self.backendSaw("GET /echo?id=retried HTTP/1.1 from"), 1)
        self.assertLogged("reused connection was closed; retrying.")
        self.assertAccess("/echo?id=retried", 200, "-", upstream_request_attempt_count=2)
        # A POST without a body is safe to repeat once it carries an Idempotency-Key.
        self.arm("f")
        got = self.exchange("f", "POST", "/echo?id=keyed", body="",
                            headers=[("Idempotency-Key", "k-1")])
        self.assertEqual((got["status"], got["closed"]), (200, False), got)
        self.assertEqual(self.backendSaw("closed unanswered at POST /echo?id=keyed"), 1)
        self.assertEqual(self.backendSaw("POST /echo?id=keyed HTTP/1.1 from"), 1)
        self.assertAccess("/echo?id=keyed", 200, "-", upstream_request_attempt_count=2)
        self.assertCounted(upstream_rq_retry=2, upstream_rq_total=6, upstream_rq_2xx=4,
                           upstream_cx_total=3)
        self.assertRecovered()

    def test_closed_on_reuse_not_replayed(self):
        """
        The same with a C{POST} (not idempotent, with a body): 503 C{connection termination},
        never sent again; the backend saw it once, dropped, and served it never.
        """
        self.open("f")
        self.arm("f")
        got = self.exchange("f", "POST", "/echo?id=posted", body="x" * 1000)
        self.assertLocalReply(got, 503, RESET + "connection termination")
        self.assertEqual(self.backendSaw("closed unanswered at POST /echo?id=posted"), 1)
        self.assertEqual(self.backendSaw("POST /echo?id=posted HTTP/1.1 from"), 0)
        self.assertLogged("upstream %s: connection termination." % (KEY,))
        self.assertAccess("/echo?id=posted", 503, "UC", upstream_request_attempt_count=1)
        self.assertCounted(upstream_rq_retry=0, upstream_rq_total=2, upstream_rq_5xx=1,
                           upstream_cx_total=1)
        self.assertRecovered()

    def test_dribble(self):
        """
        Head and body written one byte at a time, 10 ms apart, with C{Connection: close}: the
        client gets the whole response and keeps its connection (the upstream's close is
        hop-by-hop).
        """
        self.open("f")
        path = "/fault?kind=dribble&n=32&delay=0.01"
        got = self.exchange("f", "GET", path)
        self.assertEqual((got["status"], got["complete"]), (200, True), got)
        self.assertEqual(got["body"].encode("latin-1"), pattern(0, 32))
        self.assertEqual(header(got, "connection"), [])
        again = self.exchange("f", "GET", "/echo?after=dribble")
        self.assertEqual((again["status"], again["closed"]), (200, False), again)
        self.assertAccess(path, 200, "-")
        self.assertCounted(upstream_rq_2xx=2, downstream_rq_2xx=2, upstream_cx_total=2)
        self.assertRecovered()


class ClientFaultTests(FaultTestCase):
    """
    A client that abandons an upload, a wait or a download, half-closes, or sends its head a
    byte at a time; a destination that becomes unroutable; a backend that never reads.
    """

    tag = "fk"

    def assertAbandoned(self, path, code=0, c="f", reset=False):
        """
        The client went away first: the access log says C{DC}, nothing is counted as an
        answer, and the upstream connection is dropped (L{assertRecovered}).
        """
        self.client("close", c, reset=reset)
        return self.assertAccess(path, code, "DC")

    def test_abandoned_upload(self):
        """
        A client that sends 64 KiB of a 10 MiB body and closes.
        """
        self.open("f")
        head = "POST /body?abandon=upload HTTP/1.1\r\nHost: 10.250.0.3\r\n" \
               "Content-Length: %d\r\n\r\n" % (10 * 1024 * 1024)
        self.assertTrue(self.client("send", "f", data=head + "u" * 65536)["ok"])
        self.assertLogged("creating a new connection to %s." % (KEY,))
        self.assertAbandoned("/body?abandon=upload")
        self.assertCounted(downstream_rq_total=1, downstream_rq_2xx=0, downstream_rq_5xx=0,
                           upstream_rq_total=1, upstream_rq_5xx=0)
        self.assertRecovered()

    def test_abandoned_wait(self):
        """
        A client that leaves while the backend takes its time.  One that resets its
        connection is gone at once: C{DC}, and the upstream request is dropped.  One that
        closes it normally cannot be told from a half-close (see L{test_half_close}): its
        request is still answered, into a closed socket, and then the connection ends.
        """
        for c, path in (("f", "/slow?delay=5&how=reset"), ("g", "/slow?delay=1&how=close")):
            self.open(c)
            self.assertTrue(self.client("send", c, data=self.request(path))["ok"])
            testbed.wait_for(lambda: self.backendSaw("GET %s HTTP/1.1 from" % (path,)), 5,
                             interval=0.05, what="the request at the backend")
        began = time.monotonic()
        self.assertAbandoned("/slow?delay=5&how=reset", reset=True)
        self.assertLess(time.monotonic() - began, 1.5)
        self.client("close", "g")
        self.assertEqual(self.assertAccess("/slow?delay=1&how=close", 200, "-")["path"],
                         "/slow?delay=1&how=close")
        self.assertCounted(downstream_rq_total=2, downstream_rq_2xx=1, upstream_rq_total=2,
                           upstream_rq_2xx=1, upstream_rq_5xx=0)
        self.assertRecovered()

    def test_abandoned_download(self):
        """
        A client that reads 64 KiB of a 64 MiB response, stops reading for a second (the
        proxy holds no more than its buffers of it: flow control), and closes.
        """
        self.open("f")
        before = self.rss()
        path = "/bytes?n=%d" % (64 * 1024 * 1024)
        self.assertTrue(self.client("send", "f", data=self.request(path))["ok"])
        head = self.client("response", "f", head=True)
        self.assertEqual(head["status"], 200, head)
        self.assertEqual(self.client("read", "f", n=65536)["len"], 65536)
        time.sleep(1)
        grown = self.rss() - before
        self.assertLess(grown, 16 * 1024 * 1024, "the proxy grew by %d bytes" % (grown,))
        self.assertAbandoned(path, code=200)
        self.assertCounted(downstream_rq_2xx=1, upstream_rq_2xx=1)
        self.assertRecovered()

    def request(self, path):
        return "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, testbed.SERVER_V4)

    def test_half_close(self):
        """
        A client that shuts down its sending side after its request gets the whole response,
        then the connection is closed.
        """
        self.open("f")
        self.assertTrue(self.client("send", "f", data=self.request("/echo?half=close"))["ok"])
        self.assertTrue(self.client("shut", "f")["ok"])
        got = self.client("response", "f")
        self.assertEqual((got["status"], got["complete"]), (200, True), got)
        self.assertEqual(json.loads(got["body"])["uri"], "/echo?half=close")
        self.assertTrue(self.client("read", "f", timeout=5)["closed"])
        self.assertAccess("/echo?half=close", 200, "-")
        self.assertCounted(downstream_rq_2xx=1, upstream_rq_2xx=1)
        self.assertRecovered()

    def test_head_byte_by_byte(self):
        """
        A head sent one byte at a time, 10 ms apart, is answered like any other.
        """
        self.open("f")
        got = self.exchange("f", "GET", "/echo?one=byte", headers=[("X-Slow", "yes")],
                            delay=0.01)
        self.assertEqual((got["status"], got["closed"]), (200, False), got)
        saw = json.loads(got["body"])
        self.assertEqual(saw["uri"], "/echo?one=byte")
        self.assertIn(["X-Slow", "yes"], saw["headers"])
        self.assertAccess("/echo?one=byte", 200, "-")
        self.assertCounted(downstream_rq_2xx=1, upstream_rq_2xx=1)
        self.assertRecovered()

    def test_unroutable(self):
        """
        The destination's address goes away while its host, and a pooled connection to it,
        exist: the request on the pooled connection gets 504 after C{--request-timeout}, one
        on a new connection 503 C{connection timeout} after C{--connect-timeout}; once the
        address is back, requests succeed again, and other hosts never noticed.
        """
        topology = self.topology
        device = topology.server + "0"
        self.open("f")
        self.assertEqual(self.exchange("f", "GET", "/echo?before=gone")["status"], 200)
        topology.exec(topology.server, ["ip", "addr", "del", testbed.SERVER_V4 + "/24",
                                        "dev", device])
        try:
            got = self.exchange("f", "GET", "/echo?while=gone")
            self.assertLocalReply(got, 504, "upstream request timeout")
            self.client("close", "f")
            self.assertBystander()
            self.open("f")
            began = time.monotonic()
            got = self.exchange("f", "GET", "/echo?still=gone")
            self.assertLocalReply(got, 503, RESET + "connection timeout")
            self.assertTrue(CONNECT_TIMEOUT - 0.5 < time.monotonic() - began
                            < CONNECT_TIMEOUT + 2.5)
            self.client("close", "f")
        finally:
            topology.exec(topology.server, ["ip", "addr", "add", testbed.SERVER_V4 + "/24",
                                            "dev", device, "nodad"], check=False)
        self.open("f")
        self.assertEqual(self.exchange("f", "GET", "/echo?back=again")["status"], 200)
        self.assertLogged("upstream %s: request timeout." % (KEY,))
        self.assertLogged("upstream %s: connection timeout." % (KEY,))
        self.assertAccess("/echo?while=gone", 504, "UT")
        self.assertAccess("/echo?still=gone", 503, "UF")
        self.assertCounted(upstream_rq_timeout=1, upstream_cx_connect_timeout=1,
                           upstream_cx_connect_fail=1, upstream_rq_5xx=2,
                           # before, after, and the bystander's in between
                           upstream_rq_2xx=3)
        self.assertRecovered()

    def test_never_read_upload(self):
        """
        A backend that accepts a 256 MiB upload and never reads it: flow control blocks the
        client (it gets at most the kernel's buffers in), the proxy's resident size does not
        grow by the upload, and after C{--stream-idle-timeout} without a byte the client gets
        408 C{stream timeout}.
        """
        self.open("f")
        before = self.rss()
        path = "/fault?kind=no-read"
        head = "POST %s HTTP/1.1\r\nHost: 10.250.0.3\r\nContent-Length: %d\r\n\r\n" % (
            path, BIG_UPLOAD)
        self.assertTrue(self.client("send", "f", data=head)["ok"])
        began = time.monotonic()
        pushed = self.client("upload", "f", size=BIG_UPLOAD, wait=60, **{"for": 1.5})
        grown = self.rss() - before
        self.assertLess(pushed["sent"], 32 * 1024 * 1024, pushed)
        self.assertLess(grown, 16 * 1024 * 1024, "the proxy grew by %d bytes" % (grown,))
        got = self.client("response", "f", timeout=STREAM_IDLE_TIMEOUT + 10)
        self.assertLocalReply(got, 408, "stream timeout")
        self.assertLess(time.monotonic() - began, STREAM_IDLE_TIMEOUT + 5)
        self.assertEqual(self.backendSaw("fault no-read: stopped reading"), 1)
        self.assertLogged("upstream %s: stream idle timeout." % (KEY,))
        self.assertAccess(path, 408, "SI")
        self.assertCounted(downstream_rq_4xx=1, upstream_rq_total=1)
        self.assertRecovered()


def testSuite():
    from twisted.trial import runner

    return runner.TestSuite([testbed.suite(BackendFaultTests), testbed.suite(ClientFaultTests)])
