"""
Large bodies moved between two sockets without Python bytes, under PyPy.

Under PyPy each C{socket.recv} allocates a buffer with malloc, copies what
arrived into a new bytes object and frees the buffer; C{send} pins or copies
the object again. Reads larger than about 64 KiB are also large objects that
its GC frees only at a minor collection (L{origdst.flow.bulk_read_size}), so
PyPy reads large bodies 64 KiB at a time, and a 256 MiB download cost it
2.4 times CPython's CPU per byte (C{make bench}). While a response body of
known length streams from a server to a client, origdst under PyPy instead
reads it with C{recv(2)} into a raw buffer and sends it from there with
C{send(2)}, both called through PyPy's own cffi: no object is made of the
bytes, and the reads are as large as CPython's. The TCP relay moves both
of its directions so (L{origdst.tcp}).

What the client's socket does not take at once stays in that buffer, which
the client connection then holds (the reads go on in another): its writes
send the rest before anything Twisted buffered behind it, and the server's
side is paused meanwhile, as Twisted's flow control would pause it. So a
client holds at most one buffer, 1 MiB (Envoy's default per-connection
buffer limit), and the order of writes is kept: L{origdst.flow.can_send_now}
is false while a buffer is held.

CPython reads such a body into bytes 1 MiB at a time for about the same CPU
per byte, so nothing here is used there.
"""

import errno
import sys

from twisted.internet import main

from origdst.flow import PLAIN_TCP, can_send_now

#: The largest read, as CPython's (L{origdst.flow.BULK_READ}).
BUFFER_SIZE = 1024 * 1024

#: Buffers kept for reuse once a client has sent what it held.
SPARES = 8

# send(2) flags: no SIGPIPE for a closed peer (Python ignores it anyway).
_MSG_NOSIGNAL = 0x4000
_AGAIN = (errno.EAGAIN, errno.EINTR)


class _Raw:
    """
    libc's C{recv} and C{send}, the buffer reads go into, and spare ones.

    Built on C{_cffi_backend}, the part of cffi built into PyPy, without
    cffi's C{FFI}: that parses declarations with pycparser, which cost 10 MiB
    of resident memory, where this costs about 1 (and opens no file, so it is
    done at start, before descriptors can run out).
    """

    def __init__(self, backend, size):
        c_int = backend.new_primitive_type("int")
        size_t = backend.new_primitive_type("size_t")
        ssize_t = backend.new_primitive_type("ssize_t")
        pointer = backend.new_pointer_type(backend.new_void_type())
        # ssize_t recv(int, void *, size_t, int), and send alike.
        call = backend.new_function_type((c_int, pointer, size_t, c_int), ssize_t, False)
        libc = backend.load_library(None)
        self.recv = libc.load_function(call, "recv")
        self.send = libc.load_function(call, "send")
        self.errno = backend.get_errno
        self._backend = backend
        self._array = backend.new_array_type(
            backend.new_pointer_type(backend.new_primitive_type("char")), None)
        self.size = size
        self.buffer = self.new()
        self.spares = []

    def new(self):
        return self._backend.newp(self._array, self.size)

    def bytes(self, n):
        """
        @return: the first C{n} bytes of the buffer just read into, copied.
        """
        return self._backend.buffer(self.buffer, n)[:]

    def take(self):
        """
        @return: the buffer just read into, for a client to hold; later
            reads go into a spare or a new one.
        """
        held = self.buffer
        self.buffer = self.spares.pop() if self.spares else self.new()
        return held

    def give_back(self, buffer):
        if len(self.spares) < SPARES:
            self.spares.append(buffer)


def load(implementation=sys.implementation.name, size=BUFFER_SIZE):
    """
    @return: a L{_Raw} under PyPy, else C{None}.
    """
    if implementation != "pypy":
        return None
    try:
        import _cffi_backend
        return _Raw(_cffi_backend, size)
    except (ImportError, AttributeError, OSError, TypeError):
        return None


_raw = load()


def usable(source, sink, raw=None):
    """
    @return: whether a body from C{source} to C{sink} can be moved raw: this
        runtime has L{load}ed, and both are TCP connections without TLS
        (the source may be of a subclass: L{origdst.sourceports}'s).
    """
    if (_raw if raw is None else raw) is None:
        return False
    return all(isinstance(t, PLAIN_TCP) and not t.TLS for t in (source, sink))


def start(transport, limit, received, raw=None):
    """
    Read C{transport} into the raw buffer from now on, until L{stop}.

    @param limit: returns how many bytes may be read now (what is left of
        the body); 0 gives the transport its own reads back, and it reads.
    @param received: called with the count of bytes just read into the
        buffer; it must L{forward} them before it returns, and its result is
        the read's (C{None}, or why the connection is lost).
    """
    raw = _raw if raw is None else raw
    fd = transport.socket.fileno()
    recv, size, get_errno = raw.recv, raw.size, raw.errno

    def doRead():
        want = limit()
        if want <= 0:
            stop(transport)
            return transport.doRead()
        n = recv(fd, raw.buffer, want if want < size else size, 0)
        if n > 0:
            return received(n)
        if n == 0:
            return main.CONNECTION_DONE
        if get_errno() in _AGAIN:
            return None
        return main.CONNECTION_LOST

    transport.doRead = doRead


def stop(transport):
    """
    Give C{transport} Twisted's own reads back (nothing when it has them).
    """
    transport.__dict__.pop("doRead", None)


def forward(transport, n, pauser, raw=None):
    """
    Write the C{n} bytes just read into the raw buffer to C{transport}:
    straight to its socket when nothing waits in its buffer; what the socket
    does not take it holds (L{hold}). Behind bytes in Twisted's buffer they
    are copied into it, to keep the order.

    @param pauser: the L{origdst.flow.Pauser} of the connection they came
        from, paused while C{transport} holds a buffer.
    """
    raw = _raw if raw is None else raw
    if not can_send_now(transport):
        transport.write(raw.bytes(n))
        return
    sent = raw.send(transport.socket.fileno(), raw.buffer, n, _MSG_NOSIGNAL)
    if sent == n:
        return
    if sent < 0:
        if raw.errno() not in _AGAIN:
            # Twisted's own write meets the error and reports it as usual.
            transport.write(raw.bytes(n))
            return
        sent = 0
    hold(transport, raw, raw.take(), sent, n, pauser)


def hold(transport, raw, buffer, offset, end, pauser):
    """
    Let C{transport} send C{buffer[offset:end]} before anything else, when
    its socket can take it, with C{pauser} paused meanwhile.
    """
    pauser.pause(pauser.PEER_FULL)
    fd = transport.socket.fileno()
    send, get_errno = raw.send, raw.errno
    at = [offset]

    def doWrite():
        sent = send(fd, buffer + at[0], end - at[0], _MSG_NOSIGNAL)
        if sent < 0:
            if get_errno() in _AGAIN:
                return None
            del transport.doWrite
            return main.CONNECTION_LOST
        at[0] += sent
        if at[0] < end:
            return None
        del transport.doWrite
        raw.give_back(buffer)
        pauser.resume(pauser.PEER_FULL)
        # Twisted's own: what was written meanwhile, a close that waited,
        # or stop writing.
        return transport.doWrite()

    transport.doWrite = doWrite
    transport.startWriting()
