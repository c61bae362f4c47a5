"""
Reading a TLS ClientHello without terminating TLS.

Like Envoy's C{tls_inspector}, origdst looks at the client's first
handshake message only for the server name (SNI, RFC 6066 section 3) and the
ALPN protocols (RFC 7301) it offers; nothing is decrypted, and the bytes go
on to the original destination exactly as they came.

The hello may arrive in many TCP segments and even in several TLS records:
L{HelloReader} keeps the bytes (up to L{MAX_HELLO}) and parses what it has,
so a hello that is certainly malformed is known at once, and a complete one
as soon as its last byte arrives.
"""

import struct

# The largest handshake message accepted (Envoy's tls_inspector: 16 KiB).
MAX_HELLO = 16384
# RFC 8446 section 5.1: a record's length MUST NOT exceed 2^14.
MAX_RECORD = 16384
HANDSHAKE = 22
CLIENT_HELLO = 1
SERVER_NAME = 0
ALPN = 16
HOST_NAME = 0

_U16 = struct.Struct("!H")


class NeedMore(Exception):
    """
    The bytes so far are a correct beginning of a ClientHello.
    """


class Malformed(Exception):
    """
    The bytes cannot be a ClientHello; the message says why.
    """


class ClientHello:
    """
    What origdst reads from a ClientHello.

    @ivar server_name: the SNI host name (lowercase text), or C{None}.
    @ivar alpn: the offered ALPN protocol names, as texts, in order.
    """

    __slots__ = ("server_name", "alpn")

    def __init__(self, server_name=None, alpn=()):
        self.server_name = server_name
        self.alpn = tuple(alpn)

    def __repr__(self):
        return f"<ClientHello sni={self.server_name!r} alpn={self.alpn!r}>"


class _Cursor:
    """
    Reads a structure whose declared length is C{end}, of which only
    C{len(data)} bytes may have arrived: reading past C{end} is L{Malformed},
    past the data L{NeedMore}.
    """

    __slots__ = ("data", "pos", "end")

    def __init__(self, data, pos, end):
        self.data = data
        self.pos = pos
        self.end = end

    def take(self, n, what):
        start = self.pos
        if start + n > self.end:
            raise Malformed(f"{what} runs past its enclosing length")
        if start + n > len(self.data):
            raise NeedMore()
        self.pos = start + n
        return self.data[start : start + n]

    def u8(self, what):
        return self.take(1, what)[0]

    def u16(self, what):
        return _U16.unpack(self.take(2, what))[0]

    def vector(self, size, what, low=0):
        """
        A length-prefixed vector (C{size} bytes of length): a sub-cursor.
        """
        length = self.u8(what) if size == 1 else self.u16(what)
        if length < low:
            raise Malformed(f"{what} is shorter than {low} bytes")
        if self.pos + length > self.end:
            raise Malformed(f"{what} runs past its enclosing length")
        sub = _Cursor(self.data, self.pos, self.pos + length)
        self.pos += length
        return sub

    def done(self):
        return self.pos >= self.end


def handshake_bytes(raw):
    """
    Join the fragments of the handshake records at the start of C{raw}.

    Records after the one that completes the ClientHello (TLS 1.3 early
    data, say) are not looked at.

    @return: the handshake bytes so far.
    @raise Malformed: for a record that is not a handshake record.
    """
    out = []
    have = 0
    pos = 0
    while pos + 5 <= len(raw):
        kind, major, length = raw[pos], raw[pos + 1], _U16.unpack_from(raw, pos + 3)[0]
        if kind != HANDSHAKE:
            raise Malformed(f"record of type {kind} before the ClientHello ended")
        if major != 3:
            raise Malformed(f"record version {major}.{raw[pos + 2]} is not TLS")
        if not 0 < length <= MAX_RECORD:
            raise Malformed(f"record length {length}")
        fragment = raw[pos + 5 : pos + 5 + length]
        out.append(fragment)
        have += len(fragment)
        pos += 5 + length
        if have >= 4:
            first = out[0] if len(out[0]) >= 4 else b"".join(out)
            if have >= 4 + int.from_bytes(first[1:4], "big"):
                break
    return b"".join(out)


def parse(raw):
    """
    Parse the ClientHello at the start of C{raw} (records and all).

    @return: the L{ClientHello} once complete.
    @raise NeedMore: when C{raw} is a correct but incomplete beginning.
    @raise Malformed: when it cannot be a ClientHello (or one over
        L{MAX_HELLO}).
    """
    data = handshake_bytes(raw)
    if len(data) < 4:
        if data[:1] and data[0] != CLIENT_HELLO:
            raise Malformed(f"handshake message of type {data[0]}, not ClientHello")
        raise NeedMore()
    if data[0] != CLIENT_HELLO:
        raise Malformed(f"handshake message of type {data[0]}, not ClientHello")
    length = int.from_bytes(data[1:4], "big")
    if length + 4 > MAX_HELLO:
        raise Malformed(f"ClientHello of {length} bytes is over the {MAX_HELLO}-byte bound")
    hello = _Cursor(data, 4, 4 + length)
    version = hello.take(2, "client version")
    if version[0] != 3:
        raise Malformed(f"client version {version[0]}.{version[1]} is not TLS")
    hello.take(32, "random")
    session = hello.vector(1, "session id")
    if session.end - session.pos > 32:
        raise Malformed("session id longer than 32 bytes")
    suites = hello.vector(2, "cipher suites", low=2)
    if (suites.end - suites.pos) % 2:
        raise Malformed("cipher suites of odd length")
    hello.vector(1, "compression methods", low=1)
    server_name, alpn = None, ()
    if not hello.done():
        extensions = hello.vector(2, "extensions")
        if extensions.end != hello.end:
            raise Malformed("bytes after the extensions")
        seen = set()
        while not extensions.done():
            kind = extensions.u16("extension type")
            body = extensions.vector(2, "extension")
            if kind in seen:
                raise Malformed(f"extension {kind} twice")
            seen.add(kind)
            if kind == SERVER_NAME:
                server_name = _server_name(body)
            elif kind == ALPN:
                alpn = _alpn(body)
            else:
                body.take(body.end - body.pos, "extension")
    if len(data) < hello.end:
        raise NeedMore()
    return ClientHello(server_name, alpn)


def _server_name(body):
    names = body.vector(2, "server name list", low=1)
    if names.end != body.end:
        raise Malformed("bytes after the server name list")
    found = None
    while not names.done():
        kind = names.u8("server name type")
        name = names.vector(2, "server name", low=1)
        value = name.take(name.end - name.pos, "server name")
        if kind == HOST_NAME:
            if found is not None:
                raise Malformed("two host names")
            found = _host_name(value)
    return found


def _host_name(value):
    # RFC 6066 section 3: ASCII, without a trailing dot.
    try:
        text = value.decode("ascii").lower()
    except UnicodeDecodeError:
        raise Malformed("server name is not ASCII")
    if not text or text.endswith(".") or any(
        not (c.isalnum() or c in "-._") for c in text
    ):
        raise Malformed(f"server name {text!r} is not a host name")
    return text


def _alpn(body):
    names = body.vector(2, "ALPN protocol list", low=2)
    if names.end != body.end:
        raise Malformed("bytes after the ALPN protocol list")
    out = []
    while not names.done():
        name = names.vector(1, "ALPN protocol", low=1)
        out.append(name.take(name.end - name.pos, "ALPN protocol").decode("latin-1"))
    return out


class HelloReader:
    """
    Gathers a ClientHello from the segments it comes in.

    Parsing starts again from the first byte each time; it is done only when
    the buffer has grown by an eighth since the last try, or the declared
    hello is complete, so a hello fed one byte at a time costs no more than a
    few parses of its whole length.

    @ivar raw: every byte received, to be passed on unchanged.
    """

    def __init__(self):
        self.raw = b""
        self._tried = 0

    def feed(self, data):
        """
        @return: the L{ClientHello} when complete, else C{None}.
        @raise Malformed: as soon as the bytes cannot be a ClientHello.
        """
        self.raw += data
        if len(self.raw) < self._tried + self._tried // 8 and not self._complete():
            return None
        self._tried = len(self.raw)
        try:
            return parse(self.raw)
        except NeedMore:
            if len(self.raw) > MAX_HELLO + 5 * (MAX_HELLO // 512 + 1):
                raise Malformed("no complete ClientHello within the bound")
            return None

    def _complete(self):
        raw = self.raw
        if len(raw) < 9:
            return False
        # Only the common case, one record, is checked cheaply.
        return len(raw) >= 5 + _U16.unpack_from(raw, 3)[0]
