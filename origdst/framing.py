"""
HTTP/1.1 message framing (RFC 9112): heads, body lengths, chunked coding.

One strict, incremental parser serves both sides of the proxy: the requests
clients send and the responses servers return. It never holds a whole body:
L{BodyReader} hands each piece on as it arrives.
"""

import re

HEAD_END = b"\r\n\r\n"

# What a body's length is given by (RFC 9112 section 6.3).
NONE = "none"  # no body at all
LENGTH = "length"  # Content-Length bytes
CHUNKED = "chunked"  # the chunked transfer coding
CLOSE = "close"  # everything until the connection closes (responses only)

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# Controls, spaces, non-ASCII and fragments have no place in a request target.
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f-\xff#]")
_HOST = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(:[0-9]{0,5})?\Z")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}\Z")
_STATUS = re.compile(rb"[0-9]{3}\Z")
_VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")
_HTTP_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]\Z")

MAX_CHUNK_LINE = 4096
MAX_REQUEST_LINE = 16 * 1024
MAX_TRAILERS = 60 * 1024


class BadMessage(Exception):
    """
    A message that cannot be framed or forwarded safely.

    @ivar status: the status a client should get for it (400, 431, 501, 505, ...).
    @ivar reason: a short, log-friendly description.
    """

    def __init__(self, status, reason):
        Exception.__init__(self, status, reason)
        self.status = status
        self.reason = reason

    def __str__(self):
        return f"{self.status} {self.reason}"


def parse_fields(lines):
    """
    Parse header field lines.

    @param lines: the lines between the start line and the empty line.
    @return: a list of C{(name, value)} in order, names as sent.
    @raise BadMessage: for a line that is not C{token ":" OWS value OWS}; this
        also rejects obsolete line folding and whitespace before the colon.
    """
    fields = []
    for line in lines:
        colon = line.find(b":")
        name = line[:colon]
        if colon < 1 or not _TOKEN.match(name):
            raise BadMessage(400, "malformed header field")
        value = line[colon + 1 :].strip(b" \t")
        if _BAD_VALUE.search(value):
            raise BadMessage(400, "control character in header value")
        fields.append((name, value))
    return fields


# One valid field line, from the start of a line, with its value stripped of
# surrounding whitespace. A match cannot leave its line (values hold no CR or
# LF), so a block whose every line matches has exactly one match per LF: one
# pass in C instead of a loop in Python.
_FIELD = re.compile(
    rb"^([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*"
    rb"((?:[^\x00-\x08\x0a-\x1f\x7f]*[^\x00-\x08\x0a-\x1f\x7f \t])?)[ \t]*\r\n",
    re.M,
)


def parse_block(head, start):
    """
    Parse the field lines of a head.

    @param head: a head without its final empty line.
    @param start: where the field lines begin.
    @return: a list of C{(name, value)}, as L{parse_fields}.
    @raise BadMessage: as L{parse_fields}.
    """
    if start >= len(head):
        return []
    block = head[start:] + b"\r\n"
    fields = _FIELD.findall(block)
    if len(fields) == block.count(b"\n"):
        return fields
    return parse_fields(head[start:].split(b"\r\n"))


def index(fields):
    """
    @return: a dict from lower-case field name to the list of its values.
    """
    result = {}
    for name, value in fields:
        key = name.lower()
        if key in result:
            result[key].append(value)
        else:
            result[key] = [value]
    return result


def parse_request_head(head):
    """
    Parse a request head (without its final empty line).

    @return: C{(method, target, version, fields)}.
    @raise BadMessage: for anything malformed.
    """
    end = head.find(b"\r\n")
    line = head if end < 0 else head[:end]
    if len(line) > MAX_REQUEST_LINE:
        raise BadMessage(414, "request line too long")
    parts = line.split(b" ")
    if len(parts) != 3:
        raise BadMessage(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN.match(method):
        raise BadMessage(400, "malformed method")
    if not target or _BAD_TARGET.search(target):
        raise BadMessage(400, "malformed request target")
    if not (
        target[0] == 0x2F  # "/": origin-form
        or target[:7].lower() == b"http://"  # absolute-form
        or (target == b"*" and method == b"OPTIONS")  # asterisk-form
        or method == b"CONNECT"  # authority-form
    ):
        raise BadMessage(400, "malformed request target")
    if version not in _VERSIONS:
        if _HTTP_VERSION.match(version):
            raise BadMessage(505, "unsupported HTTP version")
        raise BadMessage(400, "malformed HTTP version")
    return method, target, version, parse_block(head, len(head) if end < 0 else end + 2)


def parse_response_head(head):
    """
    Parse a response head (without its final empty line).

    @return: C{(version, status, reason, fields)} with C{status} an int.
    @raise BadMessage: for anything malformed.
    """
    end = head.find(b"\r\n")
    parts = (head if end < 0 else head[:end]).split(b" ", 2)
    if len(parts) < 2 or parts[0] not in _VERSIONS or not _STATUS.match(parts[1]):
        raise BadMessage(502, "malformed status line")
    reason = parts[2] if len(parts) == 3 else b""
    if _BAD_VALUE.search(reason):
        raise BadMessage(502, "control character in reason phrase")
    try:
        fields = parse_block(head, len(head) if end < 0 else end + 2)
    except BadMessage as e:
        raise BadMessage(502, e.reason)
    return parts[0], int(parts[1]), reason, fields


def check_host(values):
    """
    @param values: the Host values of a request.
    @raise BadMessage: unless there is at most one, of C{host[:port]} form.
    """
    if len(values) > 1:
        raise BadMessage(400, "repeated Host header")
    if values and not _HOST.match(values[0]):
        raise BadMessage(400, "malformed Host header")


def check_incomplete_head(buf, max_head):
    """
    Refuse a request head that is not complete yet but can never become a
    valid one, rather than wait for more.

    @raise BadMessage: for a request line over L{MAX_REQUEST_LINE} (414), a
        head over C{max_head} bytes (431), or a head ended by bare LFs (400).
    """
    line_end = buf.find(b"\r\n")
    if (line_end < 0 and len(buf) > MAX_REQUEST_LINE) or line_end > MAX_REQUEST_LINE:
        raise BadMessage(414, "request line too long")
    if len(buf) > max_head:
        raise BadMessage(431, "request headers too large")
    if b"\n\n" in buf:
        # The end of a head written with bare LFs: it would never complete.
        raise BadMessage(400, "bare LF in request head")


def content_length(values, status=400):
    """
    @param values: every Content-Length value of a message.
    @return: the length they agree on.
    @raise BadMessage: for a non-number or disagreeing values.
    """
    if len(values) == 1:
        value = values[0]
        if value.isdigit() and len(value) <= 18:
            return int(value)
    lengths = set()
    for value in values:
        for item in value.split(b","):
            item = item.strip(b" \t")
            if not item.isdigit() or len(item) > 18:
                raise BadMessage(status, "invalid Content-Length")
            lengths.add(int(item))
    if len(lengths) != 1:
        raise BadMessage(status, "conflicting Content-Length values")
    return lengths.pop()


def _is_chunked(values, status):
    codings = [c.strip(b" \t").lower() for v in values for c in v.split(b",")]
    if codings == [b"chunked"]:
        return True
    if not all(codings) or codings.count(b"chunked") > 1:
        raise BadMessage(status, "malformed Transfer-Encoding")
    if codings[-1] != b"chunked":
        raise BadMessage(status, "Transfer-Encoding does not end in chunked")
    # Other codings below chunked would have to be forwarded as they are; no
    # client or server sends them in practice.
    raise BadMessage(501 if status == 400 else status, "unsupported transfer coding")


def request_framing(headers, version=b"HTTP/1.1"):
    """
    How the body of a request is delimited.

    @param headers: the request's L{index}.
    @param version: the request's version; HTTP/1.0 knows no
        Transfer-Encoding, so one there is refused.
    @return: C{(kind, length)}; C{length} is only meaningful for L{LENGTH}.
    @raise BadMessage: for ambiguous framing, which is what request smuggling
        is made of: both Transfer-Encoding and Content-Length, several
        different lengths, an unknown coding.
    """
    te = headers.get(b"transfer-encoding")
    cl = headers.get(b"content-length")
    if te is not None:
        if cl is not None:
            raise BadMessage(400, "both Transfer-Encoding and Content-Length")
        if version != b"HTTP/1.1":
            raise BadMessage(400, "Transfer-Encoding in an HTTP/1.0 request")
        _is_chunked(te, 400)
        return CHUNKED, 0
    if cl is not None:
        return LENGTH, content_length(cl)
    return NONE, 0


def response_framing(method, status, headers):
    """
    How the body of a response is delimited (RFC 9112 section 6.3).

    @param method: the request's method, since a response to HEAD has no body.
    @param headers: the response's L{index}.
    @return: C{(kind, length)}.
    @raise BadMessage: with status 502 for a response that cannot be framed.
    """
    if method == b"HEAD" or status < 200 or status in (204, 304):
        return NONE, 0
    if method == b"CONNECT" and status < 300:
        return NONE, 0
    te = headers.get(b"transfer-encoding")
    cl = headers.get(b"content-length")
    if te is not None:
        if cl is not None:
            raise BadMessage(502, "both Transfer-Encoding and Content-Length")
        _is_chunked(te, 502)
        return CHUNKED, 0
    if cl is not None:
        return LENGTH, content_length(cl, 502)
    return CLOSE, 0


class BodyReader:
    """
    Decode one message body as it arrives.

    @ivar done: the body is complete.
    @ivar trailers: the trailer fields of a chunked body, once done.
    """

    __slots__ = ("kind", "remaining", "done", "trailers", "_on_data", "_state", "_buf")

    def __init__(self, kind, length, on_data):
        """
        @param kind: L{NONE}, L{LENGTH}, L{CHUNKED} or L{CLOSE}; an empty
            body is done at once.
        @param length: the length, for L{LENGTH}.
        @param on_data: called with each piece of decoded body data.
        """
        self.kind = kind
        self.remaining = length
        self.done = kind == NONE or (kind == LENGTH and not length)
        self.trailers = []
        self._on_data = on_data
        self._state = "size"
        self._buf = b""

    def feed(self, data):
        """
        Decode what arrived.

        @return: the bytes after the end of the body (the next message), or
            C{b""}.
        @raise BadMessage: for a malformed chunked body.
        """
        if self.done or not data:
            return data
        kind = self.kind
        if kind == LENGTH:
            remaining = self.remaining
            if len(data) < remaining:
                self.remaining = remaining - len(data)
                self._on_data(data)
                return b""
            self.remaining = 0
            self.done = True
            if len(data) == remaining:
                self._on_data(data)
                return b""
            self._on_data(data[:remaining])
            return data[remaining:]
        if kind == CHUNKED:
            return self._feed_chunked(data)
        self._on_data(data)
        return b""

    def _feed_chunked(self, data):
        if self._buf:
            data = self._buf + data
            self._buf = b""
        pos = 0
        end = len(data)
        while pos < end:
            state = self._state
            if state == "data":
                take = min(self.remaining, end - pos)
                self._on_data(data[pos : pos + take] if take < end or pos else data)
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self._state = "data-end"
            elif state == "data-end":
                if end - pos < 2:
                    break
                if data[pos : pos + 2] != b"\r\n":
                    raise BadMessage(400, "missing CRLF after chunk data")
                pos += 2
                self._state = "size"
            else:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    limit = MAX_CHUNK_LINE if state == "size" else MAX_TRAILERS
                    if end - pos > limit:
                        raise BadMessage(400, "chunk size line or trailers too long")
                    if data.find(b"\n", pos) >= 0:
                        raise BadMessage(400, "bare LF in chunked body")
                    break
                line = data[pos:eol]
                pos = eol + 2
                if state == "size":
                    size = line.split(b";", 1)[0].rstrip(b" \t")
                    if not _CHUNK_SIZE.match(size):
                        raise BadMessage(400, "invalid chunk size")
                    self.remaining = int(size, 16)
                    self._state = "data" if self.remaining else "trailers"
                elif line:
                    self.trailers.extend(parse_fields([line]))
                    if len(self.trailers) > 100:
                        raise BadMessage(400, "too many trailer fields")
                else:
                    self.done = True
                    return data[pos:]
        if pos < end:
            self._buf = data[pos:]
        return b""


def encode_chunk(data):
    """
    @return: the pieces of one chunk carrying C{data}, for C{writeSequence}.
    """
    return [b"%x\r\n" % len(data), data, b"\r\n"]


def last_chunk(trailers=()):
    """
    @return: the bytes that end a chunked body, with its trailer fields.
    """
    return b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in trailers) + b"\r\n"
