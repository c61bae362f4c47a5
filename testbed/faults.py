"""
Faults the test backend can be told to commit, one request at a time: C{/fault?kind=KIND}.

Every fault prints one line to the backend's stdout, C{fault KIND: <what it did> <request line>},
so a test (or a load) counts at the backend what arrived.  The kinds:

  - C{hang}: read the request, never answer (the route timeout's case).
  - C{reset-before-headers}: read the request, then reset the connection (RST), no byte sent.
  - C{close-before-headers}: read the request, then close the connection (FIN), no byte sent.
  - C{short-length&n=N&sent=M}: a 200 head with C{Content-Length: N}, M of the N body bytes
    (default half), then close.
  - C{short-chunked&chunks=K}: a chunked 200 head, K chunks of 100 bytes, then close before the
    last chunk.
  - C{overlong&n=N}: a 200 head with C{Content-Length: N}, N bytes, and in the same write a
    whole second response (C{SMUGGLED} as its body) that belongs to no request.
  - C{dribble&n=N&delay=S}: a 200 response with a body of N bytes (default 32), head and body
    written one byte at a time, S seconds apart (default 0.01), then close.
  - C{close-on-reuse}: answer 200 C{armed} and keep the connection, then close it, unanswered,
    as soon as the first byte of the next request on it arrives: a server's keep-alive
    timeout that strikes just as the connection is reused.
  - C{no-read}: at the end of the request head, stop reading the connection for good and never
    answer: a server that accepts a large upload and never reads it.

Request bodies are read whole before a fault that needs the request (all but C{no-read} and
the second half of C{close-on-reuse}).  Any other query argument (an C{id=} to tell requests
apart) is ignored and printed with the request line.
"""

from twisted.web import server

_CYCLE = bytes(range(256))

# Kinds that strike when the head has arrived, before the body is read.
AT_HEAD = ("no-read",)

SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: keep-alive\r\n\r\nSMUGGLED"


def pattern(offset, length):
    """
    The deterministic byte stream the backend serves: byte C{k} is C{k % 256}.

    @return: C{length} bytes of it starting at C{offset}.
    """
    start = offset % 256
    repeats = (start + length) // 256 + 1
    return (_CYCLE * repeats)[start:start + length]


def _arg(request, name, default, coerce=int):
    values = request.args.get(name.encode("ascii"))
    return coerce(values[0].decode("ascii")) if values else default


def _say(kind, what, line):
    print("fault %s: %s %s" % (kind, what, line.decode("latin-1")), flush=True)


def kind_of(path):
    """
    @param path: the request target as received.
    @return: the fault kind a C{/fault?kind=KIND} target asks for, else C{None}.
    """
    target, _, query = path.partition(b"?")
    if target.rpartition(b"/")[2] != b"fault":
        return None
    for item in query.split(b"&"):
        name, _, value = item.partition(b"=")
        if name == b"kind":
            return value.decode("latin-1")
    return ""


class FaultChannelMixin:
    """
    The connection-level halves of the faults, mixed into the backend's HTTP channel:
    C{close-on-reuse}'s close at the next request's first byte, and C{no-read}'s stop.
    """

    closeOnNextRequest = False

    def dataReceived(self, data):
        if self.closeOnNextRequest:
            self.closeOnNextRequest = False
            _say("close-on-reuse", "closed unanswered at", data.split(b"\r\n", 1)[0])
            self.transport.loseConnection()
            self.dataReceived = lambda data: None
            return
        return super().dataReceived(data)

    def faultAtHead(self, line):
        """
        Called with the request line once its head is complete.

        @return: whether a fault took the connection over.
        """
        kind = kind_of(self._path)
        if kind not in AT_HEAD:
            return False
        _say(kind, "stopped reading at", line)
        self.transport.stopReading()
        # Nothing that arrives is looked at again (the kernel's buffers fill, then the
        # sender's window closes).
        self.dataReceived = self.rawDataReceived = lambda data: None
        return True


def render_fault(request, reactor):
    """
    Commit the fault C{request}'s C{kind} asks for, the request having been read whole.

    @return: what C{render} returns (always C{NOT_DONE_YET}, or a body for an unknown kind).
    """
    kind = _arg(request, "kind", "", str)
    line = b"%s %s %s" % (request.method, request.uri, request.clientproto)
    transport = request.channel.transport
    if kind == "hang":
        _say(kind, "holding", line)
        return server.NOT_DONE_YET
    if kind == "reset-before-headers":
        _say(kind, "reset", line)
        transport.abortConnection()
        return server.NOT_DONE_YET
    if kind == "close-before-headers":
        _say(kind, "closed", line)
        transport.loseConnection()
        return server.NOT_DONE_YET
    if kind == "short-length":
        length = _arg(request, "n", 1000)
        sent = _arg(request, "sent", length // 2)
        _say(kind, "sent %d of %d body bytes of" % (sent, length), line)
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                        b"Content-Length: %d\r\n\r\n" % length + pattern(0, sent))
        transport.loseConnection()
        return server.NOT_DONE_YET
    if kind == "short-chunked":
        chunks = _arg(request, "chunks", 3)
        _say(kind, "sent %d chunks, no last chunk, of" % chunks, line)
        body = b"".join(b"64\r\n" + pattern(i * 100, 100) + b"\r\n" for i in range(chunks))
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n" + body)
        transport.loseConnection()
        return server.NOT_DONE_YET
    if kind == "overlong":
        length = _arg(request, "n", 100)
        _say(kind, "sent %d body bytes and a response more for" % length, line)
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                        b"Content-Length: %d\r\n\r\n" % length + pattern(0, length) + SMUGGLED)
        # The connection stays open, as a server that believes it answered would keep it.
        return server.NOT_DONE_YET
    if kind == "dribble":
        return _dribble(request, reactor, line, transport)
    if kind == "close-on-reuse":
        _say(kind, "armed by", line)
        request.channel.closeOnNextRequest = True
        request.setHeader(b"content-type", b"text/plain")
        return b"armed\n"
    if kind in AT_HEAD:
        return server.NOT_DONE_YET
    request.setResponseCode(400)
    request.setHeader(b"content-type", b"text/plain")
    return b"unknown fault kind %r\n" % (kind,)


def _dribble(request, reactor, line, transport):
    length = _arg(request, "n", 32)
    delay = _arg(request, "delay", 0.01, float)
    _say("dribble", "%d body bytes one byte at a time, %gs apart, for" % (length, delay), line)
    data = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % length + pattern(0, length))
    state = {"i": 0, "call": None}

    def step():
        if state["i"] >= len(data):
            transport.loseConnection()
            return
        transport.write(data[state["i"]:state["i"] + 1])
        state["i"] += 1
        state["call"] = reactor.callLater(delay, step)

    def gone(_):
        if state["call"] is not None and state["call"].active():
            state["call"].cancel()

    request.notifyFinish().addErrback(gone)
    step()
    return server.NOT_DONE_YET
