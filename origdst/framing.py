"""
HTTP/1.1 message framing (RFC 9112 sections 6 and 7): body lengths and the
chunked coding, on the heads of L{origdst.heads}.

One strict, incremental parser serves both sides of the proxy: the requests
clients send and the responses servers return. It never holds a whole body:
L{BodyReader} hands each piece on as it arrives. Each check quotes the
sentence of RFC 9112 or RFC 9110 it enforces (the grammar is in
L{origdst.abnf}); a bare LF or CR in chunk framing is refused at once, as in
a head.
"""

from origdst.abnf import CHUNK_LINE, CHUNK_SIZE
from origdst.heads import BadMessage, parse_fields

# What a body's length is given by (RFC 9112 section 6.3).
NONE = "none"  # no body at all
LENGTH = "length"  # Content-Length bytes
CHUNKED = "chunked"  # the chunked transfer coding
CLOSE = "close"  # everything until the connection closes (responses only)
MAX_CHUNK_LINE = 4096
MAX_TRAILERS = 60 * 1024


def content_length(values, status=400):
    """
    @param values: every Content-Length value of a message.
    @return: the length they agree on.
    @raise BadMessage: for a non-number or disagreeing values.
    """
    # RFC 9110 section 8.6: "Content-Length = 1*DIGIT". RFC 9112 section 6.3:
    # an invalid Content-Length is "an unrecoverable error, unless the field
    # value can be successfully parsed as a comma-separated list [...], all
    # values in the list are valid, and all values in the list are the same".
    # At most 18 digits: no overflow, and no length anyone can send.
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
    # RFC 9112 section 6.1: "A sender MUST NOT apply the chunked transfer
    # coding more than once to a message body".
    if not all(codings) or codings.count(b"chunked") > 1:
        raise BadMessage(status, "malformed Transfer-Encoding")
    # RFC 9112 section 6.3: "If a Transfer-Encoding header field is present in
    # a request and the chunked transfer coding is not the final encoding, [...]
    # the server MUST respond with the 400 (Bad Request) status code". (A
    # response could run to the close, but the proxy could not re-frame it.)
    if codings[-1] != b"chunked":
        raise BadMessage(status, "Transfer-Encoding does not end in chunked")
    # RFC 9112 section 6.1: "A server that receives a request message with a
    # transfer coding it does not understand SHOULD respond with 501 (Not
    # Implemented)."
    # (Codings below chunked would be forwarded as they are; nobody sends them.)
    raise BadMessage(501 if status == 400 else status, "unsupported transfer coding")


def request_framing(headers, version=b"HTTP/1.1"):
    """
    How the body of a request is delimited.

    @param headers: the request's L{origdst.heads.index}.
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
        # RFC 9112 section 6.3: "If a message is received with both a
        # Transfer-Encoding and a Content-Length header field, [...] Such a
        # message might indicate an attempt to perform request smuggling [...]
        # and ought to be handled as an error."
        if cl is not None:
            raise BadMessage(400, "both Transfer-Encoding and Content-Length")
        # RFC 9112 section 6.1: "A server or client that receives an HTTP/1.0
        # message containing a Transfer-Encoding header field MUST treat the
        # message as if the framing is faulty".
        if version != b"HTTP/1.1":
            raise BadMessage(400, "Transfer-Encoding in an HTTP/1.0 request")
        _is_chunked(te, 400)
        return CHUNKED, 0
    if cl is not None:
        return LENGTH, content_length(cl)
    # RFC 9112 section 6.3: "If this is a request message and none of the
    # above are true, then the message body length is zero".
    return NONE, 0


def response_framing(method, status, headers):
    """
    How the body of a response is delimited (RFC 9112 section 6.3).

    @param method: the request's method, since a response to HEAD has no body.
    @param headers: the response's L{origdst.heads.index}.
    @return: C{(kind, length)}.
    @raise BadMessage: with status 502 for a response that cannot be framed.
    """
    # RFC 9112 section 6.3: "Any response to a HEAD request and any response
    # with a 1xx (Informational), 204 (No Content), or 304 (Not Modified)
    # status code is always terminated by the first empty line after the
    # header fields"; "Any 2xx (Successful) response to a CONNECT request
    # implies that the connection will become a tunnel immediately after the
    # empty line that concludes the header fields."
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
    # RFC 9112 section 6.3: "Otherwise, this is a response message without a
    # declared message body length, so the message body length is determined
    # by the number of octets received prior to the server closing the
    # connection."
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

    def consumed(self, n):
        """
        Count C{n} bytes of a C{LENGTH} body that went by without L{feed}
        (L{origdst.rawcopy} moved them).
        """
        self.remaining -= n
        if not self.remaining:
            self.done = True

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
                # RFC 9112 section 7.1: "chunk = chunk-size [ chunk-ext ] CRLF
                # chunk-data CRLF"; anything but a CR is refused at once.
                if data[pos : pos + 2] != b"\r\n":
                    if end - pos == 1 and data[pos] == 0x0D:
                        break
                    raise BadMessage(400, "missing CRLF after chunk data")
                pos += 2
                self._state = "size"
            else:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    # RFC 9112 section 7.1.1: "A server ought to limit the
                    # total length of chunk extensions received in a request
                    # to an amount reasonable for the services provided".
                    limit = MAX_CHUNK_LINE if state == "size" else MAX_TRAILERS
                    if end - pos > limit:
                        raise BadMessage(400, "chunk size line or trailers too long")
                    # No CRLF yet: any LF is bare, and any CR but a last byte.
                    if data.find(b"\n", pos) >= 0:
                        raise BadMessage(400, "bare LF in chunked body")
                    if 0 <= data.find(b"\r", pos) < end - 1:
                        raise BadMessage(400, "bare CR in chunked body")
                    break
                line = data[pos:eol]
                pos = eol + 2
                if state == "size":
                    # RFC 9112 section 7.1.1, as abnf.CHUNK_LINE; "A recipient
                    # MUST ignore unrecognized chunk extensions": checked, and
                    # not forwarded (the proxy re-chunks the body).
                    match = CHUNK_LINE.match(line)
                    if match is None:
                        if CHUNK_SIZE.match(line.split(b";", 1)[0]):
                            raise BadMessage(400, "invalid chunk extension")
                        raise BadMessage(400, "invalid chunk size")
                    self.remaining = int(match.group(1), 16)
                    self._state = "data" if self.remaining else "trailers"
                elif line:
                    # RFC 9112 section 7.1.2: "trailer-section = *( field-line
                    # CRLF )", with the header section's rules.
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
