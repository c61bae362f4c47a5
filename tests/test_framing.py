"""
Tests for L{origdst.framing}: heads, lengths and the chunked coding.
"""

from twisted.trial import unittest

from origdst import framing
from origdst.framing import BadMessage, BodyReader


class RequestHeadTests(unittest.TestCase):
    def test_parse(self):
        """
        A request head gives method, target, version and fields in order.
        """
        method, target, version, fields = framing.parse_request_head(
            b"POST /a?b=c HTTP/1.1\r\nHost: x\r\nX-A:  1 \r\nx-a: 2"
        )
        self.assertEqual((method, target, version), (b"POST", b"/a?b=c", b"HTTP/1.1"))
        self.assertEqual(fields, [(b"Host", b"x"), (b"X-A", b"1"), (b"x-a", b"2")])
        self.assertEqual(framing.index(fields)[b"x-a"], [b"1", b"2"])

    def test_malformed(self):
        """
        Malformed heads are refused with the status a client should get.
        """
        cases = [
            (b"GET /\r\nHost: x", 400),
            (b"GET  / HTTP/1.1\r\nHost: x", 400),
            (b"G@T / HTTP/1.1\r\nHost: x", 400),
            (b"GET / HTTP/2.0\r\nHost: x", 505),
            (b"GET / HTTP/1.1x\r\nHost: x", 400),
            (b"GET / HTTP/1.1\r\nHost : x", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\n folded", 400),
            (b"GET / HTTP/1.1\r\n: x", 400),
            (b"GET / HTTP/1.1\r\nX: a\x00b", 400),
            (b"GET / HTTP/1.1\r\nX: a\nY: b", 400),
        ]
        for head, status in cases:
            e = self.assertRaises(BadMessage, framing.parse_request_head, head)
            self.assertEqual(e.status, status, head)


class ResponseHeadTests(unittest.TestCase):
    def test_parse(self):
        """
        A status line without a reason phrase is accepted.
        """
        self.assertEqual(framing.parse_response_head(b"HTTP/1.1 204"), (b"HTTP/1.1", 204, b"", []))
        self.assertEqual(
            framing.parse_response_head(b"HTTP/1.0 404 Not Found\r\nA: b"),
            (b"HTTP/1.0", 404, b"Not Found", [(b"A", b"b")]),
        )

    def test_malformed_is_502(self):
        """
        A malformed response is the upstream's fault: 502.
        """
        for head in (b"HTTP/1.1 20 OK", b"ICY 200 OK", b"HTTP/1.1 200 OK\r\nbad line"):
            e = self.assertRaises(BadMessage, framing.parse_response_head, head)
            self.assertEqual(e.status, 502)


class FramingTests(unittest.TestCase):
    def request(self, *fields):
        return framing.request_framing(framing.index(list(fields)))

    def test_request(self):
        """
        Requests are framed by chunked, Content-Length or nothing.
        """
        self.assertEqual(self.request(), (framing.NONE, 0))
        self.assertEqual(self.request((b"Content-Length", b"12")), (framing.LENGTH, 12))
        self.assertEqual(self.request((b"Content-Length", b"0")), (framing.LENGTH, 0))
        self.assertEqual(self.request((b"Content-Length", b"5, 5")), (framing.LENGTH, 5))
        self.assertEqual(self.request((b"Transfer-Encoding", b"Chunked")), (framing.CHUNKED, 0))

    def test_request_smuggling_shapes(self):
        """
        Ambiguous framing is refused, never guessed.
        """
        cases = [
            ([(b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")], 400),
            ([(b"Content-Length", b"5"), (b"Content-Length", b"6")], 400),
            ([(b"Content-Length", b"+5")], 400),
            ([(b"Content-Length", b"0x5")], 400),
            ([(b"Transfer-Encoding", b"chunked, chunked")], 400),
            ([(b"Transfer-Encoding", b"gzip")], 400),
            ([(b"Transfer-Encoding", b"gzip, chunked")], 501),
            ([(b"Transfer-Encoding", b"")], 400),
        ]
        for fields, status in cases:
            e = self.assertRaises(BadMessage, self.request, *fields)
            self.assertEqual(e.status, status, fields)

    def test_response(self):
        """
        HEAD, 1xx, 204 and 304 have no body; without framing the body runs to
        the end of the connection.
        """
        idx = framing.index([(b"Content-Length", b"10")])
        self.assertEqual(framing.response_framing(b"HEAD", 200, idx), (framing.NONE, 0))
        self.assertEqual(framing.response_framing(b"GET", 304, idx), (framing.NONE, 0))
        self.assertEqual(framing.response_framing(b"GET", 204, {}), (framing.NONE, 0))
        self.assertEqual(framing.response_framing(b"GET", 100, {}), (framing.NONE, 0))
        self.assertEqual(framing.response_framing(b"GET", 200, idx), (framing.LENGTH, 10))
        self.assertEqual(framing.response_framing(b"GET", 200, {}), (framing.CLOSE, 0))
        e = self.assertRaises(
            BadMessage,
            framing.response_framing,
            b"GET",
            200,
            framing.index([(b"Content-Length", b"1"), (b"Content-Length", b"2")]),
        )
        self.assertEqual(e.status, 502)


class BodyReaderTests(unittest.TestCase):
    def read(self, kind, length, pieces):
        out = []
        reader = BodyReader(kind, length, out.append)
        rest = b""
        for piece in pieces:
            rest = reader.feed(piece)
        return reader, b"".join(out), rest

    def test_length(self):
        """
        A Content-Length body ends after its length; what follows is returned.
        """
        reader, body, rest = self.read(framing.LENGTH, 5, [b"ab", b"cdeGET"])
        self.assertEqual((reader.done, body, rest), (True, b"abcde", b"GET"))

    def test_empty_bodies_are_done_at_once(self):
        """
        No body, or Content-Length 0, is complete before any byte.
        """
        self.assertTrue(BodyReader(framing.NONE, 0, None).done)
        self.assertTrue(BodyReader(framing.LENGTH, 0, None).done)
        self.assertEqual(BodyReader(framing.LENGTH, 0, None).feed(b"next"), b"next")

    def test_chunked_byte_by_byte(self):
        """
        The chunked coding decodes the same however the bytes are split,
        extensions and trailers included.
        """
        wire = b"5;ext=1\r\nhello\r\n1A\r\n" + b"x" * 26 + b"\r\n0\r\nTrailer-A: 1\r\nB: 2\r\n\r\nNEXT"
        for size in (1, 2, 3, 7, len(wire)):
            pieces = [wire[i : i + size] for i in range(0, len(wire), size)]
            out = []
            reader = BodyReader(framing.CHUNKED, 0, out.append)
            rest = b""
            for piece in pieces:
                rest += reader.feed(piece)
            self.assertTrue(reader.done)
            self.assertEqual(b"".join(out), b"hello" + b"x" * 26)
            self.assertEqual(reader.trailers, [(b"Trailer-A", b"1"), (b"B", b"2")])
            self.assertEqual(rest, b"NEXT")

    def test_chunked_errors(self):
        """
        Invalid chunk sizes and missing CRLFs are errors.
        """
        for wire in (b"g\r\n", b"-1\r\n", b"5\r\nhelloXX", b"1" * 17 + b"\r\n", b" 5\r\n"):
            reader = BodyReader(framing.CHUNKED, 0, lambda data: None)
            self.assertRaises(BadMessage, reader.feed, wire)

    def test_chunk_line_too_long(self):
        """
        A size line that never ends is refused instead of buffered forever.
        """
        reader = BodyReader(framing.CHUNKED, 0, lambda data: None)
        self.assertRaises(BadMessage, reader.feed, b"5;" + b"e" * framing.MAX_CHUNK_LINE)

    def test_close_delimited(self):
        """
        A close-delimited body passes everything on and never ends by itself.
        """
        reader, body, rest = self.read(framing.CLOSE, 0, [b"a", b"b"])
        self.assertEqual((reader.done, body, rest), (False, b"ab", b""))

    def test_encode(self):
        """
        Chunks and the last chunk are encoded for the wire.
        """
        self.assertEqual(b"".join(framing.encode_chunk(b"x" * 17)), b"11\r\n" + b"x" * 17 + b"\r\n")
        self.assertEqual(framing.last_chunk(), b"0\r\n\r\n")
        self.assertEqual(framing.last_chunk([(b"A", b"1")]), b"0\r\nA: 1\r\n\r\n")
