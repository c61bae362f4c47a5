"""
The backend of the end-to-end tests: a small Twisted web server that reports what it received.

Run as C{python testbed/backend.py --port 80}; it listens dual-stack (C{tcp6:<port>} on C{::}) and
writes one line per request to stdout.  Endpoints:

  - C{/echo} (any method): 200 JSON with C{method}, C{uri} (as received), C{version},
    C{headers} (C{[name, value]} pairs exactly as received: order, case and repeats kept),
    C{body_len}, C{body_sha256}, C{peer_host}, C{peer_port}.
  - C{/body} (POST, PUT): 200 with the request body sent back, with Content-Length.
  - C{/chunked?n=N&size=S}: N writes of S bytes of L{pattern} with no Content-Length (so
    HTTP/1.1 gets chunked framing), one reactor turn apart.
  - C{/bytes?n=N}: N bytes of L{pattern} with Content-Length.
  - C{/slow?delay=SECONDS}: C{slow done} after the delay.
  - C{/peer}: the peer's port as text, to tell upstream connections apart.
  - C{/status?code=N&h=NAME:VALUE...}: status N with a short text body (none for 204 and
    304) and each C{h} as a response header.
  - C{/fault?kind=KIND}: a misbehaving server, one fault per request (L{testbed.faults}
    lists the kinds).

C{--port} may be given more than once: one server, several ports.
"""

import argparse
import hashlib
import json
import sys

from twisted.internet import endpoints
from twisted.web import http, resource, server

try:
    from testbed import faults
except ImportError:  # run as a script: testbed/ itself is on the path
    import faults

#: The deterministic byte stream served by C{/chunked} and C{/bytes}.
pattern = faults.pattern


class RawHeaderRequest(server.Request):
    """
    A request that also keeps its header lines exactly as they arrived: Twisted's
    L{http.Headers} canonicalises names and groups repeats, which would hide what a proxy did.
    """

    def __init__(self, *args, **kwargs):
        server.Request.__init__(self, *args, **kwargs)
        self.rawHeaderLines = []


class RawHeaderChannel(faults.FaultChannelMixin, http.HTTPChannel):
    """
    Records each complete header line on the request being received, and commits the
    faults that strike at the connection (L{faults.FaultChannelMixin}).
    """

    def headerReceived(self, line):
        self.requests[-1].rawHeaderLines.append(line)
        return http.HTTPChannel.headerReceived(self, line)

    def allHeadersReceived(self):
        line = b"%s %s %s" % (self._command, self._path, self._version)
        if not self.faultAtHead(line):
            http.HTTPChannel.allHeadersReceived(self)


def _arg(request, name, default, coerce=int):
    values = request.args.get(name.encode("ascii"))
    return coerce(values[0].decode("ascii")) if values else default


class Backend(resource.Resource):
    """
    Every path handled by one leaf resource, dispatched on the request path.
    """

    isLeaf = True

    def __init__(self, reactor):
        resource.Resource.__init__(self)
        self._reactor = reactor

    def render(self, request):
        peer = request.getClientAddress()
        print("%s %s %s from [%s]:%s" % (
            request.method.decode("latin-1"), request.uri.decode("latin-1"),
            request.clientproto.decode("latin-1"), peer.host, peer.port), flush=True)
        path = request.path
        if path[:7].lower() == b"http://":
            # Absolute-form (RFC 9112 section 3.2.2): dispatch on its path.
            path = b"/" + path[7:].partition(b"/")[2]
        handler = getattr(self, "render_" + path.decode("latin-1").strip("/"), None)
        if handler is None:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain")
            return b"not found\n"
        return handler(request)

    def render_echo(self, request):
        request.content.seek(0)
        body = request.content.read()
        peer = request.getClientAddress()
        headers = []
        for line in request.rawHeaderLines:
            name, _, value = line.partition(b":")
            headers.append([name.decode("latin-1"), value.strip(b" \t").decode("latin-1")])
        report = {
            "method": request.method.decode("latin-1"),
            "uri": request.uri.decode("latin-1"),
            "version": request.clientproto.decode("latin-1"),
            "headers": headers,
            "body_len": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "peer_host": peer.host,
            "peer_port": peer.port,
        }
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(report).encode("utf-8")

    def render_body(self, request):
        if request.method not in (b"POST", b"PUT"):
            request.setResponseCode(405)
            return b"POST or PUT\n"
        request.content.seek(0)
        request.setHeader(b"content-type", b"application/octet-stream")
        return request.content.read()

    def render_chunked(self, request):
        count = _arg(request, "n", 10)
        size = _arg(request, "size", 1000)
        request.setHeader(b"content-type", b"application/octet-stream")
        state = {"i": 0, "call": None, "gone": False}

        def step():
            if state["gone"]:
                return
            if state["i"] >= count:
                request.finish()
                return
            request.write(pattern(state["i"] * size, size))
            state["i"] += 1
            # Let the reactor turn so each write really goes out on its own.
            state["call"] = self._reactor.callLater(0, step)

        def gone(_):
            state["gone"] = True
            if state["call"] is not None and state["call"].active():
                state["call"].cancel()

        request.notifyFinish().addErrback(gone)
        step()
        return server.NOT_DONE_YET

    def render_bytes(self, request):
        request.setHeader(b"content-type", b"application/octet-stream")
        return pattern(0, _arg(request, "n", 0))

    def render_slow(self, request):
        delay = _arg(request, "delay", 1.0, float)
        request.setHeader(b"content-type", b"text/plain")

        def answer():
            request.write(b"slow done\n")
            request.finish()

        call = self._reactor.callLater(delay, answer)
        request.notifyFinish().addErrback(lambda _: call.active() and call.cancel())
        return server.NOT_DONE_YET

    def render_status(self, request):
        code = _arg(request, "code", 200)
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain")
        for item in request.args.get(b"h", []):
            name, _, value = item.partition(b":")
            request.responseHeaders.addRawHeader(name, value)
        return b"" if code in (204, 304) else b"status %d\n" % code

    def render_fault(self, request):
        return faults.render_fault(request, self._reactor)

    def render_peer(self, request):
        request.setHeader(b"content-type", b"text/plain")
        return str(request.getClientAddress().port).encode("ascii")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--port", type=int, action="append")
    options = parser.parse_args(argv)
    ports = options.port or [80]

    from twisted.internet import reactor

    site = server.Site(Backend(reactor))
    site.protocol = RawHeaderChannel
    site.requestFactory = RawHeaderRequest
    # Quiet Twisted's own access log; render() prints a line per request.
    site.log = lambda request: None

    def listening(port):
        print("backend listening on %s" % (port.getHost(),), flush=True)

    def failed(failure):
        print("backend failed to listen: %s" % (failure.getErrorMessage(),), flush=True)
        reactor.stop()

    for number in ports:
        endpoint = endpoints.serverFromString(reactor, "tcp6:%d" % number)
        endpoint.listen(site).addCallbacks(listening, failed)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
