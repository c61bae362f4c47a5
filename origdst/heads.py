"""
Message heads (RFC 9112 sections 2 to 5): start lines and field lines.

The first half of the strict HTTP/1.1 parser; L{origdst.framing} builds body
framing on it and is what the rest of origdst imports. (Rewriting the fields
at the proxy is L{origdst.headers}'s.) Each check quotes the sentence of RFC
9112 or RFC 9110 it enforces; the grammar itself is in L{origdst.abnf}. Where
the RFC leaves a choice, origdst takes the strict one: a line ends with CRLF
only, so a bare LF or CR anywhere in a head is refused at once, never read as
a line end nor waited on.
"""

from origdst.abnf import BAD_TARGET, BAD_VALUE, FIELD_LINE, HOST, HTTP_VERSION, STATUS_CODE, TOKEN

HEAD_END = b"\r\n\r\n"
MAX_REQUEST_LINE = 16 * 1024
_VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")


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
        # RFC 9112 section 5.1: "A server MUST reject, with a response status
        # code of 400 (Bad Request), any received request message that contains
        # whitespace between a header field name and colon." Section 5.2: a
        # server "MUST either reject the message" with an obs-fold "by sending
        # a 400 (Bad Request)" or unfold it; a folded line has no name.
        if colon < 1 or not TOKEN.match(name):
            raise BadMessage(400, "malformed header field")
        value = line[colon + 1 :].strip(b" \t")
        if BAD_VALUE.search(value):
            raise BadMessage(400, "control character in header value")
        fields.append((name, value))
    return fields


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
    fields = FIELD_LINE.findall(block)
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
    # RFC 9112 section 3: "A server that receives a request-target longer
    # than any URI it wishes to parse MUST respond with a 414 (URI Too Long)
    # status code".
    if len(line) > MAX_REQUEST_LINE:
        raise BadMessage(414, "request line too long")
    # RFC 9112 section 3: "request-line = method SP request-target SP
    # HTTP-version"; recipients "MAY instead parse on whitespace-delimited
    # word boundaries": origdst does not.
    parts = line.split(b" ")
    if len(parts) != 3:
        raise BadMessage(400, "malformed request line")
    method, target, version = parts
    # RFC 9110 section 9.1: "method = token".
    if not TOKEN.match(method):
        raise BadMessage(400, "malformed method")
    if not target or BAD_TARGET.search(target):
        raise BadMessage(400, "malformed request target")
    # RFC 9112 section 3.2.3: "The authority-form of request-target is only
    # used for CONNECT requests"; section 3.2.4: "The asterisk-form of
    # request-target is only used for a server-wide OPTIONS request".
    if not (
        target[0] == 0x2F  # "/": origin-form
        or target[:7].lower() == b"http://"  # absolute-form
        or (target == b"*" and method == b"OPTIONS")  # asterisk-form
        or method == b"CONNECT"  # authority-form
    ):
        raise BadMessage(400, "malformed request target")
    if version not in _VERSIONS:
        # RFC 9110 section 15.6.6: "The 505 (HTTP Version Not Supported)
        # status code indicates that the server does not support, or refuses
        # to support, the major version of HTTP that was used in the request
        # message".
        if HTTP_VERSION.match(version):
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
    # RFC 9112 section 4: "status-line = HTTP-version SP status-code SP [
    # reason-phrase ]"; a missing second SP is tolerated, since "A client
    # SHOULD ignore the reason-phrase content".
    parts = (head if end < 0 else head[:end]).split(b" ", 2)
    if len(parts) < 2 or parts[0] not in _VERSIONS or not STATUS_CODE.match(parts[1]):
        raise BadMessage(502, "malformed status line")
    status = int(parts[1])
    # RFC 9110 section 15: "All valid status codes are within the range of
    # 100 to 599, inclusive." (A 0xx would pass for a 1xx.)
    if not 100 <= status <= 599:
        raise BadMessage(502, "invalid status code")
    reason = parts[2] if len(parts) == 3 else b""
    # RFC 9112 section 4: "reason-phrase = 1*( HTAB / SP / VCHAR / obs-text )".
    if BAD_VALUE.search(reason):
        raise BadMessage(502, "control character in reason phrase")
    try:
        fields = parse_block(head, len(head) if end < 0 else end + 2)
    except BadMessage as e:
        raise BadMessage(502, e.reason)
    return parts[0], status, reason, fields


def check_host(values):
    """
    @param values: the Host values of a request.
    @raise BadMessage: unless there is at most one, of C{host[:port]} form.
    """
    # RFC 9112 section 3.2: "A server MUST respond with a 400 (Bad Request)
    # status code to any HTTP/1.1 request message that lacks a Host header
    # field and to any request message that contains more than one Host
    # header field line or a Host header field with an invalid field value."
    if len(values) > 1:
        raise BadMessage(400, "repeated Host header")
    if values and not HOST.match(values[0]):
        raise BadMessage(400, "malformed Host header")


def check_line_ends(buf, status=400, what="request head"):
    """
    Refuse a head in progress that holds a bare LF or CR, rather than wait for
    a CRLF CRLF that may never come (a mix of CRLF and LF line ends).

    RFC 9112 section 2.2: "a recipient MAY recognize a single LF as a line
    terminator": origdst does not, as two parsers that disagree on where a
    line ends disagree on the message. "A recipient of such a bare CR MUST
    consider that element to be invalid or replace each bare CR with SP".

    @param buf: the head so far; a CR as its last byte may yet get its LF.
    @raise BadMessage: with C{status}.
    """
    crlf = buf.count(b"\r\n")
    if buf.count(b"\n") != crlf:
        raise BadMessage(status, "bare LF in " + what)
    if buf.count(b"\r") != crlf + (buf[-1:] == b"\r"):
        raise BadMessage(status, "bare CR in " + what)


def check_incomplete_response_head(buf):
    """
    Refuse a response head that is not complete yet but can never become a
    valid one: one that starts with a line end (refused as a malformed status
    line once it ends, so refused so at once, whatever else it holds), or
    holds a bare LF or CR (L{check_line_ends}).

    @raise BadMessage: 502.
    """
    if buf[:1] in (b"\r", b"\n"):
        raise BadMessage(502, "malformed status line")
    check_line_ends(buf, 502, "response head")


def check_incomplete_head(buf, max_head):
    """
    Refuse a request head that is not complete yet but can never become a
    valid one, rather than wait for more.

    @raise BadMessage: for a request line over L{MAX_REQUEST_LINE} (414), a
        head over C{max_head} bytes (431), or a bare LF or CR (400, see
        L{check_line_ends}).
    """
    line_end = buf.find(b"\r\n")
    if (line_end < 0 and len(buf) > MAX_REQUEST_LINE) or line_end > MAX_REQUEST_LINE:
        raise BadMessage(414, "request line too long")
    # RFC 9110 section 5.4: "A server that receives a request header field
    # line, field value, or set of fields larger than it wishes to process
    # MUST respond with an appropriate 4xx (Client Error) status code."
    if len(buf) > max_head:
        raise BadMessage(431, "request headers too large")
    if buf:
        check_line_ends(buf)
