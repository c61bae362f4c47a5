"""
Tests for L{origdst.admission}: the decision on a request head, made without
a reactor, a transport or a pool.
"""

from twisted.logger import LogLevel
from twisted.trial import unittest

from origdst import framing, replies
from origdst.admission import Admission, Admitted, Refused, absolute_target
from origdst.config import Settings
from origdst.policy import Policy

DEST = ("10.250.0.3", 80)
PEER = ("10.250.0.2", 40000)


def admission(**settings):
    settings = Settings(**settings)
    return Admission(settings, Policy(settings))


def admit(head, rules=None, destination=DEST, refusal=None, own_upstream=False):
    return (rules or admission()).admit(head, destination, refusal, PEER, own_upstream)


class AdmittedTests(unittest.TestCase):
    def test_get(self):
        """
        A plain GET goes to the original destination, without a body, and
        may be sent again.
        """
        request = admit(b"GET /a HTTP/1.1\r\nHost: h")
        self.assertIsInstance(request, Admitted)
        self.assertEqual(
            (request.destination, request.kind, request.replayable, request.close_after),
            (DEST, framing.NONE, True, False),
        )
        self.assertEqual(request.parsed, (b"GET", b"/a", b"HTTP/1.1", [(b"Host", b"h")]))
        self.assertTrue(request.upstream_head.startswith(b"GET /a HTTP/1.1\r\nHost: h\r\n"))
        self.assertNotIn(b"x-origdst-loop", request.upstream_head)
        self.assertNotIn(b"via:", request.upstream_head.lower())

    def test_post_with_expect(self):
        """
        A body is framed again upstream; with C{Expect: 100-continue} the
        client waits for a 100; a body is never replayed.
        """
        request = admit(
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue"
        )
        self.assertEqual((request.kind, request.length), (framing.LENGTH, 5))
        self.assertEqual((request.expect_continue, request.replayable), (True, False))
        self.assertIn(b"content-length: 5\r\n", request.upstream_head)

    def test_empty_body_replayable(self):
        """
        C{Content-Length: 0} is no body to keep: such a request may be sent
        again when its method is idempotent or it has an C{Idempotency-Key},
        as one without a length may; a non-empty one never.
        """
        cases = [
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nIdempotency-Key: k", True),
            (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0", True),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0", False),
            (b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nIdempotency-Key: k", False),
        ]
        for head, replayable in cases:
            self.assertEqual(admit(head).replayable, replayable, head)

    def test_http10_gets_host(self):
        """
        An HTTP/1.0 request without Host goes upstream with one naming the
        destination, and closes after its response.
        """
        request = admit(b"GET / HTTP/1.0", destination=("fd00::3", 8080))
        self.assertIn(b"host: [fd00::3]:8080\r\n", request.upstream_head)
        self.assertTrue(request.close_after)

    def test_connect_without_host(self):
        """
        An HTTP/1.0 CONNECT without Host goes upstream with its authority as
        Host, and without Upgrade.
        """
        request = admit(b"CONNECT example.com:443 HTTP/1.0")
        self.assertEqual(request.upgrade, b"CONNECT")
        self.assertIn(b"host: example.com:443\r\n", request.upstream_head)
        self.assertNotIn(b"upgrade", request.upstream_head.lower())

    def test_absolute_form(self):
        """
        An absolute-form target becomes origin-form, its authority the Host.
        """
        request = admit(b"GET http://example.com/x?y HTTP/1.1\r\nHost: other")
        self.assertEqual(request.target, b"/x?y")
        self.assertIn(b"Host: example.com\r\n", request.upstream_head)

    def test_override_header(self):
        """
        With C{--use-original-dst-header} the header names the destination.
        """
        rules = admission(use_original_dst_header=True)
        request = admit(b"GET / HTTP/1.1\r\nHost: h\r\nx-envoy-original-dst-host: 10.0.0.9:81", rules)
        self.assertEqual(request.destination, ("10.0.0.9", 81))
        self.assertNotIn(b"original-dst-host", request.upstream_head)


class RefusedTests(unittest.TestCase):
    def test_malformed(self):
        """
        A head that does not parse is refused with 400, nothing of it
        parsed, and a log line naming the client.
        """
        refused = admit(b"GARBAGE")
        self.assertIsInstance(refused, Refused)
        self.assertEqual((refused.reply.status, refused.reply.body, refused.parsed), (400, b"Bad Request", None))
        self.assertEqual((refused.reply.flags, refused.method, refused.level), ("DPE", b"GET", LogLevel.info))
        self.assertTrue(refused.note.startswith("rejected a request from 10.250.0.2:40000: "))

    def test_too_many_headers(self):
        """
        Over the header count limit is 431, the head still parsed for the
        access log.
        """
        rules = admission(max_request_headers_count=2)
        refused = admit(b"GET / HTTP/1.1\r\nHost: h\r\na: 1\r\nb: 2", rules)
        self.assertEqual(refused.reply.status, 431)
        self.assertEqual(refused.reply.details, "http1.too_many_request_headers")
        self.assertEqual(refused.parsed[0], b"GET")

    def test_missing_host(self):
        """
        HTTP/1.1 without Host is 400.
        """
        self.assertEqual(admit(b"GET / HTTP/1.1").reply.status, 400)

    def test_connection_refusal(self):
        """
        A connection without a destination answers every request with its
        refusal, a HEAD with the head alone, and logs nothing more.
        """
        refused = admit(b"HEAD / HTTP/1.1\r\nHost: h", destination=None, refusal=replies.NO_HEALTHY_UPSTREAM)
        self.assertIs(refused.reply, replies.NO_HEALTHY_UPSTREAM)
        self.assertEqual((refused.method, refused.note), (b"HEAD", None))

    def test_own_upstream(self):
        """
        A request from one of the proxy's own upstream connections is a loop.
        """
        refused = admit(b"GET / HTTP/1.1\r\nHost: h", own_upstream=True)
        self.assertIs(refused.reply, replies.REDIRECT_LOOP)
        self.assertEqual(refused.level, LogLevel.warn)
        self.assertIn("owner match", refused.note)
        self.assertIn("10.250.0.3:80", refused.note)

    def test_via_loop(self):
        """
        With --via, a request whose Via already names this proxy has been
        here before; without it, or naming another proxy, it is no loop.
        """
        rules = admission(via="Egress-A")
        refused = admit(b"GET / HTTP/1.1\r\nHost: h\r\nVia: 1.0 fred, 1.1 egress-a", rules)
        self.assertIs(refused.reply, replies.REDIRECT_LOOP)
        self.assertIn("already passed through this proxy (its Via names egress-a)", refused.note)
        request = admit(b"GET / HTTP/1.1\r\nHost: h\r\nVia: 1.1 egress-b", rules)
        self.assertIsInstance(request, Admitted)
        self.assertIn(b"via: 1.1 egress-b, 1.1 Egress-A\r\n", request.upstream_head)
        self.assertIsInstance(admit(b"GET / HTTP/1.1\r\nHost: h\r\nVia: 1.1 egress-a"), Admitted)

    def test_denied(self):
        """
        A destination the policy denies is 403, the rule in the log line.
        """
        rules = admission(deny=("10.250.0.0/24:80",))
        refused = admit(b"GET /x HTTP/1.1\r\nHost: h", rules)
        self.assertIs(refused.reply, replies.EGRESS_DENIED)
        self.assertEqual(
            refused.note,
            "GET /x from 10.250.0.2:40000 to 10.250.0.3:80 refused: denied by --deny 10.250.0.0/24:80.",
        )

    def test_override_header_invalid(self):
        """
        An override header that names no IP address and port is 400.
        """
        rules = admission(use_original_dst_header=True)
        refused = admit(b"GET / HTTP/1.1\r\nHost: h\r\nx-envoy-original-dst-host: name:80", rules)
        self.assertEqual(refused.reply.status, 400)


class AbsoluteTargetTests(unittest.TestCase):
    def test_disagreeing_authority(self):
        """
        An authority naming another address than the original destination
        is refused; a name is not resolved.
        """
        self.assertRaises(framing.BadMessage, absolute_target, b"http://10.0.0.1/", DEST)
        self.assertEqual(absolute_target(b"http://10.250.0.3", DEST), (b"/", b"10.250.0.3"))
        self.assertEqual(absolute_target(b"http://name:99/p", DEST), (b"/p", b"name:99"))
