"""
Header rewriting at the proxy, in both directions.

Hop-by-hop fields describe one connection, not the message, so they are
dropped and the proxy frames each side itself; the rest passes in order and
with its case.
"""

import os
import re

# RFC 9110 section 7.6.1, plus the non-standard ones clients still send.
# Content-Length and Transfer-Encoding are re-framed by the proxy.
HOP_BY_HOP = frozenset(
    [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    ]
)


# A request id worth propagating: visible ASCII, no spaces, of a sane length
# (not an RFC rule: an id goes into logs and upstream heads as it is).
_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}\Z")


def connection_options(index):
    """
    @param index: a message's L{origdst.heads.index}.
    @return: the lower-case names listed in its Connection fields.
    """
    # RFC 9110 section 7.6.1: "Connection = #connection-option",
    # "connection-option = token"; "Intermediaries MUST parse a received
    # Connection header field before a message is forwarded and, for each
    # connection-option in this field, remove any header or trailer field(s)
    # from the message with the same name as the connection-option". A list
    # element is trimmed of OWS (RFC 9110 section 5.6.1); an empty one is
    # ignored as it names no field.
    options = index.get(_OPTIONS)
    if options is None:
        values = index.get(b"connection")
        if not values:
            options = _NONE
        elif len(values) == 1 and b"," not in values[0]:
            options = frozenset((values[0].strip(b" \t").lower(),))
        else:
            options = frozenset(
                [token.strip(b" \t").lower() for value in values for token in value.split(b",")]
            )
        index[_OPTIONS] = options
    return options


# Where connection_options keeps its answer in the index: not a field name,
# since ":" is not a token character.
_OPTIONS = b":connection-options"
_NONE = frozenset()


def wants_close(version, index):
    """
    Whether the sender of a message asked for its connection to end after it.
    """
    options = connection_options(index)
    # RFC 9112 section 9.3: "If the "close" connection option is present [...],
    # the connection will not persist after the current response; else, If the
    # received protocol is HTTP/1.1 (or later), the connection will persist";
    # an HTTP/1.0 one persists only with the "keep-alive" option.
    if version == b"HTTP/1.0":
        return b"keep-alive" not in options
    return b"close" in options


def wants_upgrade(method, version, index):
    """
    @return: the protocol a request asks to switch to (its Upgrade value,
        or C{CONNECT} for a tunnel), or C{None}.
    """
    if method == b"CONNECT":
        return b"CONNECT"
    # RFC 9110 section 7.8: "A sender of Upgrade MUST also send an "Upgrade"
    # connection option in the Connection header field"; "A server MUST ignore
    # an Upgrade header field that is received in an HTTP/1.0 request."
    protocols = index.get(b"upgrade")
    if protocols and version == b"HTTP/1.1" and b"upgrade" in connection_options(index):
        return protocols[0]
    return None


def _copy(out, fields, drop):
    extend = out.extend
    for name, value in fields:
        if name.lower() not in drop:
            extend((name, b": ", value, b"\r\n"))


def request_id(index):
    """
    @return: the client's x-request-id when it is a valid one, so ids
        propagate through the proxy; else a new uuid4.
    """
    values = index.get(b"x-request-id")
    if values and _REQUEST_ID.match(values[0]):
        return values[0]
    return new_request_id()


_ids = []


def new_request_id():
    """
    @return: a random (version 4) UUID in its text form. Ids are made 128 at
        a time from one read of random bytes: one system call and one hex
        conversion per batch instead of per id.
    """
    if not _ids:
        h = os.urandom(2048).hex().encode("ascii")
        _ids.extend(
            b"%s-%s-4%s-%s%s-%s"
            % (
                h[i : i + 8],
                h[i + 8 : i + 12],
                h[i + 13 : i + 16],
                _VARIANT[h[i + 16]],
                h[i + 17 : i + 20],
                h[i + 20 : i + 32],
            )
            for i in range(0, len(h), 32)
        )
    return _ids.pop()


# The variant bits of a UUID (10xx) in the first hex digit of its 4th group.
_VARIANT = {ord(c): b"89ab"[int(c, 16) & 3 : (int(c, 16) & 3) + 1] for c in "0123456789abcdef"}


# The fields a rewritten head never copies, whatever its Connection options
# add, per header prefix: made once, not per message.
_request_drops = {}
_response_drops = {}


def _request_drop(prefix):
    drop = _request_drops.get(prefix)
    if drop is None:
        drop = _request_drops[prefix] = HOP_BY_HOP | {
            b"x-forwarded-proto",
            b"x-request-id",
            prefix + b"-expected-rq-timeout-ms",
            prefix + b"-original-dst-host",
        }
    return drop


def _response_drop(prefix):
    drop = _response_drops.get(prefix)
    if drop is None:
        drop = _response_drops[prefix] = HOP_BY_HOP | {b"server", prefix + b"-upstream-service-time"}
    return drop


def with_via(fields, index, via):
    """
    RFC 9110 section 7.6.3: "a proxy MUST send an appropriate Via header
    field, as described below, in each message that it forwards"; "Each
    member of the Via header field value represents a proxy or gateway that
    has forwarded the message", "in the order" it was forwarded: this hop's
    member goes last, after those that came with the message.

    @param via: this proxy's member, e.g. C{b"1.1 egress-a"}.
    @return: C{fields} without their Via, and the Via field line to send.
    """
    came = index.get(b"via")
    if not came:
        return fields, b"via: " + via + b"\r\n"
    fields = [(n, v) for n, v in fields if n.lower() != b"via"]
    return fields, b"via: " + b", ".join(came) + b", " + via + b"\r\n"


def via_names(values):
    """
    @return: the lower-case received-by names of Via field values
        (C{Via = #( received-protocol RWS received-by [ RWS comment ] )}).
    """
    names = []
    for value in values:
        for member in value.split(b","):
            parts = member.split()
            if len(parts) >= 2:
                names.append(parts[1].lower())
    return names


def _forwarded(fields, index, drop, via):
    """
    What both directions do before copying a message's fields: drop also
    the ones its Connection header names, and take its Via out to resend.

    @return: C{(fields, drop, via)}, C{via} the Via field line or C{None}.
    """
    options = connection_options(index)
    if options:
        drop = drop | options
    if via is not None:
        fields, via = with_via(fields, index, via)
    return fields, drop, via


def request_head(method, target, fields, index, host, prefix, timeout_ms, framing, via=None):
    """
    The head sent upstream for a client's request.

    The proxy's own request headers (the original-destination override) are
    never forwarded as the client sent them; nothing but Envoy's documented
    headers is added, and Via only when asked for (no header that tells one
    host's requests apart from another's).

    @param host: the C{Host} value to add when the client sent none
        (HTTP/1.0), since HTTP/1.1 upstream requires one.
    @param prefix: the lower-case header prefix, e.g. C{b"x-envoy"}.
    @param timeout_ms: the route timeout in ms, or 0 when there is none.
    @param framing: the framing field line, e.g. C{b"content-length: 5\\r\\n"}.
    @param via: this proxy's Via member (C{--via}), or C{None}.
    @return: the head as bytes, with its final empty line.
    """
    timeout_name = prefix + b"-expected-rq-timeout-ms"
    fields, drop, via = _forwarded(fields, index, _request_drop(prefix), via)
    out = [method + b" " + target + b" HTTP/1.1\r\n"]
    _copy(out, fields, drop)
    if b"host" not in index:
        out.append(b"host: " + host + b"\r\n")
    out.append(b"x-forwarded-proto: http\r\n")
    out.append(b"x-request-id: " + request_id(index) + b"\r\n")
    if timeout_ms:
        out.append(timeout_name + b": %d\r\n" % timeout_ms)
    if via is not None:
        out.append(via)
    out.append(framing)
    out.append(b"\r\n")
    return b"".join(out)


def response_head(status, reason, fields, index, server, prefix, service_ms, framing, via=None):
    """
    The head sent to the client for an upstream response.

    @param server: the C{server} value, replacing the upstream's.
    @param service_ms: ms from sending the request upstream to the response
        head, or C{None} to add no C{<prefix>-upstream-service-time}.
    @param framing: framing and connection field lines, already formatted.
    @param via: this proxy's Via member (C{--via}), or C{None}.
    @return: the head as bytes, with its final empty line.
    """
    service_name = prefix + b"-upstream-service-time"
    fields, drop, via = _forwarded(fields, index, _response_drop(prefix), via)
    out = [b"HTTP/1.1 %d " % status + reason + b"\r\n"]
    _copy(out, fields, drop)
    if via is not None:
        out.append(via)
    out.append(b"server: " + server + b"\r\n")
    if service_ms is not None:
        out.append(service_name + b": %d\r\n" % service_ms)
    out.append(framing)
    out.append(b"\r\n")
    return b"".join(out)


# Fields that describe framing or routing have no place in trailers, where a
# later parser might act on them. RFC 9110 section 6.5.1: "Many fields cannot
# be processed outside the header section because their evaluation is
# necessary prior to receiving the content, such as those that describe
# message framing, routing, authentication, request modifiers, response
# controls, or content format."
_NOT_TRAILERS = HOP_BY_HOP | {
    b"host", b"trailer", b"content-encoding", b"content-type", b"content-range",
    b"authorization", b"proxy-authorization", b"cookie", b"set-cookie",
}


def forwardable_trailers(fields):
    """
    @return: the trailer fields worth forwarding.
    """
    return [(n, v) for n, v in fields if n.lower() not in _NOT_TRAILERS]


def informational_head(status, reason, fields, index):
    """
    The head of a 1xx response passed to the client (e.g. 100 Continue).
    """
    out = [b"HTTP/1.1 %d " % status + reason + b"\r\n"]
    _copy(out, fields, HOP_BY_HOP | connection_options(index))
    out.append(b"\r\n")
    return b"".join(out)
