"""
Property tests of the request and response parsers (hypothesis), and a
differential check against llhttp (C{httptools}), Node's parser.

The parser is driven the way the proxy drives it: L{MessageReader} below
strings together L{origdst.framing}'s pieces in the order the client
connection and the upstream protocol use them, and the whole proxy channel
(L{tests.test_proxy.ProxyHarness}) is fed the same bytes too. The properties:

 - a generated valid message parses to what was generated;
 - random mutations of it raise nothing but L{BadMessage}, and the channel
   answers or forwards them without an unhandled error;
 - splitting the input anywhere gives the same result as feeding it whole;
 - llhttp and origdst agree on which messages they accept, unless the
   difference is in L{DIFFERENCES}, with its reason.

Runs are bounded and derandomized (no example database), so every run tries
the same examples. Both libraries are test-only: C{pip install -e .[test]}.
"""

import re

from twisted.trial import unittest

from origdst import framing, heads
from origdst.framing import BadMessage, BodyReader

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    given = None
    NO_HYPOTHESIS = "hypothesis is not installed (a test dependency: pip install -e .[test])"
else:
    NO_HYPOTHESIS = None

try:
    import httptools
except ImportError:  # pragma: no cover (e.g. on PyPy, where it may not build)
    httptools = None
    NO_HTTPTOOLS = "httptools (llhttp) is not installed (a test dependency: pip install -e .[test])"
else:
    NO_HTTPTOOLS = None

MAX_HEAD = 60 * 1024
MAX_RESPONSE_HEAD = 64 * 1024


def fuzz(max_examples, *strategies):
    """
    Run a test on examples of C{strategies} (functions that return hypothesis
    strategies), bounded, derandomized and without a database, so that a run
    is short and every run tries the same examples. Without hypothesis the
    test skips.
    """

    def wrap(f):
        if given is None:
            f.skip = NO_HYPOTHESIS
            return f
        return settings(
            max_examples=max_examples,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )(given(*[s() for s in strategies])(f))

    return wrap


# The parser, driven as the proxy drives it.


class MessageReader:
    """
    One request or response, parsed incrementally with L{origdst.framing} in
    the order C{http.ProxyChannel.next_request}/C{start_request} and
    C{upstream.UpstreamProtocol._read_head} use it.

    @ivar head: C{(method, target, version, fields)} of a request, or
        C{(version, status, reason, fields)} of a final response, once parsed.
    @ivar done: the message is complete.
    """

    def __init__(self, response=False, method=b"GET"):
        self.response = response
        self.method = method
        self.buf = b""
        self.head = None
        self.reader = None
        self.body = []
        self.rest = b""
        self.done = False

    def feed(self, data):
        """
        @raise BadMessage: as the parser does.
        """
        if self.done:
            self.rest += data
            return
        if self.reader is None:
            data = self._feed_head(data)
            if data is None:
                return
        rest = self.reader.feed(data)
        if self.reader.done:
            self.done = True
            self.rest = rest

    def _feed_head(self, data):
        buf = self.buf + data
        while True:
            if not self.response and buf[:1] in (b"\r", b"\n"):
                buf = buf.lstrip(b"\r\n")
            end = buf.find(heads.HEAD_END)
            if self.response:
                if end < 0 or end > MAX_RESPONSE_HEAD:
                    if len(buf) > MAX_RESPONSE_HEAD:
                        raise BadMessage(502, "response head too large")
                    heads.check_incomplete_response_head(buf)
                    self.buf = buf
                    return None
            elif end < 0 or end > MAX_HEAD:
                heads.check_incomplete_head(buf[:end] if end > 0 else buf, MAX_HEAD)
                self.buf = buf
                return None
            head, buf = buf[:end], buf[end + 4 :]
            if self.response:
                version, status, reason, fields = heads.parse_response_head(head)
                index = heads.index(fields)
                kind, length = framing.response_framing(self.method, status, index)
                if status < 200 and status != 101:
                    continue
                self.head = (version, status, reason, fields)
            else:
                method, target, version, fields = heads.parse_request_head(head)
                if len(fields) > 100:
                    raise BadMessage(431, "too many request headers")
                index = heads.index(fields)
                kind, length = framing.request_framing(index, version)
                hosts = index.get(b"host", ())
                heads.check_host(hosts)
                if version == b"HTTP/1.1" and not hosts:
                    raise BadMessage(400, "missing Host header")
                self.head = (method, target, version, fields)
            self.buf = b""
            self.reader = BodyReader(kind, length, self.body.append)
            return buf


def origdst_outcome(pieces, response=False):
    """
    @return: C{("ok", (head, body, trailers))}, C{("refused", reason)} or
        C{("incomplete", (head, body))} for the message in C{pieces}.
    """
    reader = MessageReader(response)
    try:
        for piece in pieces:
            reader.feed(piece)
    except BadMessage as e:
        return ("refused", e.reason)
    body = b"".join(reader.body)
    if reader.done:
        return ("ok", (reader.head, body, reader.reader.trailers))
    return ("incomplete", (reader.head, body))


# The whole proxy channel.


def _normalise(wire):
    """
    A message as the proxy wrote it, with what depends on timing or chance
    (request ids, chunk boundaries) taken out.
    """
    head, sep, rest = wire.partition(b"\r\n\r\n")
    head = re.sub(rb"(x-request-id): [^\r]*", rb"\1: *", head)
    if not sep or b"transfer-encoding: chunked" not in head.lower():
        return head + sep + rest
    body = []
    while True:
        line, crlf, rest = rest.partition(b"\r\n")
        if not crlf:
            return head + b" [truncated chunked body] " + b"".join(body) + line
        size = int(line.split(b";")[0], 16)
        if size == 0:
            return head + b" [chunked] " + b"".join(body) + b" [trailers] " + rest
        body.append(rest[:size])
        rest = rest[size + 2 :]


def channel_outcome(test, pieces, response=False):
    """
    Feed C{pieces} to a fresh proxy: as a client's request, or (with
    C{response}) as the upstream's answer to a GET. An upstream connection
    attempt is accepted once all the pieces are in, so that only the parser,
    not the moment of the connect, depends on how the bytes were split.

    @return: what the client got, what the upstream got, and which of the two
        connections are still open.
    """
    from tests.helpers import GET, ProxyHarness

    proxy = ProxyHarness(test)
    channel, client = proxy.client()
    upstream = None
    if response:
        channel.dataReceived(GET)
        upstream = proxy.accept_upstream()
        for piece in pieces:
            if upstream.connected:
                upstream.protocol.dataReceived(piece)
    else:
        for piece in pieces:
            if client.connected:
                channel.dataReceived(piece)
        if proxy.reactor.tcpClients:
            upstream = proxy.accept_upstream()
    sent = _normalise(upstream.value()) if upstream is not None else None
    return (
        _normalise(client.value()),
        sent,
        client.connected,
        upstream is not None and upstream.connected,
    )


def split(data, cuts):
    """
    @return: C{data} cut at C{cuts} (positions, in any order).
    """
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return [p for p in pieces if p]


# Generated messages.

TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
VCHARS = bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100))
PATH_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@%/"
METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD"]
# Names whose meaning changes how a message is framed or routed: generated
# on purpose where they belong, never as random fields.
SPECIAL = {
    b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"expect",
    b"te", b"trailer", b"keep-alive", b"proxy-connection",
}
MUTATION_BYTES = b"\r\n\x00 \t:;=\"\\0f,\x7f\xffa"


def _bytes(text):
    return text.encode("latin-1")


def tokens():
    return st.text(TCHARS, min_size=1, max_size=10).map(_bytes)


def names():
    return tokens().filter(lambda n: n.lower() not in SPECIAL and not n.lower().startswith(b"x-envoy"))


def values():
    inner = st.lists(st.sampled_from([bytes([b]) for b in VCHARS] + [b" ", b"\t"]), max_size=20)
    edge = st.sampled_from([bytes([b]) for b in VCHARS])
    return st.one_of(
        st.just(b""),
        st.tuples(edge, inner, edge).map(lambda t: t[0] + b"".join(t[1]) + t[2]),
        edge,
    )


def ows():
    return st.sampled_from([b"", b"", b" ", b"\t", b"  "])


def fields():
    return st.lists(st.tuples(names(), values(), ows(), ows()), max_size=6)


def hosts():
    label = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10).map(_bytes)
    port = st.one_of(st.just(b""), st.integers(1, 65535).map(lambda p: b":%d" % p))
    return st.tuples(label, port).map(b"".join)


def chunk_exts():
    quoted = st.lists(
        st.one_of(
            st.sampled_from([bytes([b]) for b in b"\t !#[]~\x80\xff" + bytes(range(0x23, 0x5B))]),
            st.sampled_from([b"\\\"", b"\\\\", b"\\a", b"\\\t"]),
        ),
        max_size=6,
    ).map(lambda parts: b'"' + b"".join(parts) + b'"')
    value = st.one_of(st.just(None), tokens(), quoted)
    one = st.tuples(ows(), ows(), tokens(), ows(), ows(), value).map(
        lambda t: t[0] + b";" + t[1] + t[2] + (b"" if t[5] is None else t[3] + b"=" + t[4] + t[5])
    )
    return st.lists(one, max_size=2).map(b"".join)


def bodies():
    """
    @return: C{(kind, framing field or None, wire body, body, trailers)}.
    """
    data = st.binary(max_size=40)
    none = st.just((framing.NONE, None, b"", b"", []))
    length = data.map(lambda d: (framing.LENGTH, (b"Content-Length", b"%d" % len(d)), d, d, []))

    def chunked(t):
        chunks, last_ext, trailers = t
        wire = b"".join(b"%x%s\r\n%s\r\n" % (len(d), ext, d) for d, ext in chunks)
        wire += b"0" + last_ext + b"\r\n"
        wire += b"".join(n + b":" + a + v + b + b"\r\n" for n, v, a, b in trailers) + b"\r\n"
        body = b"".join(d for d, _ in chunks)
        return (framing.CHUNKED, (b"Transfer-Encoding", b"chunked"), wire, body,
                [(n, v) for n, v, _, _ in trailers])

    chunk = st.tuples(st.binary(min_size=1, max_size=20), chunk_exts())
    return st.one_of(
        none,
        length,
        st.tuples(st.lists(chunk, max_size=3), chunk_exts(), fields()).map(chunked),
    )


def _head_fields(extra, special):
    """
    @return: the field lines and the C{(name, value)} list a parser should see.
    """
    lines, expected = [], []
    for name, value, before, after in extra:
        lines.append(name + b":" + before + value + after + b"\r\n")
        expected.append((name, value))
    for position, (name, value) in special:
        position %= len(lines) + 1
        lines.insert(position, name + b": " + value + b"\r\n")
        expected.insert(position, (name, value))
    return b"".join(lines), expected


def _requests(draw):
    method = draw(st.sampled_from(METHODS))
    path = draw(st.text(PATH_CHARS, max_size=20).map(_bytes))
    path = re.sub(rb"%(?![0-9A-Fa-f]{2})", b"%25", path)
    query = draw(st.one_of(st.just(b""), st.text(PATH_CHARS + "?", max_size=10).map(lambda q: b"?" + _bytes(q))))
    target = b"/" + path + query
    kind, frame, wire, body, trailers = draw(bodies())
    version = b"HTTP/1.1" if kind == framing.CHUNKED else draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
    special = [(draw(st.integers(0, 6)), (b"Host", draw(hosts())))]
    if frame is not None:
        special.append((draw(st.integers(0, 6)), frame))
    lines, expected = _head_fields(draw(fields()), special)
    data = method + b" " + target + b" " + version + b"\r\n" + lines + b"\r\n" + wire
    return data, ((method, target, version, expected), body, trailers)


def requests():
    return st.composite(_requests)()


def _responses(draw):
    status = draw(st.integers(200, 599).filter(lambda s: s not in (204, 304)))
    reason = draw(st.one_of(st.just(b""), values()))
    kind, frame, wire, body, trailers = draw(bodies())
    if kind == framing.NONE:
        frame = (b"Content-Length", b"0")
    version = b"HTTP/1.1" if kind == framing.CHUNKED else draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
    lines, expected = _head_fields(draw(fields()), [(draw(st.integers(0, 6)), frame)])
    data = version + b" %d " % status + reason + b"\r\n" + lines + b"\r\n" + wire
    return data, ((version, status, reason, expected), body, trailers)


def responses():
    return st.composite(_responses)()


def _mutated(draw, messages):
    data, _ = draw(messages)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "repeat"]))
        byte = bytes([draw(st.sampled_from(MUTATION_BYTES))])
        if op == "insert":
            data = data[:at] + byte + data[at:]
        elif op == "delete":
            data = data[:at] + data[at + 1 :]
        elif op == "replace":
            data = data[:at] + byte + data[at + 1 :]
        else:
            span = draw(st.integers(1, 8))
            data = data[:at] + data[at : at + span] * 2 + data[at + span :]
    return data


def mutated_requests():
    return st.composite(_mutated)(requests())


def mutated_responses():
    return st.composite(_mutated)(responses())


def _line(alphabet, max_size=12):
    return st.lists(st.sampled_from([bytes([c]) for c in alphabet]), max_size=max_size).map(b"".join)


CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk_lines():
    """
    A chunked request whose first size line is random bytes after a size:
    the grammar of RFC 9112 section 7.1.1 at close range.
    """
    rest = _line(b"0aF;;==  \t\t\"\"\\x,\x00\n\r\x7f\xff")
    return rest.map(lambda r: CHUNKED_HEAD + b"5" + r + b"\r\nhello\r\n0\r\n\r\n")


def field_lines():
    """
    A request with one random field line.
    """
    line = _line(b"aZ-!:: \t\t;,\"\x00\x01\x7f\xff\r\n", max_size=10)
    return line.map(lambda f: b"GET / HTTP/1.1\r\nHost: h\r\nX" + f + b"\r\n\r\n")


def request_lines():
    """
    A request with a random request line around a GET.
    """
    part = _line(b"GET/ HTTP1.0*#?%:@\t\r\n\x00\xff", max_size=6)
    return st.tuples(part, part, part).map(
        lambda t: t[0] + b"GET" + t[1] + b" /" + t[2] + b" HTTP/1.1\r\nHost: h\r\n\r\n"
    )


def cuts():
    return st.lists(st.integers(0, 10**6), min_size=1, max_size=6)


class RoundTripTests(unittest.TestCase):
    """
    Generated valid messages parse to what was generated, however they are
    split.
    """

    @fuzz(200, requests, cuts)
    def test_request(self, message, at):
        data, expected = message
        self.assertEqual(origdst_outcome([data]), ("ok", expected))
        self.assertEqual(origdst_outcome(split(data, at)), ("ok", expected))

    @fuzz(200, responses, cuts)
    def test_response(self, message, at):
        data, expected = message
        self.assertEqual(origdst_outcome([data], response=True), ("ok", expected))
        self.assertEqual(origdst_outcome(split(data, at), response=True), ("ok", expected))

    @fuzz(150, requests, cuts)
    def test_request_through_channel(self, message, at):
        """
        The proxy forwards a valid request, the same way however it arrives.
        """
        data, ((method, target, _, fields), body, _) = message
        whole = channel_outcome(self, [data])
        client, sent, client_open, upstream_open = whole
        self.assertEqual(client, b"")
        self.assertTrue(sent.startswith(method + b" " + target + b" HTTP/1.1\r\n"), sent)
        for name, value in fields:
            if name.lower() not in (b"content-length", b"transfer-encoding"):
                self.assertIn(b"\r\n" + name + b": " + value + b"\r\n", sent)
        self.assertEqual(channel_outcome(self, split(data, at)), whole)


class MutationTests(unittest.TestCase):
    """
    Mutated messages raise nothing but L{BadMessage}, the proxy handles them
    without an unhandled error, and splitting them changes nothing.
    """

    @fuzz(300, mutated_requests, cuts)
    def test_request(self, data, at):
        whole = origdst_outcome([data])
        pieces = origdst_outcome(split(data, at))
        self.assertEqual(whole[0], pieces[0], (data, whole, pieces))
        if whole[0] != "refused":
            self.assertEqual(whole, pieces)

    @fuzz(300, mutated_responses, cuts)
    def test_response(self, data, at):
        whole = origdst_outcome([data], response=True)
        pieces = origdst_outcome(split(data, at), response=True)
        self.assertEqual(whole[0], pieces[0], (data, whole, pieces))
        if whole[0] != "refused":
            self.assertEqual(whole, pieces)

    @fuzz(200, mutated_requests, cuts)
    def test_request_through_channel(self, data, at):
        whole = channel_outcome(self, [data])
        self.assertEqual(channel_outcome(self, split(data, at)), whole, data)
        client = whole[0]
        if client:
            self.assertRegex(client, rb"\AHTTP/1\.1 [45][0-9][0-9] ")

    @fuzz(200, mutated_responses, cuts)
    def test_response_through_channel(self, data, at):
        whole = channel_outcome(self, [data], response=True)
        self.assertEqual(channel_outcome(self, split(data, at), response=True), whole, data)


# The differential check against llhttp.


class _Recorder:
    def __init__(self):
        self.url = b""
        self.headers = []
        self.body = []
        self.complete = False

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        self.headers.append((name, value))

    def on_body(self, body):
        self.body.append(body)

    def on_message_complete(self):
        self.complete = True


def llhttp_outcome(data, response=False):
    """
    @return: C{("ok", (headers and trailers, body))}, C{("refused", error)} or
        C{("incomplete", None)}: llhttp's view of the first message in C{data}.
    """
    recorder = _Recorder()
    parser = (httptools.HttpResponseParser if response else httptools.HttpRequestParser)(recorder)
    error = None
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError as e:
        error = str(e)
    if recorder.complete:
        # A later message in the same bytes may be bad; this one was not.
        headers = [(n, v.strip(b" \t")) for n, v in recorder.headers]
        return ("ok", (headers, b"".join(recorder.body)))
    if error is not None:
        return ("refused", error)
    return ("incomplete", None)


def _comparable(outcome):
    kind, detail = outcome
    if kind != "ok":
        return kind, None
    head, body, trailers = detail
    return kind, (list(head[3]) + list(trailers), body)


def _starts_with_line_end(data, response):
    return data[:1] in (b"\r", b"\n")


_BARE_LINE_END = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def _refused_once_head_ends(data, response):
    """
    Whether origdst is only waiting for the end of a head that can end (no
    bare CR or LF, which would keep it from ever ending: issue 12), and
    refuses the message as soon as it does.
    """
    if _BARE_LINE_END.search(data):
        return False
    outcome = origdst_outcome([data], response)
    if outcome[0] != "incomplete" or outcome[1][0] is not None:
        return False
    return origdst_outcome([data + b"\r\n\r\n"], response)[0] == "refused"


# Where origdst and llhttp disagree on purpose: which side refuses, the
# reason it gives (origdst's BadMessage reason or llhttp's error message), why,
# and where the reason alone is too broad, a test on the message. A
# difference not in this table fails the test.
DIFFERENCES = [
    # origdst refuses, llhttp accepts.
    ("origdst", "missing Host header",
     "RFC 9112 section 3.2: a server MUST answer 400 to an HTTP/1.1 request without Host; "
     "llhttp leaves that to the application", None),
    ("origdst", "malformed Host header",
     "RFC 9112 section 3.2: 400 for an invalid Host value; llhttp does not parse values", None),
    ("origdst", "repeated Host header", "RFC 9112 section 3.2, as above", None),
    ("origdst", "malformed request target",
     "a fragment, or a target not in origin-form outside CONNECT and OPTIONS (RFC 9112 "
     "sections 3.2.1 to 3.2.4); llhttp accepts any URL shape", None),
    ("origdst", "malformed request line",
     "origdst splits the request line on single spaces only and does not speak HTTP/0.9; "
     "llhttp skips repeated spaces and reads 'GET /' without a version as HTTP/0.9", None),
    ("origdst", "malformed status line",
     "a line end before a status line: RFC 9112 section 2.2 lets a server skip empty lines "
     "before a request line, not a client before a status line, where they are the tail of a "
     "desynchronised connection; llhttp skips them", _starts_with_line_end),
    ("origdst", "control character in reason phrase",
     "RFC 9112 section 4: reason-phrase = 1*( HTAB / SP / VCHAR / obs-text ); llhttp skips it",
     None),
    ("origdst", "invalid chunk extension",
     "RFC 9112 section 7.1.1: chunk-ext-val = token / quoted-string, so an empty value is "
     "invalid; llhttp accepts 'name='", None),
    ("origdst", "Transfer-Encoding in an HTTP/1.0 request",
     "RFC 9112 section 6.1: HTTP/1.0 framing with Transfer-Encoding is faulty", None),
    ("origdst", "malformed Transfer-Encoding",
     "an empty list element or chunked twice: RFC 9110 section 5.6.1 lets a recipient skip "
     "empty elements, but origdst refuses any Transfer-Encoding that the next hop could read "
     "another way (request smuggling); llhttp skips them", None),
    ("origdst", "unsupported transfer coding",
     "origdst forwards no coding but chunked (501); llhttp only frames the body", None),
    ("origdst", "Transfer-Encoding does not end in chunked",
     "a response whose codings do not end in chunked runs to the close (RFC 9112 section "
     "6.3), as llhttp reads it; origdst cannot re-frame codings it does not decode: 502", None),
    # llhttp refuses, origdst accepts.
    ("llhttp", "Invalid method encountered",
     "llhttp knows only registered methods; RFC 9110 section 9.1 allows any token", None),
    ("llhttp", "Expected space after method", "an unregistered method, as above", None),
    ("llhttp", "Duplicate Content-Length",
     "RFC 9112 section 6.3 allows identical repeated lengths; origdst accepts them", None),
    ("llhttp", "Invalid character in Content-Length",
     "RFC 9112 section 6.3 allows a list of identical lengths ('5, 5'); origdst accepts it",
     None),
    ("llhttp", "Invalid character in chunk size",
     "RFC 9112 section 7.1.1 allows BWS before ';' (chunk-ext = *( BWS \";\" ...)); llhttp "
     "refuses it without its lenient flag", None),
    ("llhttp", "Invalid character in chunk extensions",
     "BWS around ';' and '=' in chunk extensions, as above", None),
    # llhttp refuses at once, origdst when the head ends.
    ("later", "",
     "origdst checks field lines in one pass once the head is complete (the hot path's "
     "speed); llhttp checks byte by byte. Only a bare CR or LF, which may keep a head from "
     "ever ending, is refused before; the wait is bounded by the request-headers timeout "
     "and the head size limit", _refused_once_head_ends),
]


def _listed(side, reason, data, response):
    for who, text, why, when in DIFFERENCES:
        if who == side and text in reason and (when is None or when(data, response)):
            return why
    return None


class DifferentialTests(unittest.TestCase):
    """
    origdst and llhttp accept and refuse the same messages, and parse the
    ones both accept the same way, but for the listed differences.
    """

    if NO_HTTPTOOLS:
        skip = NO_HTTPTOOLS

    def compare(self, data, response=False):
        ours = origdst_outcome([data], response)
        theirs = llhttp_outcome(data, response)
        if ours[0] == theirs[0] == "refused":
            return
        if ours[0] == "refused" and _listed("origdst", ours[1], data, response):
            return
        if theirs[0] == "refused":
            if _listed("llhttp", theirs[1], data, response):
                return
            if ours[0] == "incomplete" and _listed("later", "", data, response):
                return
        ours = _comparable(ours)
        theirs = (theirs[0], theirs[1] if theirs[0] == "ok" else None)
        self.assertEqual(ours, theirs, "origdst and llhttp differ on %r" % (data,))

    @fuzz(200, requests)
    def test_valid_requests(self, message):
        self.compare(message[0])

    @fuzz(200, responses)
    def test_valid_responses(self, message):
        self.compare(message[0], response=True)

    @fuzz(300, mutated_requests)
    def test_mutated_requests(self, data):
        self.compare(data)

    @fuzz(300, mutated_responses)
    def test_mutated_responses(self, data):
        self.compare(data, response=True)

    @fuzz(1000, chunk_lines)
    def test_chunk_lines(self, data):
        self.compare(data)

    @fuzz(1000, field_lines)
    def test_field_lines(self, data):
        self.compare(data)

    @fuzz(1000, request_lines)
    def test_request_lines(self, data):
        self.compare(data)

    def test_table_is_needed(self):
        """
        Every listed difference is one llhttp really has: each example below
        is refused by one side with the listed reason and accepted by the
        other.
        """
        h = b"Host: h\r\n"
        chunked = b"POST / HTTP/1.1\r\n" + h + b"Transfer-Encoding: chunked\r\n\r\n"
        examples = {
            "missing Host header": b"GET / HTTP/1.1\r\n\r\n",
            "malformed Host header": b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            "repeated Host header": b"GET / HTTP/1.1\r\n" + h + h + b"\r\n",
            "malformed request target": b"GET /#f HTTP/1.1\r\n" + h + b"\r\n",
            "control character in reason phrase": b"HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n",
            "invalid chunk extension": chunked + b"5;a=\r\nhello\r\n0\r\n\r\n",
            "Transfer-Encoding in an HTTP/1.0 request":
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "unsupported transfer coding":
                b"POST / HTTP/1.1\r\n" + h + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "malformed Transfer-Encoding":
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding:, chunked\r\n\r\n0\r\n\r\n",
            "malformed request line": b"GET  / HTTP/1.1\r\n" + h + b"\r\n",
            "malformed status line": b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            "Transfer-Encoding does not end in chunked":
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",
            "": b"GET / HTTP/1.1\r\n" + h + b"\x00\r\n",
            "Invalid method encountered": b"FOO / HTTP/1.1\r\n" + h + b"\r\n",
            "Expected space after method": b"PUTT / HTTP/1.1\r\n" + h + b"\r\n",
            "Duplicate Content-Length":
                b"POST / HTTP/1.1\r\n" + h + b"Content-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            "Invalid character in Content-Length":
                b"POST / HTTP/1.1\r\n" + h + b"Content-Length: 1, 1\r\n\r\nx",
            "Invalid character in chunk size": chunked + b"5 ;a\r\nhello\r\n0\r\n\r\n",
            "Invalid character in chunk extensions": chunked + b"5; a\r\nhello\r\n0\r\n\r\n",
        }
        self.assertEqual(sorted(examples), sorted(text for _, text, _, _ in DIFFERENCES))
        for who, text, _, when in DIFFERENCES:
            data = examples[text]
            response = data.startswith((b"HTTP/", b"\r\nHTTP/"))
            ours = origdst_outcome([data], response)
            theirs = llhttp_outcome(data, response)
            if who == "later":
                self.assertEqual((ours[0], theirs[0]), ("incomplete", "refused"), (ours, theirs))
                self.assertTrue(when(data, response))
                continue
            refused, accepted = (ours, theirs) if who == "origdst" else (theirs, ours)
            self.assertEqual(refused[0], "refused", (text, ours, theirs))
            self.assertIn(text, refused[1], (text, ours, theirs))
            self.assertIn(accepted[0], ("ok", "incomplete"), (text, ours, theirs))
            if when is not None:
                self.assertTrue(when(data, response), text)
