"""
Tests for L{origdst.framing}: heads, lengths and the chunked coding.
"""

from twisted.trial import unittest

from origdst import framing, heads
from origdst.framing import BadMessage, BodyReader


class RequestHeadTests(unittest.TestCase):
    def test_parse(self):
        """
        A request head gives method, target, version and fields in order.
        """
        method, target, version, fields = heads.parse_request_head(
            b"POST /a?b=c HTTP/1.1\r\nHost: x\r\nX-A:  1 \r\nx-a: 2"
        )
        self.assertEqual((method, target, version), (b"POST", b"/a?b=c", b"HTTP/1.1"))
        self.assertEqual(fields, [(b"Host", b"x"), (b"X-A", b"1"), (b"x-a", b"2")])
        self.assertEqual(heads.index(fields)[b"x-a"], [b"1", b"2"])

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
            e = self.assertRaises(BadMessage, heads.parse_request_head, head)
            self.assertEqual(e.status, status, head)


class ResponseHeadTests(unittest.TestCase):
    def test_parse(self):
        """
        A status line without a reason phrase is accepted.
        """
        self.assertEqual(heads.parse_response_head(b"HTTP/1.1 204"), (b"HTTP/1.1", 204, b"", []))
        self.assertEqual(
            heads.parse_response_head(b"HTTP/1.0 404 Not Found\r\nA: b"),
            (b"HTTP/1.0", 404, b"Not Found", [(b"A", b"b")]),
        )

    def test_malformed_is_502(self):
        """
        A malformed response is the upstream's fault: 502.
        """
        for head in (b"HTTP/1.1 20 OK", b"ICY 200 OK", b"HTTP/1.1 200 OK\r\nbad line"):
            e = self.assertRaises(BadMessage, heads.parse_response_head, head)
            self.assertEqual(e.status, 502)

    def test_status_code_range(self):
        """
        A status code outside 100-599 is refused (RFC 9110 section 15): a 0xx
        would otherwise pass for a 1xx and be forwarded as a broken line.
        """
        for code in (b"000", b"099", b"600", b"999"):
            e = self.assertRaises(BadMessage, heads.parse_response_head, b"HTTP/1.1 " + code + b" X")
            self.assertEqual(e.status, 502, code)
        for code in (100, 599):
            self.assertEqual(heads.parse_response_head(b"HTTP/1.1 %d X" % code)[1], code)


class LineEndTests(unittest.TestCase):
    """
    A line ends with CRLF only: a bare LF or CR in a head in progress is
    refused at once instead of waited on.
    """

    def test_bare_lf_in_incomplete_head(self):
        """
        A head whose lines end in a mix of CRLF and LF never holds CRLF CRLF:
        it is refused as soon as the bare LF is seen.
        """
        for buf in (
            b"GET / HTTP/1.1\r\nHost: h\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\n",
            b"GET / HTTP/1.1\nHost: h\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n\n",
        ):
            e = self.assertRaises(BadMessage, heads.check_incomplete_head, buf, 60 * 1024)
            self.assertEqual((e.status, e.reason), (400, "bare LF in request head"), buf)

    def test_bare_cr_in_incomplete_head(self):
        """
        A CR followed by anything but LF is refused; a CR as the last byte
        so far may yet get its LF.
        """
        e = self.assertRaises(
            BadMessage, heads.check_incomplete_head, b"GET / HTTP/1.1\r\nHost: h\rX", 60 * 1024
        )
        self.assertEqual((e.status, e.reason), (400, "bare CR in request head"))
        for buf in (b"", b"GET / HTTP/1.1\r", b"GET / HTTP/1.1\r\nHost: h\r\n\r"):
            heads.check_incomplete_head(buf, 60 * 1024)

    def test_response_head_status(self):
        """
        The same check serves response heads, with the status given.
        """
        e = self.assertRaises(
            BadMessage, heads.check_line_ends, b"HTTP/1.1 200 OK\n\r\n", 502, "response head"
        )
        self.assertEqual((e.status, e.reason), (502, "bare LF in response head"))

    def test_incomplete_response_head(self):
        """
        A response head in progress that starts with a line end is refused
        at once with the reason its complete form gets (a fuzzer found the
        two disagreeing), and one with a bare CR or LF as a request head is.
        """
        for buf in (b"\r", b"\n", b"\r\nHTTP/1.1 200 OK\r\n", b"\rHTTP/1.1 200 \r\nContent-Length: 0\r\n\r"):
            e = self.assertRaises(BadMessage, heads.check_incomplete_response_head, buf)
            self.assertEqual((e.status, e.reason), (502, "malformed status line"), buf)
            e = self.assertRaises(BadMessage, heads.parse_response_head, buf.rstrip(b"\r") or b"\r\n")
            self.assertEqual(e.reason, "malformed status line")
        e = self.assertRaises(BadMessage, heads.check_incomplete_response_head, b"HTTP/1.1 200 OK\rX")
        self.assertEqual((e.status, e.reason), (502, "bare CR in response head"))
        for buf in (b"", b"H", b"HTTP/1.1 200 OK\r", b"HTTP/1.1 200 OK\r\nX: 1\r\n"):
            heads.check_incomplete_response_head(buf)


class FramingTests(unittest.TestCase):
    def request(self, *fields):
        return framing.request_framing(heads.index(list(fields)))

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
        idx = heads.index([(b"Content-Length", b"10")])
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
            heads.index([(b"Content-Length", b"1"), (b"Content-Length", b"2")]),
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

    def test_consumed(self):
        """
        Bytes moved past the reader (raw) count toward its length as fed
        ones do, and the bytes after the body still come back from feed.
        """
        out = []
        reader = BodyReader(framing.LENGTH, 10, out.append)
        reader.feed(b"ab")
        reader.consumed(5)
        self.assertEqual((reader.remaining, reader.done), (3, False))
        self.assertEqual(reader.feed(b"cdeGET"), b"GET")
        self.assertEqual((reader.done, b"".join(out)), (True, b"abcde"))
        reader = BodyReader(framing.LENGTH, 4, out.append)
        reader.consumed(4)
        self.assertEqual((reader.remaining, reader.done), (0, True))

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

    def test_bare_lf_after_chunk_data(self):
        """
        A bare LF where the CRLF after chunk data belongs is refused at once,
        not waited on for a second byte; a lone CR there is waited on.
        """
        reader = BodyReader(framing.CHUNKED, 0, lambda data: None)
        e = self.assertRaises(BadMessage, reader.feed, b"5\r\nhello\n")
        self.assertEqual(e.status, 400)
        reader = BodyReader(framing.CHUNKED, 0, lambda data: None)
        self.assertEqual(reader.feed(b"5\r\nhello\r"), b"")
        self.assertEqual(reader.feed(b"\n0\r\n\r\nX"), b"X")
        self.assertTrue(reader.done)

    def test_bare_line_ends_in_chunk_lines(self):
        """
        A bare LF or CR in a size line or a trailer line is refused as soon as
        it arrives, whatever follows.
        """
        for wire in (b"5\n", b"5;a\n", b"5\rhel", b"0\r\nX: 1\n", b"0\r\nX: 1\rY", b"0\n\r\n"):
            reader = BodyReader(framing.CHUNKED, 0, lambda data: None)
            self.assertRaises(BadMessage, reader.feed, wire)

    def test_chunk_extensions(self):
        """
        Extensions of RFC 9112 section 7.1.1 are accepted (and dropped):
        token names, token or quoted-string values, BWS around ";" and "=".
        """
        for ext in (
            b";a",
            b";a=b",
            b";a=b;c;d=e",
            b" ;a",
            b"\t; a = b",
            b';a=""',
            b';a="q \\" \\\\ x"',
            b';a="\xff obs-text"',
            b";!#$%&'*+-.^_`|~09AZaz=!#$%&'*+-.^_`|~09AZaz",
        ):
            out = []
            reader = BodyReader(framing.CHUNKED, 0, out.append)
            rest = reader.feed(b"5" + ext + b"\r\nhello\r\n0" + ext + b"\r\n\r\nNEXT")
            self.assertEqual((reader.done, b"".join(out), rest), (True, b"hello", b"NEXT"), ext)

    def test_invalid_chunk_extensions(self):
        """
        Anything else after a chunk size is refused, controls above all: the
        issue's C{5;a\\nb\\x00c} was accepted before.
        """
        for ext in (
            b";a\nb\x00c",
            b";",
            b";a=",
            b";=b",
            b";a b",
            b";a=b c",
            b";a,b",
            b";a=\x00",
            b';a="\x00"',
            b';a="x',
            b';a="x"y',
            b";a=\xff",
            b" ",
            b"\t",
            b"x",
        ):
            reader = BodyReader(framing.CHUNKED, 0, lambda data: None)
            e = self.assertRaises(BadMessage, reader.feed, b"5" + ext + b"\r\nhello\r\n0\r\n\r\n")
            self.assertEqual(e.status, 400, ext)

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


class BareLineEndThroughProxyTests(unittest.TestCase):
    """
    The two requests of issue 12 that used to hang until a timeout, fed to a
    proxy channel: each gets its 400 at once and its connection closed.
    """

    def setUp(self):
        # Imported here: the harness lives with the proxy tests.
        from tests.helpers import ProxyHarness, parse_response

        self.proxy = ProxyHarness(self)
        self.parse_response = parse_response

    def assertRefusedAtOnce(self, channel, client, status=400):
        self.assertFalse(client.connected, client.value())
        self.assertEqual(self.parse_response(client.value())[0], status)

    def test_head_with_mixed_line_ends(self):
        """
        A head whose lines end in CRLF and bare LF never holds CRLF CRLF; it
        was waited on until the request-headers timeout.
        """
        for head in (
            b"GET / HTTP/1.1\r\nHost: h\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX: 1\n\r\n",
        ):
            channel, client = self.proxy.client()
            channel.dataReceived(head)
            self.assertRefusedAtOnce(channel, client)
        self.assertEqual(self.proxy.reactor.tcpClients, [])

    def test_chunk_with_bare_lf(self):
        """
        A chunked body whose line ends with a bare LF is refused at once and
        its upstream connection dropped, whether the LF ends a size line, its
        extensions, or the chunk data (which was waited on until the stream
        idle timeout), and whether the body comes with the head or later.
        """
        head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        for body in (b"5\n", b"5;a\n", b"5\r\nhello\n", b"5;a\nb\r\nhello\r\n0\r\n\r\n"):
            channel, client = self.proxy.client()
            channel.dataReceived(head)
            upstream = self.proxy.accept_upstream()
            channel.dataReceived(body)
            self.assertRefusedAtOnce(channel, client)
            self.assertTrue(upstream.disconnected, body)
            channel, client = self.proxy.client()
            channel.dataReceived(head + body)
            self.assertRefusedAtOnce(channel, client)

    def test_response_head_with_mixed_line_ends(self):
        """
        The same rule on the response side: a 502 at once, not a 504 when the
        route timeout fires.
        """
        from tests.helpers import GET

        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        upstream = self.proxy.accept_upstream()
        upstream.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n")
        self.assertEqual(self.parse_response(client.value())[0], 502)
        self.assertTrue(upstream.disconnected)
