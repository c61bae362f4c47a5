"""
The HTTP/1.1 grammar as compiled patterns, each beside the rule it encodes.

RFC 9110 (HTTP semantics) and RFC 9112 (HTTP/1.1) define these rules in ABNF;
L{origdst.framing} applies them. Kept apart, as h11's C{_abnf.py} does, so a
reader can hold each pattern against its rule. Every pattern is anchored and
matched once per element: the parser's speed comes from doing its checks in
C, never byte by byte in Python.
"""

import re

# RFC 9110 section 5.6.2:
#   token = 1*tchar
#   tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
#           "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
TOKEN = re.compile(TCHAR + rb"+\Z")

# RFC 9110 section 5.5: "Field values containing CR, LF, or NUL characters
# are invalid and dangerous [...]; a recipient of CR, LF, or NUL within a
# field value MUST either reject the message or replace each of those
# characters with SP". "Field values containing other CTL characters are also
# invalid". HTAB is allowed inside a value; obs-text (%x80-FF) is kept.
BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

# RFC 9112 section 5:
#   field-line = field-name ":" OWS field-value OWS
# RFC 9110 section 5.5:
#   field-value   = *field-content
#   field-content = field-vchar [ 1*( SP / HTAB / field-vchar ) field-vchar ]
# One valid field line from the start of a line, its value without the OWS
# around it. A match cannot leave its line (a value holds no CR or LF), so a
# block whose every line matches has exactly one match per LF.
FIELD_LINE = re.compile(
    rb"^(" + TCHAR + rb"+):[ \t]*"
    rb"((?:[^\x00-\x08\x0a-\x1f\x7f]*[^\x00-\x08\x0a-\x1f\x7f \t])?)[ \t]*\r\n",
    re.M,
)

# RFC 9112 section 3.2.1: "origin-form = absolute-path [ "?" query ]"; "a
# client MUST send only the absolute path and query components of the target
# URI as the request-target", so no fragment; RFC 3986's path and query hold
# no controls, spaces or non-ASCII.
BAD_TARGET = re.compile(rb"[\x00-\x20\x7f-\xff#]")

# RFC 9110 section 7.2: "Host = uri-host [ ":" port ]", uri-host being RFC
# 3986's host: an IP-literal in brackets or a reg-name (unreserved,
# pct-encoded, sub-delims), no userinfo.
HOST = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(:[0-9]{0,5})?\Z")

# RFC 9112 section 2.3:
#   HTTP-version = HTTP-name "/" DIGIT "." DIGIT
#   HTTP-name    = %s"HTTP"
HTTP_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]\Z")

# RFC 9112 section 4: "status-code = 3DIGIT".
STATUS_CODE = re.compile(rb"[0-9]{3}\Z")

# RFC 9110 section 5.6.4:
#   quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE
#   qdtext        = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
#   quoted-pair   = "\" ( HTAB / SP / VCHAR / obs-text )
QUOTED_STRING = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'

# RFC 9112 section 7.1:
#   chunk      = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
#   chunk-size = 1*HEXDIG
#   last-chunk = 1*("0") [ chunk-ext ] CRLF
# "Recipients MUST anticipate potentially large hexadecimal numerals and
# prevent parsing errors due to integer conversion overflows or precision loss
# due to integer representation": at most 16 digits, 64 bits.
CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}\Z")

# RFC 9112 section 7.1.1:
#   chunk-ext      = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
#   chunk-ext-name = token
#   chunk-ext-val  = token / quoted-string
# RFC 9110 section 5.6.3: "BWS = OWS", "OWS = *( SP / HTAB )". A whole size
# line (without its CRLF), the size in group 1.
CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[ \t]*%s+(?:[ \t]*=[ \t]*(?:%s+|%s))?)*\Z"
    % (TCHAR, TCHAR, QUOTED_STRING)
)
