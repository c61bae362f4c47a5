"""
Flow control between the two sides of a proxied exchange.

A transport may be paused for several reasons at once: its peer's write buffer
is full, the upstream connection is not there yet, a pipelined request waits
its turn. Twisted's pause/resume is a plain switch, so each side keeps the set
of reasons and reads again only when none is left.
"""

import sys

from zope.interface import implementer
from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer


@implementer(IPushProducer)
class Pauser:
    """
    Pauses one transport while any reason holds.

    Registered as a streaming producer on the I{other} side's transport, it
    pauses this side while that transport's write buffer is full.
    """

    __slots__ = ("transport", "reasons")

    PEER_FULL = "peer write buffer full"

    def __init__(self, transport):
        self.transport = transport
        self.reasons = set()

    def pause(self, reason):
        if not self.reasons:
            self.transport.pauseProducing()
        self.reasons.add(reason)

    def resume(self, reason):
        if reason in self.reasons:
            self.reasons.discard(reason)
            if not self.reasons:
                self.transport.resumeProducing()

    def pauseProducing(self):
        self.pause(self.PEER_FULL)

    def resumeProducing(self):
        self.resume(self.PEER_FULL)

    def stopProducing(self):
        """
        The consumer's connection is gone; the protocols' own connectionLost
        handlers decide what happens to this side, so nothing is done here.
        """


def connect_flow(producer, consumer_transport):
    """
    Let C{consumer_transport} pause C{producer} while its buffer is full.
    """
    consumer_transport.registerProducer(producer, True)


def disconnect_flow(producer, consumer_transport):
    """
    Undo L{connect_flow}, leaving C{producer} reading again if the consumer had
    paused it.
    """
    if consumer_transport.producer is producer:
        consumer_transport.unregisterProducer()
    producer.resume(Pauser.PEER_FULL)


# Twisted reads 64 KiB at a time. On CPython, fewer and larger reads cost
# less per byte for a large body (make bench: about a third more MB/s at
# 1 MiB than at 64 KiB); for small messages a large read buffer would only
# cost an allocation per read, so the size changes per body.
SMALL_READ = 64 * 1024
BULK_BODY = 256 * 1024


def bulk_read_size(implementation=sys.implementation.name):
    """
    @return: the read size for a large body on this Python.

    Under PyPy, a read larger than about 64 KiB is a "large object", which
    its GC allocates outside the nursery with malloc and frees only at a
    minor collection; those come later the larger the nursery is, and
    glibc keeps the freed memory. Moving 418 MiB through a socket pair in
    1 MiB reads grew the resident size by 26 MiB with a 4 MiB nursery and by
    249 MiB with a 32 MiB one, where 64 KiB reads, which stay in the
    nursery, grew it by 17 and 14 MiB and were faster (README, Runtimes).
    A large response body of known length does not become bytes there at
    all (L{origdst.rawcopy}).
    """
    return SMALL_READ if implementation == "pypy" else 1024 * 1024


BULK_READ = bulk_read_size()


def read_size(transport, bulk):
    """
    Read C{transport} in large pieces while a large body streams in
    (C{bulk}), in Twisted's usual ones otherwise.
    """
    transport.bufferSize = BULK_READ if bulk else SMALL_READ


def follow_reads(transport, n):
    """
    Size the reads of a stream whose messages origdst does not see (the TCP
    relay) by the last one, C{n} bytes: a read that filled the buffer means
    a bulk transfer, read in large pieces from then on; a small one, an
    interactive exchange, back to Twisted's usual size. A transport without
    a read size (a test's) is left alone.
    """
    size = getattr(transport, "bufferSize", None)
    if size is None:
        return
    if n >= size:
        transport.bufferSize = BULK_READ
    elif n < SMALL_READ:
        transport.bufferSize = SMALL_READ


# The attributes of Twisted's TCP transports that write() reads, all but
# "socket" private; tests/test_flow.py fails when a Twisted release lacks one.
TRANSPORT_ATTRIBUTES = (
    "socket", "TLS", "connected", "disconnecting", "_aborting", "_writeDisconnecting",
    "_writeDisconnected", "_tempDataLen", "dataBuffer", "offset",
)
PLAIN_TCP = (tcp.Server, tcp.Client)


def can_send_now(transport):
    """
    @return: whether bytes for C{transport} may go straight to its socket:
        one of Twisted's own TCP connections (not a subclass: origdst's
        upstream connections from L{origdst.sourceports} are one, and sending
        their request heads directly measured no faster), without TLS, open,
        with nothing waiting in its buffer (what is sent then comes after
        everything written before).
    """
    return (
        transport.__class__ in PLAIN_TCP
        and transport.connected
        and not (
            transport.TLS
            or transport.disconnecting
            or transport._aborting
            or transport._writeDisconnecting
            or transport._writeDisconnected
            or transport._tempDataLen
            or transport.offset != len(transport.dataBuffer)
            # A doWrite of its own: bytes held ahead of Twisted's buffer
            # (origdst.rawcopy).
            or "doWrite" in transport.__dict__
        )
    )


def write(transport, data):
    """
    Write C{data} to C{transport}, straight to its socket when nothing waits
    in the transport's buffer.

    Twisted's write only buffers: it registers the socket for writing (an
    epoll_ctl), the reactor's next iteration sends, and then unregisters it
    (another epoll_ctl). A keep-alive request's head or a small response
    fits the socket's send buffer at once, so it is sent here, saving two
    system calls and a reactor iteration per write; what the socket does not
    take (or an error, which Twisted then reports as usual) goes through
    Twisted's buffering as before, behind nothing, so the order holds.
    Anything but a plain TCP connection (TLS, a test's transport) is left
    to its own write.
    """
    if can_send_now(transport):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
