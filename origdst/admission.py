"""
Whether a parsed request head is forwarded, and how.

L{Admission.admit} is a pure decision: given a request head and what is known
of its connection, it returns an L{Admitted} request (where it goes, its
framing, the head to send upstream) or a L{Refused} one (the local reply, and
the log line that says why). It touches no transport, timer or pool, so it is
tested without a reactor; the client connection acts on the answer.
"""

from twisted.logger import LogLevel

from origdst import framing, heads, replies
from origdst.addresses import describe, host_header, host_port, is_ip, parse_authority, server_name
from origdst.headers import request_head, via_names, wants_close, wants_upgrade
from origdst.readers import parse_ports

HTTP11 = b"HTTP/1.1"

# Requests that may be sent again when a reused connection turns out to have
# been closed by the server before it answered (RFC 9110 section 9.2.2).
IDEMPOTENT = frozenset([b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"])


class Admitted:
    """
    A request to forward.

    @ivar parsed: C{(method, target, version, fields)} as the client sent
        them, for the access log.
    @ivar target: the origin-form target sent upstream.
    @ivar destination: C{(ip, port)} it goes to.
    @ivar kind: its body's framing (L{framing.NONE}, ...), C{length} its
        Content-Length.
    @ivar upgrade: the protocol it asks to switch to, or C{None}.
    @ivar upstream_head: the head to send upstream.
    @ivar close_after: the client asked to close after the response.
    @ivar replayable: safe to send again on a fresh connection.
    @ivar expect_continue: the client waits for C{100 Continue}.
    @ivar tls_name: the name its upstream TLS connection is verified for
        (C{--originate-tls}), or C{None} for plain HTTP upstream.
    """

    __slots__ = (
        "parsed",
        "method",
        "target",
        "version",
        "destination",
        "kind",
        "length",
        "upgrade",
        "upstream_head",
        "close_after",
        "replayable",
        "expect_continue",
        "tls_name",
    )


class Refused:
    """
    A request answered by the proxy itself.

    @ivar parsed: as for L{Admitted}, or C{None} when the head could not be
        parsed.
    @ivar reply: the L{origdst.replies.Reply}.
    @ivar method: the request's method as the reply sees it (a C{HEAD} is
        answered with the head alone); C{GET} for a rejected request.
    @ivar level: the L{LogLevel} of C{note}, the log line saying why (without
        the connection's tag), or C{None} when there is nothing to log.
    """

    __slots__ = ("parsed", "reply", "method", "level", "note")

    def __init__(self, parsed, reply, method=b"GET", level=None, note=None):
        self.parsed = parsed
        self.reply = reply
        self.method = method
        self.level = level
        self.note = note


def absolute_target(target, destination):
    """
    Turn an absolute-form target (C{http://host/path}, as proxy-aware clients
    send) into origin-form. The request still goes to its original
    destination, so an authority that names another IP address or port is
    refused rather than silently ignored; a name is not resolved, only made
    the Host header (RFC 9112 section 3.2.2).

    @return: C{(origin-form target, authority)}.
    @raise framing.BadMessage: for a malformed or disagreeing authority.
    """
    rest = target[7:]
    end = len(rest)
    for i, c in enumerate(rest):
        if c in (0x2F, 0x3F):  # "/" or "?"
            end = i
            break
    authority, path = rest[:end], rest[end:]
    parsed = parse_authority(authority) if authority and b"@" not in authority else None
    if parsed is None:
        raise framing.BadMessage(400, "malformed absolute-form target")
    host, port = parsed
    if is_ip(host) and (host, port) != tuple(destination):
        raise framing.BadMessage(
            400, "absolute-form target disagrees with the original destination"
        )
    if not path.startswith(b"/"):
        path = b"/" + path
    return path, authority


def rejection(error, peer):
    """
    @return: the L{Refused} answer to a request that broke the protocol or a
        limit (a L{framing.BadMessage}): the body is Envoy's, the status's
        reason phrase; what was wrong goes to the log and the details.
    """
    return Refused(
        None,
        replies.refused(error.status, error.reason),
        level=LogLevel.info,
        note=f"rejected a request from {describe(peer)}: {error}.",
    )


class Admission:
    """
    The rules of one listener: its settings and egress policy.
    """

    def __init__(self, settings, policy):
        self.settings = settings
        self.policy = policy
        self.prefix = settings.header_prefix.encode("ascii")
        self.override = self.prefix + b"-original-dst-host"
        self.timeout_ms = int(settings.request_timeout * 1000)
        self.max_count = settings.max_request_headers_count
        self.originate = parse_ports(settings.originate_tls) if settings.originate_tls else ()
        # RFC 9110 section 7.6.3: "1.1 name", the protocol being HTTP/1.1.
        self.via_name = settings.via.lower().encode("ascii") if settings.via else None
        self.via = b"1.1 " + settings.via.encode("ascii") if settings.via else None

    def admit(self, head, destination, refusal, peer, own_upstream):
        """
        @param head: the request head, without its final empty line.
        @param destination: the connection's original destination, or
            C{None} when C{refusal} (a L{origdst.replies.Reply}) says why
            there is none.
        @param peer: the client's C{(ip, port)}.
        @param own_upstream: the client is one of the proxy's own upstream
            connections (a redirect loop).
        @return: an L{Admitted} or a L{Refused}.
        """
        parsed = None
        routed = destination
        try:
            method, target, version, fields = heads.parse_request_head(head)
            parsed = (method, target, version, fields)
            if len(fields) > self.max_count:
                raise framing.BadMessage(431, "too many request headers")
            index = heads.index(fields)
            kind, length = framing.request_framing(index, version)
            hosts = index.get(b"host", ())
            heads.check_host(hosts)
            if version == HTTP11 and not hosts:
                raise framing.BadMessage(400, "missing Host header")
            upgrade = wants_upgrade(method, version, index)
            if refusal is None:
                routed = self.route(index, destination)
                if target[0] != 0x2F and target[:7].lower() == b"http://":  # not "/"
                    target, authority = absolute_target(target, routed)
                    # The authority replaces Host where it stands (RFC 9112
                    # section 3.2.2), or comes first when there was none.
                    if hosts:
                        fields = [(n, authority) if n.lower() == b"host" else (n, v) for n, v in fields]
                    else:
                        fields.insert(0, (b"Host", authority))
                    index[b"host"] = [authority]
        except framing.BadMessage as e:
            refused = rejection(e, peer)
            refused.parsed = parsed
            return refused
        if refusal is not None:
            return Refused(parsed, refusal, method)
        policy = self.policy
        if own_upstream or (self.via is not None and b"via" in index and self.via_loop(index)):
            note = self.loop(index, destination, peer, own_upstream)
            return Refused(parsed, replies.REDIRECT_LOOP, method, LogLevel.warn, note)
        ip, port = routed
        denied = policy.destination_denied(ip, port) or policy.host_denied(
            index.get(b"host", (b"",))[0]
        )
        if denied:
            note = "%s %s from %s to %s refused: %s." % (
                method.decode("latin-1"),
                target.decode("latin-1"),
                describe(peer),
                host_port(ip, port),
                denied,
            )
            return Refused(parsed, replies.EGRESS_DENIED, method, LogLevel.info, note)
        tls_name = None
        if port in self.originate:
            host = index.get(b"host", (None,))[0]
            tls_name = server_name(host, ip)
            if tls_name is None:
                # The Host header is ASCII without quotes (abnf.HOST).
                why = 'Host "%s" is neither a DNS name nor an IP address' % host.decode("ascii")
                note = "%s to %s refused: %s, so TLS cannot be originated for it." % (
                    method.decode("latin-1"), host_port(ip, port), why)
                reply = replies.tls_failure("unverifiable name", why)
                return Refused(parsed, reply, method, LogLevel.info, note)
        # Admitted: build the head it goes upstream with.
        if kind == framing.CHUNKED:
            frame = b"transfer-encoding: chunked\r\n"
        elif kind == framing.LENGTH:
            frame = b"content-length: %d\r\n" % length
        else:
            frame = b""
        if upgrade and method != b"CONNECT":
            # A CONNECT asks for a tunnel by its method (RFC 9110 section
            # 9.3.6), not by Upgrade.
            frame += b"connection: upgrade\r\nupgrade: " + upgrade + b"\r\n"
        if b"host" in index:
            host = b""
        elif method == b"CONNECT":
            host = target
        else:
            host = host_header(ip, port)
        request = Admitted()
        request.parsed = parsed
        request.method = method
        request.target = target
        request.version = version
        request.destination = routed
        request.kind = kind
        request.length = length
        request.upgrade = upgrade
        request.tls_name = tls_name
        request.upstream_head = request_head(
            method, target, fields, index, host, self.prefix, self.timeout_ms, frame,
            self.via,
        )
        request.close_after = wants_close(version, index)
        # Bodies are streamed, not kept, so only a request without one (or
        # with an empty one) can be sent again; an Idempotency-Key marks any
        # method as safe to repeat.
        empty = kind == framing.NONE or (kind == framing.LENGTH and not length)
        request.replayable = empty and (method in IDEMPOTENT or b"idempotency-key" in index)
        request.expect_continue = (
            kind != framing.NONE
            and version == HTTP11
            and b"100-continue" in (v.lower() for v in index.get(b"expect", ()))
        )
        return request

    def route(self, index, destination):
        """
        @return: where the request goes: the original destination, or with
            C{--use-original-dst-header} the one its header names.
        @raise framing.BadMessage: for an unusable override header.
        """
        if self.settings.use_original_dst_header:
            values = index.get(self.override)
            if values:
                override = parse_authority(values[0], None)
                if (
                    len(values) > 1
                    or override is None
                    or override[1] is None
                    or not is_ip(override[0])
                ):
                    raise framing.BadMessage(
                        400, f"invalid {self.settings.header_prefix}-original-dst-host header"
                    )
                return override
        return destination

    def loop(self, index, destination, peer, own_upstream):
        """
        Whether this request is the proxy talking to itself: it comes from one
        of the proxy's own upstream connections (a REDIRECT rule without the
        owner match), or already carries this proxy's C{--via} name (it went
        round through something else).

        @return: the log line naming the likely cause, or C{None}.
        """
        if own_upstream:
            return (
                "redirect loop: the connection comes from origdst's own "
                "upstream connection to %s; the iptables rule lacks the "
                "owner match (-m owner ! --uid-owner <origdst's uid>). Answering 508."
                % describe(destination)
            )
        if self.via is not None and self.via_loop(index):
            return (
                "redirect loop: a request from %s to %s has already "
                "passed through this proxy (its Via names %s); check the iptables rules and "
                "any proxy it was forwarded through. Answering 508."
                % (describe(peer), describe(destination), self.via_name.decode("ascii"))
            )
        return None

    def via_loop(self, index):
        """
        Whether the request's Via already names this proxy.
        """
        return self.via_name in via_names(index[b"via"])
