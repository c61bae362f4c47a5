"""
Tests for L{origdst.headers}: the rewrites in both directions.
"""

import uuid

from twisted.trial import unittest

from origdst import headers, heads


def fields_of(head):
    lines = head.split(b"\r\n")
    assert lines[-2:] == [b"", b""], head
    return lines[0], heads.parse_fields(lines[1:-2])


class RequestHeadTests(unittest.TestCase):
    def rewrite(self, fields, timeout_ms=15000, frame=b""):
        index = heads.index(fields)
        head = headers.request_head(
            b"GET", b"/p?q=1", fields, index, b"10.250.0.3", b"x-envoy", timeout_ms, frame, b"m1"
        )
        return fields_of(head)

    def test_hop_by_hop_removed(self):
        """
        Connection, the names it lists, Keep-Alive, Proxy-Connection, TE,
        Upgrade and the client's framing are not forwarded; the rest is, in
        order and with its case.
        """
        start, fields = self.rewrite(
            [
                (b"Host", b"example"),
                (b"Connection", b"keep-alive, X-Hop"),
                (b"X-Hop", b"1"),
                (b"Keep-Alive", b"timeout=5"),
                (b"Proxy-Connection", b"keep-alive"),
                (b"TE", b"trailers"),
                (b"Upgrade", b"websocket"),
                (b"Transfer-Encoding", b"chunked"),
                (b"X-Custom", b"yes"),
                (b"accept", b"*/*"),
            ],
            frame=b"transfer-encoding: chunked\r\n",
        )
        self.assertEqual(start, b"GET /p?q=1 HTTP/1.1")
        names = [n for n, v in fields]
        self.assertEqual(names[:3], [b"Host", b"X-Custom", b"accept"])
        for gone in (b"Connection", b"X-Hop", b"Keep-Alive", b"Proxy-Connection", b"TE", b"Upgrade", b"Transfer-Encoding"):
            self.assertNotIn(gone, names)
        self.assertIn((b"transfer-encoding", b"chunked"), fields)

    def test_added_headers(self):
        """
        x-forwarded-proto is set (a client's value overwritten), a uuid4
        x-request-id is added, and the route timeout is advertised.
        """
        _, fields = self.rewrite([(b"Host", b"h"), (b"X-Forwarded-Proto", b"https"), (b"x-envoy-expected-rq-timeout-ms", b"1")])
        index = heads.index(fields)
        self.assertEqual(index[b"x-forwarded-proto"], [b"http"])
        self.assertEqual(index[b"x-envoy-expected-rq-timeout-ms"], [b"15000"])
        self.assertEqual(uuid.UUID(index[b"x-request-id"][0].decode()).version, 4)

    def test_request_id_kept(self):
        """
        A valid client x-request-id is kept so ids propagate; an invalid one
        is replaced.
        """
        _, fields = self.rewrite([(b"Host", b"h"), (b"X-Request-Id", b"abc-123")])
        self.assertEqual(heads.index(fields)[b"x-request-id"], [b"abc-123"])
        _, fields = self.rewrite([(b"Host", b"h"), (b"X-Request-Id", b"has space")])
        new = heads.index(fields)[b"x-request-id"]
        self.assertEqual(len(new), 1)
        self.assertEqual(uuid.UUID(new[0].decode()).version, 4)

    def test_no_timeout_header_when_disabled(self):
        """
        With the route timeout disabled, no timeout is advertised.
        """
        _, fields = self.rewrite([(b"Host", b"h")], timeout_ms=0)
        self.assertNotIn(b"x-envoy-expected-rq-timeout-ms", heads.index(fields))

    def test_host_added_for_http10(self):
        """
        A request without Host (HTTP/1.0) gets the original destination as
        Host, which HTTP/1.1 upstream requires.
        """
        _, fields = self.rewrite([])
        self.assertEqual(heads.index(fields)[b"host"], [b"10.250.0.3"])


class ResponseHeadTests(unittest.TestCase):
    def test_rewrite(self):
        """
        server is replaced, the upstream service time added, hop-by-hop
        fields dropped, the rest kept.
        """
        fields = [
            (b"Server", b"nginx"),
            (b"Connection", b"keep-alive"),
            (b"Content-Length", b"5"),
            (b"Content-Type", b"text/plain"),
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
        ]
        head = headers.response_head(
            200, b"OK", fields, heads.index(fields), b"origdst", b"x-envoy", 7, b"content-length: 5\r\n"
        )
        start, out = fields_of(head)
        self.assertEqual(start, b"HTTP/1.1 200 OK")
        self.assertEqual(
            out,
            [
                (b"Content-Type", b"text/plain"),
                (b"Set-Cookie", b"a=1"),
                (b"Set-Cookie", b"b=2"),
                (b"server", b"origdst"),
                (b"x-envoy-upstream-service-time", b"7"),
                (b"content-length", b"5"),
            ],
        )

    def test_wants_close(self):
        """
        HTTP/1.1 keeps the connection unless told to close; HTTP/1.0 closes
        unless told to keep it.
        """
        idx = heads.index
        self.assertFalse(headers.wants_close(b"HTTP/1.1", idx([])))
        self.assertTrue(headers.wants_close(b"HTTP/1.1", idx([(b"Connection", b"Close")])))
        self.assertTrue(headers.wants_close(b"HTTP/1.0", idx([])))
        self.assertFalse(headers.wants_close(b"HTTP/1.0", idx([(b"Connection", b"keep-alive")])))
