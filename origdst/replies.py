"""
The catalogue of the replies origdst sends itself.

Each L{Reply} carries what the client is sent (status, body), and what the
access log says of it: Envoy's response flag (C{%RESPONSE_FLAGS%}) and
response code details (C{%RESPONSE_CODE_DETAILS%}). The listener, the pools,
the exchange and the access log all name replies from here, so rewording a
body never changes a flag.

This module is a leaf: it imports no sibling.
"""

from http.client import responses

RESET_PREFIX = b"upstream connect error or disconnect/reset before headers. reset reason: "


class Reply:
    """
    One kind of local reply.

    @ivar status: the HTTP status.
    @ivar body: the C{text/plain} body, in Envoy's words where Envoy has one.
    @ivar flags: Envoy's response flag, C{-} when Envoy has none.
    @ivar details: the response code details.
    @ivar reason: for a reply caused by the upstream, the reset reason its
        log line names (C{connection failure}), else C{None}.
    @ivar overloaded: the reply carries C{<prefix>-overloaded: true}.
    """

    __slots__ = ("status", "body", "flags", "details", "reason", "overloaded")

    def __init__(self, status, body, flags, details, reason=None, overloaded=False):
        self.status = status
        self.body = body
        self.flags = flags
        self.details = details
        self.reason = reason
        self.overloaded = overloaded

    def __repr__(self):
        return "<Reply %d %s>" % (self.status, self.details)

    def ending(self, retried=False):
        """
        @param retried: the request was already sent again once (a reused
            connection had been closed), so a failure now also means the
            retry limit was reached (Envoy's C{URX}).
        @return: C{(flags, details)} for the access log.
        """
        if retried and self.flags in ("UF", "UC"):
            return self.flags + ",URX", self.details
        return self.flags, self.details

    def render(self, server, extra=b"", close=True, head_only=False):
        """
        @param server: the C{server} header's value.
        @param extra: more header lines, each with its CRLF.
        @param head_only: the answer to a C{HEAD}: the head alone.
        @return: the reply as bytes, in Envoy's plain-text form.
        """
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-length: %d\r\ncontent-type: text/plain\r\n"
            b"server: %s\r\n%s%s\r\n"
            % (
                self.status,
                phrase(self.status),
                len(self.body),
                server,
                extra,
                b"connection: close\r\n" if close else b"",
            )
        )
        return head if head_only else head + self.body


def phrase(status):
    """
    @return: the reason phrase of C{status}, as bytes.
    """
    return responses.get(status, "Unknown").encode("ascii")


def _slug(text):
    return "_".join(text.lower().replace("-", " ").split()) or "codec_error"


def _reset(status, reason, flags, **kw):
    return Reply(
        status,
        RESET_PREFIX + reason.encode("ascii"),
        flags,
        "upstream_reset_before_response_started{%s}" % _slug(reason),
        reason=reason,
        **kw,
    )


def tls_failure(kind, why=""):
    """
    The reply to a request whose originated TLS connection failed
    (L{origdst.origination}): Envoy's connect failure with its transport
    failure reason, C{TLS error: <kind>: <why>}. The body says why (the name
    that did not match, the chain error); the details name only the kind,
    so that they stay a short list to count by.

    @param kind: what failed: C{certificate verify failed}, C{handshake
        failed}, C{unverifiable name}.
    @param why: the particulars, ASCII (the caller quotes what came from
        the network).
    """
    reason = "connection failure, transport failure reason: TLS error: " + kind
    if why:
        reason += ": " + why
    return Reply(
        503,
        RESET_PREFIX + reason.encode("ascii", "backslashreplace"),
        "UF",
        "upstream_reset_before_response_started{connection_failure,tls_error:_%s}" % _slug(kind),
        reason=reason,
    )


def refused(status, why):
    """
    The reply to a request that cannot be handled (a framing error, a
    header limit): the status's reason phrase as body, Envoy's C{DPE} flag,
    and what was wrong in the details.

    @param why: what was wrong, for the details (C{http1.<why>}).
    """
    return Reply(status, phrase(status), "DPE", "http1." + _slug(why))


# Connections that are not proxied (the listener).
NO_HEALTHY_UPSTREAM = Reply(503, b"no healthy upstream", "UH", "no_healthy_upstream")
REDIRECT_LOOP = Reply(508, b"redirect loop detected", "-", "redirect_loop_detected")
SOURCE_DENIED = Reply(
    403, b"source not allowed to use this proxy", "-", "source_not_allowed"
)

# Requests that are not forwarded (admission); Envoy has no flag for these.
EGRESS_DENIED = Reply(
    403, b"destination denied by egress policy", "-", "egress_policy_denied"
)

# Timeouts (the client connection and the exchange).
REQUEST_TIMEOUT = Reply(504, b"upstream request timeout", "UT", "response_timeout")
STREAM_TIMEOUT = Reply(408, b"stream timeout", "SI", "stream_idle_timeout")
HEADERS_TIMEOUT = Reply(408, b"request headers timeout", "-", "request_header_timeout")

# No response from the upstream (the pool and the exchange).
CONNECT_FAILURE = _reset(503, "connection failure", "UF")
CONNECT_TIMEOUT = _reset(503, "connection timeout", "UF")
OVERFLOW = _reset(503, "overflow", "UO", overloaded=True)
CONNECTION_TERMINATION = _reset(503, "connection termination", "UC")
PROTOCOL_ERROR = _reset(502, "protocol error", "UPE")
# An originated TLS connection that failed (their bodies say more; see tls_failure).
TLS_VERIFY_FAILED = tls_failure("certificate verify failed")
TLS_HANDSHAKE_FAILED = tls_failure("handshake failed")
TLS_UNVERIFIABLE_NAME = tls_failure("unverifiable name")

CATALOGUE = (
    NO_HEALTHY_UPSTREAM,
    REDIRECT_LOOP,
    SOURCE_DENIED,
    EGRESS_DENIED,
    REQUEST_TIMEOUT,
    STREAM_TIMEOUT,
    HEADERS_TIMEOUT,
    CONNECT_FAILURE,
    CONNECT_TIMEOUT,
    OVERFLOW,
    CONNECTION_TERMINATION,
    PROTOCOL_ERROR,
    TLS_VERIFY_FAILED,
    TLS_HANDSHAKE_FAILED,
    TLS_UNVERIFIABLE_NAME,
)
