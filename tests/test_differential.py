"""
The differential check: the same requests sent to the backend directly and
through origdst must give the same results, apart from the rewrites origdst
documents (README, "What origdst does to a request").

Two copies of testbed/backend.py run in namespace S: one on port 80, which the
REDIRECT rule sends through the proxy, and one on port 8080, which the rule
leaves alone. The unprivileged client sends each case's bytes once to each,
on a connection of its own, and both sides are compared: what the client got
(status, reason, headers, body) and, for C{/echo}, what the backend saw
(method, target, version, header fields in order and case, body length and
hash). L{documented} is the one place that says what may differ.

The proxy also writes its access log, checked for one line per request.
"""

import hashlib
import json
import os
import re
import signal
import time

import testbed
from tests.helpers import ENVOY_LINE

PROXY_PORT = 15003
PROXIED_PORT = 80
DIRECT_PORT = 8080
HOST = testbed.SERVER_V4
#: The proxy's request timeout, advertised upstream in milliseconds.
REQUEST_TIMEOUT_MS = "15000"

PROXY_ARGS = ["--port", "tcp:%d" % PROXY_PORT, "--log-level", "info"]

KIB = 1024
MIB = 1024 * 1024
#: ASCII, and no power of two long, so shifted or dropped bytes change the hash.
UNIT = b"origdst-differential-0123456789abcdefghijklmnopqrstuvwxyz!"

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
VALID_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")


def body(size):
    return (UNIT * (size // len(UNIT) + 1))[:size]


def chunked(data, sizes=(1000,), trailers=(), extension=b""):
    """
    C{data} in the chunked coding, in chunks of the given sizes (the last
    repeated), then the trailer fields.
    """
    out = []
    pos = 0
    sizes = list(sizes)
    while pos < len(data):
        size = sizes.pop(0) if len(sizes) > 1 else sizes[0]
        piece = data[pos:pos + size]
        out.append(b"%x%s\r\n%s\r\n" % (len(piece), extension, piece))
        pos += size
    out.append(b"0\r\n")
    out.extend(name + b": " + value + b"\r\n" for name, value in trailers)
    out.append(b"\r\n")
    return b"".join(out)


def request(method=b"GET", target=b"/echo", headers=(), data=None, version=b"HTTP/1.1",
            host=True, te=None, close=False):
    """
    The bytes of one request: the request line, C{Host} first (unless
    C{host} is false), C{headers} as given, then the framing of C{data}:
    C{Content-Length}, or with C{te} (already chunked bytes) C{Transfer-Encoding}.
    """
    lines = [b"%s %s %s" % (method, target, version)]
    if host:
        lines.append(b"Host: " + HOST.encode("ascii"))
    lines.extend(name + b": " + value for name, value in headers)
    if close:
        lines.append(b"Connection: close")
    payload = b""
    if te is not None:
        lines.append(b"Transfer-Encoding: chunked")
        payload = te
    elif data is not None:
        lines.append(b"Content-Length: %d" % len(data))
        payload = data
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


class Case:
    """
    One connection's worth of requests, sent in one write (so several are
    pipelined); the last closes the connection so nobody waits for a timeout.

    @ivar compare: how many responses to compare (all by default).
    """

    def __init__(self, name, *requests, compare=None):
        self.name = name
        self.requests = requests
        self.compare = compare

    @property
    def raw(self):
        return b"".join(self.requests)

    def methods(self):
        return [r.split(b" ", 1)[0] for r in self.requests]


def get(target=b"/echo", headers=(), **kw):
    return request(b"GET", target, headers, close=True, **kw)


CASES = [
    # Methods.
    Case("get", get()),
    Case("get-query", get(b"/echo?a=1&b=two&c=%20x&d=%2F&e=a+b")),
    Case("get-empty-query", get(b"/echo?")),
    Case("get-long-target", get(b"/echo?q=" + b"x" * 8000)),
    Case("head-status", request(b"HEAD", b"/status?code=200", close=True)),
    Case("head-bytes", request(b"HEAD", b"/bytes?n=1000", close=True)),
    Case("head-chunked", request(b"HEAD", b"/chunked?n=3&size=10", close=True)),
    Case("post-empty", request(b"POST", data=b"", close=True)),
    Case("post-1", request(b"POST", data=b"x", close=True)),
    Case("post-64k", request(b"POST", data=body(64 * KIB), close=True)),
    Case("post-1m", request(b"POST", data=body(MIB), close=True)),
    Case("put", request(b"PUT", data=body(1000), close=True)),
    Case("patch", request(b"PATCH", headers=[(b"Content-Type", b"application/json")],
                          data=b'{"a": 1}', close=True)),
    Case("delete", request(b"DELETE", b"/echo?id=7", close=True)),
    Case("delete-with-body", request(b"DELETE", data=b"why", close=True)),
    Case("options", request(b"OPTIONS", b"/echo", close=True)),
    Case("options-asterisk", request(b"OPTIONS", b"*", close=True)),
    Case("extension-method", request(b"PURGE", b"/echo", close=True)),
    # Request framings.
    Case("chunked-0", request(b"POST", te=chunked(b""), close=True)),
    Case("chunked-1", request(b"POST", te=chunked(b"x"), close=True)),
    Case("chunked-64k",
         request(b"POST", te=chunked(body(64 * KIB), (1, 10, 4096, 7777)), close=True)),
    Case("chunked-1m", request(b"POST", te=chunked(body(MIB), (65536,)), close=True)),
    Case("chunked-trailers", request(
        b"POST", headers=[(b"Trailer", b"X-Checksum")],
        te=chunked(b"hello world", (5,), [(b"X-Checksum", b"abc")]), close=True)),
    Case("chunked-extensions",
         request(b"POST", te=chunked(b"abcdef", (2,), extension=b";x=y"), close=True)),
    Case("content-length-leading-zeros", request(
        b"POST", headers=[(b"Content-Length", b"005")], te=None, close=True) + b"hello"),
    Case("put-1m-echoed", request(b"PUT", b"/body", data=body(MIB), close=True)),
    Case("post-chunked-echoed",
         request(b"POST", b"/body", te=chunked(body(100 * KIB), (3000,)), close=True)),
    # Odd but legal headers.
    Case("repeated-headers", get(headers=[(b"X-Dup", b"1"), (b"X-Other", b"a"), (b"X-Dup", b"2"),
                                          (b"x-dup", b"3")])),
    Case("header-case", get(headers=[(b"x-MiXeD-CaSe", b"v"), (b"ACCEPT", b"*/*"),
                                     (b"user-agent", b"diff/1.0")])),
    Case("long-header-value", get(headers=[(b"X-Long", b"v" * 16000)])),
    Case("many-headers", get(headers=[(b"X-H%02d" % i, b"%d" % i) for i in range(90)])),
    Case("utf8-value", get(headers=[(b"X-Utf8", "h\u00e9llo \u2603 \U0001f600".encode("utf-8"))])),
    Case("obs-text-value", get(headers=[(b"X-Obs", b"\x80\xfe\xff caf\xe9")])),
    Case("empty-value", get(headers=[(b"X-Empty", b""), (b"X-After", b"1")])),
    Case("whitespace-around-value", get(headers=[(b"X-Space", b"\t  padded  \t")])),
    Case("tab-inside-value", get(headers=[(b"X-Tab", b"a\tb")])),
    Case("colons-in-value", get(headers=[(b"X-Colon", b"a:b::c"), (b"Cookie", b"a=1"),
                                         (b"Cookie", b"b=2")])),
    Case("quotes-and-commas", get(headers=[(b"X-Quoted", b'"a, b", c; q=0.5')])),
    Case("expect-continue", request(b"POST", headers=[(b"Expect", b"100-continue")],
                                    data=b"continued", close=True)),
    Case("host-with-port", request(b"GET", b"/echo", [(b"Host", HOST.encode() + b":80")],
                                   host=False, close=True)),
    Case("host-not-first", request(
        b"GET", b"/echo", [(b"Accept", b"*/*"), (b"hOsT", HOST.encode())], host=False, close=True)),
    # Rewritten headers.
    Case("hop-by-hop", request(headers=[
        (b"Connection", b"X-Hop, close"), (b"X-Hop", b"1"), (b"Keep-Alive", b"timeout=5"),
        (b"Proxy-Connection", b"keep-alive"), (b"TE", b"trailers"), (b"X-End", b"kept")])),
    Case("forwarded-proto", get(headers=[(b"X-Forwarded-Proto", b"https")])),
    Case("request-id-kept", get(headers=[(b"X-Request-Id", b"client-id-123")])),
    Case("request-id-invalid", get(headers=[(b"X-Request-Id", b"x" * 200)])),
    Case("expected-timeout-replaced", get(headers=[(b"X-Envoy-Expected-Rq-Timeout-Ms", b"1")])),
    # Versions and connection management.
    Case("http10", request(version=b"HTTP/1.0")),
    Case("http10-no-host", request(version=b"HTTP/1.0", host=False)),
    Case("http10-post", request(b"POST", data=body(5000), version=b"HTTP/1.0")),
    Case("http10-keep-alive",
         request(version=b"HTTP/1.0", headers=[(b"Connection", b"keep-alive")]),
         request(b"GET", b"/echo?second", version=b"HTTP/1.0"),
         # The backend itself closes HTTP/1.0 connections after one response;
         # the proxy keeps the client's open, as asked (hop-by-hop).
         compare=1),
    Case("http10-chunked-response", request(b"GET", b"/chunked?n=4&size=100", version=b"HTTP/1.0")),
    Case("absolute-form", get(b"http://" + HOST.encode() + b"/echo?abs=1", [(b"X-After", b"1")])),
    Case("absolute-form-other-host", request(
        b"GET", b"http://" + HOST.encode() + b"/echo",
        [(b"X-Before", b"1"), (b"Host", b"example.com"), (b"X-After", b"2")],
        host=False, close=True)),
    Case("pipelined", request(b"GET", b"/echo?n=1"), request(b"GET", b"/bytes?n=10"),
         request(b"GET", b"/echo?n=3", close=True)),
    Case("pipelined-bodies", request(b"POST", data=b"first"),
         request(b"PUT", te=chunked(b"second", (3,))), request(b"GET", b"/echo?n=3", close=True)),
    Case("pipelined-errors", request(b"GET", b"/missing"), request(b"GET", b"/status?code=500"),
         request(b"GET", b"/echo", close=True)),
    # Responses.
    Case("not-found", get(b"/missing")),
    Case("server-error", get(b"/status?code=500")),
    Case("created", request(b"POST", b"/status?code=201", data=b"x", close=True)),
    Case("no-content", request(b"DELETE", b"/status?code=204", close=True)),
    Case("not-modified", get(b"/status?code=304", [(b"If-None-Match", b'"abc"')])),
    Case("response-headers", get(b"/status?code=200&h=Set-Cookie:a=1&h=X-Resp:x&h=Set-Cookie:b=2"
                                 b"&h=Cache-Control:no-cache,%20private&h=X-Empty:")),
    Case("chunked-response", get(b"/chunked?n=5&size=1000")),
    Case("chunked-response-small-pieces", get(b"/chunked?n=50&size=1")),
    Case("large-response", get(b"/bytes?n=%d" % MIB)),
    Case("empty-response", get(b"/bytes?n=0")),
]


class Response:
    """
    One response as the client read it.
    """

    def __init__(self, version, status, reason, headers, body, trailers=()):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.trailers = list(trailers)

    def values(self, name):
        return [v for n, v in self.headers if n.lower() == name]


def parse_responses(data, methods):
    """
    Split what a connection received into responses, 1xx ones included.

    @param methods: the methods of the requests, to know which responses
        have no body.
    @return: C{(responses, leftover bytes)}.
    """
    responses = []
    answered = 0
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        version, status = parts[0], int(parts[1])
        reason = parts[2] if len(parts) > 2 else b""
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name, value.strip(b" \t")))
        response = Response(version, status, reason, headers, b"")
        lower = {n.lower(): v for n, v in headers}
        method = methods[answered] if answered < len(methods) else b"GET"
        if status < 200:
            pass
        elif method == b"HEAD" or status in (204, 304):
            answered += 1
        elif lower.get(b"transfer-encoding", b"").lower() == b"chunked":
            pieces = []
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    break
                pieces.append(rest[:size])
                rest = rest[size + 2:]
            while True:
                line, _, rest = rest.partition(b"\r\n")
                if not line:
                    break
                name, _, value = line.partition(b":")
                response.trailers.append((name, value.strip()))
            response.body = b"".join(pieces)
            answered += 1
        elif b"content-length" in lower:
            size = int(lower[b"content-length"])
            response.body, rest = rest[:size], rest[size:]
            answered += 1
        else:
            response.body, rest = rest, b""
            answered += 1
        responses.append(response)
        data = rest
    return responses, data


# -- What origdst is documented to change ------------------------------------------------

#: Hop-by-hop fields (RFC 9110 section 7.6.1): never forwarded as they came.
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade",
              b"transfer-encoding", b"content-length"}
#: Request fields origdst sets itself, replacing any the client sent.
PROXY_REQUEST_FIELDS = {b"x-forwarded-proto", b"x-request-id",
                        b"x-envoy-expected-rq-timeout-ms"}
#: Fields that would tell one host's requests from another's: origdst adds none by default.
FINGERPRINT_FIELDS = (b"x-origdst-loop", b"via")
#: Response fields that depend on the hop or the moment.
HOP_RESPONSE_FIELDS = HOP_BY_HOP | {b"date", b"server", b"x-envoy-upstream-service-time"}


def _listed(headers):
    """
    The names a message's Connection fields list (they are hop-by-hop too).
    """
    return {token.strip().lower() for name, value in headers if name.lower() == b"connection"
            for token in value.split(b",")}


def documented(side, sent, backend_view, response, problems):
    """
    The observations of one side with the differences origdst documents
    taken out, so the two sides must then be equal. For the proxied side,
    the documented rewrites are checked here too, each failure added to
    C{problems}:

      - requests go upstream as HTTP/1.1, an absolute-form target as its
        path with its authority as Host, and an HTTP/1.0 request without
        Host gets one naming the original destination;
      - hop-by-hop fields (Connection and the names it lists, Keep-Alive,
        Proxy-Connection, TE, Upgrade) are removed; Content-Length and
        Transfer-Encoding are replaced by origdst's own framing of the same
        body;
      - x-forwarded-proto is http, x-request-id the client's valid one or a
        new uuid4 and x-envoy-expected-rq-timeout-ms the route timeout, each
        replacing what the client sent, and nothing else added (no loop
        marker, no Via);
      - responses are HTTP/1.1 with server: origdst and
        x-envoy-upstream-service-time (ms); Date, and the framing and
        connection fields, are per hop.

    @param side: C{"direct"} or C{"proxied"}.
    @param sent: the raw request.
    @param backend_view: the backend's C{/echo} report, or C{None}.
    @return: a comparable summary.
    """
    via_proxy = side == "proxied"
    summary = {}
    if backend_view is not None:
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in backend_view["headers"]]
        uri = backend_view["uri"]
        if uri.startswith("http://"):
            # Absolute-form: the path, and the authority as Host.
            authority, _, path = uri[7:].partition("/")
            uri = "/" + path
            headers = [(n, authority.encode("latin-1") if n.lower() == b"host" else v)
                       for n, v in headers]
        drop = HOP_BY_HOP | _listed(headers) | PROXY_REQUEST_FIELDS
        if via_proxy:
            added = {n.lower(): v for n, v in headers if n.lower() in PROXY_REQUEST_FIELDS}
            sent_id = [v for n, v in _request_fields(sent) if n.lower() == b"x-request-id"]
            sent_id = sent_id[0].decode("latin-1") if sent_id else ""
            got_id = added.get(b"x-request-id", b"").decode("latin-1")
            checks = [
                (added.get(b"x-forwarded-proto") == b"http", "x-forwarded-proto is not http"),
                (added.get(b"x-envoy-expected-rq-timeout-ms") == REQUEST_TIMEOUT_MS.encode(),
                 "x-envoy-expected-rq-timeout-ms is not the route timeout"),
                (all(sum(n.lower() == f for n, _ in headers) ==
                     sum(n.lower() == f for n, _ in _request_fields(sent))
                     for f in FINGERPRINT_FIELDS), "a loop marker or Via added"),
                (got_id == sent_id if VALID_REQUEST_ID.match(sent_id) else UUID.match(got_id),
                 "x-request-id %r" % got_id),
                (backend_view["version"] == "HTTP/1.1", "not HTTP/1.1 upstream"),
            ]
            for ok, what in checks:
                if not ok:
                    problems.append("backend view: " + what)
            if not any(n.lower() == b"host" for n, _ in _request_fields(sent)) and not \
                    sent.startswith(b"GET http"):
                host = [v for n, v in headers if n.lower() == b"host"]
                if host != [HOST.encode()]:
                    problems.append("backend view: Host added for HTTP/1.0 is %r" % host)
                headers = [(n, v) for n, v in headers if n.lower() != b"host"]
            framing = [n.lower() for n, _ in headers
                       if n.lower() in (b"content-length", b"transfer-encoding")]
            if len(framing) > 1:
                problems.append("backend view: framed twice: %r" % framing)
        summary["backend"] = {
            "method": backend_view["method"],
            "uri": uri,
            "headers": [(n, v) for n, v in headers if n.lower() not in drop],
            "body_len": backend_view["body_len"],
            "body_sha256": backend_view["body_sha256"],
        }
    if response is not None:
        final = response.status >= 200
        if via_proxy:
            if response.version != b"HTTP/1.1":
                problems.append("response version %r" % response.version)
            if final and response.values(b"server") != [b"origdst"]:
                problems.append("server is %r" % response.values(b"server"))
            service = response.values(b"x-envoy-upstream-service-time")
            if final and (len(service) != 1 or not service[0].isdigit()):
                problems.append("x-envoy-upstream-service-time is %r" % service)
        drop = HOP_RESPONSE_FIELDS | _listed(response.headers)
        summary["response"] = {
            "status": response.status,
            "reason": response.reason,
            "headers": [(n, v) for n, v in response.headers if n.lower() not in drop],
            # A response without a body keeps the length of the one it stands for.
            "length": response.values(b"content-length")
            if response.status == 304 or not final or _is_head(sent) else None,
            "body": None if backend_view is not None else (len(response.body), _sha(response.body)),
            "trailers": response.trailers,
        }
    return summary


#: Cases where origdst differs in a way it does not document: each entry must
#: still be needed (the test fails once the difference is gone, so the entry
#: goes with it).
KNOWN_DIFFERENCES = {}


def _is_head(sent):
    return sent.startswith(b"HEAD ")


def _request_fields(raw):
    head = raw.split(b"\r\n\r\n", 1)[0]
    return [tuple(line.split(b": ", 1)) for line in head.split(b"\r\n")[1:] if b": " in line]


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def _echo_view(response):
    """
    The backend's report in an C{/echo} response, or C{None}.
    """
    if response.values(b"content-type") == [b"application/json"] and response.body:
        return json.loads(response.body)
    return None


class DifferentialTests(testbed.TopologyTestCase):
    """
    Every case direct and through the proxy, one fixture for the class.
    """

    tag = "d"

    @classmethod
    def build(cls, topology):
        topology.add_redirect(HOST, PROXIED_PORT, PROXY_PORT)
        topology.start_backend(PROXIED_PORT)
        topology.start_server(
            "backend-direct",
            [topology.python, testbed.BACKEND_SCRIPT, "--port", str(DIRECT_PORT)],
            DIRECT_PORT,
        )
        cls.access_log = os.path.join(topology.workdir, "access.log")
        topology.start_proxy(PROXY_ARGS + ["--access-log", cls.access_log], PROXY_PORT)

    def run_cases(self, cases, port):
        result = self.topology.run_client({"connections": [
            {"host": HOST, "port": port, "raw": case.raw.decode("latin-1"), "read_timeout": 10,
             "keep": 4 * MIB}
            for case in cases
        ]}, timeout=120)
        return result["connections"]

    def test_1_same_apart_from_documented_rewrites(self):
        """
        At least 40 cases; for each, the client's responses and the
        backend's view are the same direct and through the proxy, apart from
        the documented rewrites.
        """
        self.assertGreaterEqual(len(CASES), 40)
        self.assertEqual(len({case.name for case in CASES}), len(CASES))
        direct = self.run_cases(CASES, DIRECT_PORT)
        proxied = self.run_cases(CASES, PROXIED_PORT)
        problems = []
        answered = 0
        for case, d, p in zip(CASES, direct, proxied):
            found = self.compare(case, d, p)
            problems.extend("%s: %s" % (case.name, problem) for problem in found)
            answered += len([r for r in parse_responses(p["raw_response"].encode("latin-1"),
                                                         case.methods())[0] if r.status >= 200])
        type(self).answered = answered
        self.assertEqual(problems, [], "\n".join(problems) + "\nproxy log:\n"
                         + self.topology.proxy_log()[-3000:])

    def compare(self, case, direct, proxied):
        """
        @return: the differences between the two sides of one case.
        """
        problems = []
        for side, got in (("direct", direct), ("proxied", proxied)):
            if got["error"]:
                problems.append("%s: client error %s" % (side, got["error"]))
            if not got["closed"]:
                problems.append("%s: connection not closed" % side)
        sides = {}
        for side, got in (("direct", direct), ("proxied", proxied)):
            raw = got["raw_response"].encode("latin-1")
            responses, leftover = parse_responses(raw, case.methods())
            if leftover:
                problems.append("%s: %d bytes after the responses: %r" % (
                    side, len(leftover), leftover[:80]))
            sides[side] = responses
        finals = {side: [r for r in rs if r.status >= 200] for side, rs in sides.items()}
        count = case.compare or len(case.requests)
        for side, rs in finals.items():
            if len(rs) < count:
                problems.append("%s: %d responses, expected %d" % (side, len(rs), count))
        if problems:
            return problems
        if len(sides["direct"]) != len(sides["proxied"]) and case.compare is None:
            problems.append("%d responses direct, %d proxied" % (
                len(sides["direct"]), len(sides["proxied"])))
        # Interim (1xx) responses are compared too, as part of their request.
        answered = 0
        for index, (d, p) in enumerate(zip(sides["direct"], sides["proxied"])):
            if answered >= count:
                break
            sent = case.requests[answered]
            found = []
            views = [documented(side, sent, _echo_view(r), r, found)
                     for side, r in (("direct", d), ("proxied", p))]
            problems.extend("response %d: %s" % (index, f) for f in found)
            known = KNOWN_DIFFERENCES.get(case.name)
            if known is not None:
                if views[0] == views[1]:
                    problems.append("the known difference is gone: remove its entry")
                views = known(*views)
            if views[0] != views[1]:
                problems.append("response %d differs:\n  direct:  %r\n  proxied: %r" % (
                    index, views[0], views[1]))
            if d.status >= 200:
                answered += 1
        return problems

    def test_2_access_log(self):
        """
        The proxy wrote one access log line per request it answered, in
        Envoy's default format, and none has a response flag.
        """
        deadline = time.monotonic() + 5
        while True:
            with open(self.access_log, encoding="utf-8") as f:
                lines = f.readlines()
            if len(lines) >= getattr(type(self), "answered", 0) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        expected = getattr(type(self), "answered", None)
        if expected is None:
            self.skipTest("the differential cases did not run")
        self.assertEqual(len(lines), expected, "".join(lines[-5:]))
        problems = []
        for line in lines:
            match = ENVOY_LINE.match(line)
            if match is None:
                problems.append("not Envoy's format: %r" % line)
            elif match.group("response_flags") != "-" or match.group("upstream_host") != "%s:%d" % (
                    HOST, PROXIED_PORT):
                problems.append("unexpected: %r" % line)
        self.assertEqual(problems, [])

    def test_3_access_log_reopened_on_sighup(self):
        """
        After logrotate's rename and SIGHUP, the proxy writes to a new file.
        """
        rotated = self.access_log + ".1"
        os.rename(self.access_log, rotated)
        os.kill(self.topology.proxy.popen.pid, signal.SIGHUP)
        testbed.wait_for(lambda: os.path.exists(self.access_log), 5, what="the reopened access log")
        got = self.topology.run_client({"host": HOST, "port": PROXIED_PORT, "raw": get(
            b"/echo?after=rotation").decode("latin-1")})
        self.assertEqual(got["status"], 200, got)
        testbed.wait_for(lambda: os.path.getsize(self.access_log) > 0, 5, what="a line")
        with open(self.access_log, encoding="utf-8") as f:
            [line] = f.readlines()
        self.assertIn('"GET /echo?after=rotation HTTP/1.1" 200 - ', line)
        self.assertTrue(self.topology.proxy.running())


def testSuite():
    return testbed.suite(DifferentialTests)
