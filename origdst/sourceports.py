"""
The local ports of the proxy's upstream connections, kept out of the clients' range.

Why: a client connection that happens to get the source port of an upstream connection the
server has just reset matches that connection's conntrack entry (state CLOSE, kept 10 s), so
the nat REDIRECT rule is never consulted and the client reaches the destination around the
proxy.  The filter rule of C{conf/iptables.sh} rejects such a connection (fail closed); binding
every upstream socket to a port the kernel never hands out on its own (above the ephemeral
range, C{net.ipv4.ip_local_port_range}, or in C{net.ipv4.ip_local_reserved_ports}) makes the
collision impossible, so the rule never has to fire.

C{SO_REUSEADDR} lets one port serve connections to different destinations, and a port whose
earlier connection is in TIME_WAIT be bound again; the kernel still refuses a connection whose
four addresses and ports are in use (C{EADDRNOTAVAIL}), and then the next port is tried.
"""

import errno
import random
import socket

from twisted.internet import tcp
from twisted.internet.error import ConnectBindError, ConnectError
from twisted.internet.posixbase import PosixReactorBase

from origdst.logs import logger

log = logger("origdst.sourceports")

#: How many ports one connection attempt tries before it fails.
TRIES = 16

_TAKEN = (errno.EADDRINUSE, errno.EADDRNOTAVAIL)


class SourcePorts:
    """
    A cursor over C{low..high}, started at a random place so that workers sharing the range
    rarely pick the same port at once.
    """

    def __init__(self, low, high, rng=random):
        self.low = low
        self.size = high - low + 1
        self._next = rng.randrange(self.size)

    def take(self):
        """
        @return: the next port of the range.
        """
        port = self.low + self._next
        self._next = (self._next + 1) % self.size
        return port


def _taken(reason):
    """
    Whether a failed attempt failed only because its local port was in use.
    """
    value = reason.value
    if isinstance(value, ConnectBindError):
        return True
    return isinstance(value, ConnectError) and value.osError in _TAKEN


class _ReusingClient(tcp.Client):
    def createInternetSocket(self):
        skt = tcp.Client.createInternetSocket(self)
        skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return skt


class _BoundConnector(tcp.Connector):
    """
    A connector that binds to a port of L{SourcePorts} and, when that port is taken, tries
    the next (up to L{TRIES}) before it reports a failure.
    """

    def __init__(self, host, port, factory, timeout, ports, reactor):
        self._ports = ports
        self._tries = TRIES
        tcp.Connector.__init__(self, host, port, factory, timeout,
                               (_any_address(host), ports.take()), reactor)

    def _makeTransport(self):
        return _ReusingClient(self.host, self.port, self.bindAddress, self, self.reactor)

    def connectionFailed(self, reason):
        self._tries -= 1
        if self._tries > 0 and _taken(reason):
            self.cancelTimeout()
            self.transport = None
            self.state = "disconnected"
            self.bindAddress = (self.bindAddress[0], self._ports.take())
            self.connect()
            return
        tcp.Connector.connectionFailed(self, reason)


def _any_address(host):
    return "::" if ":" in host else "0.0.0.0"


def connect(reactor, ip, port, factory, timeout, ports):
    """
    Open an upstream connection, from a port of C{ports} unless it is L{None} (the kernel's
    choice).  A reactor that is not a real POSIX one (a test's C{MemoryReactor}) gets a
    plain C{connectTCP} with the bind address.
    """
    if ports is None:
        return reactor.connectTCP(ip, port, factory, timeout=timeout)
    if isinstance(reactor, PosixReactorBase):
        connector = _BoundConnector(ip, port, factory, timeout, ports, reactor)
        connector.connect()
        return connector
    return reactor.connectTCP(ip, port, factory, timeout=timeout,
                              bindAddress=(_any_address(ip), ports.take()))


def check_range(low, high, path="/proc/sys/net/ipv4/"):
    """
    Log a warning when the range overlaps the kernel's ephemeral range without being
    reserved: clients could then still be given one of these ports.

    @return: the warning, or L{None}.
    """
    try:
        with open(path + "ip_local_port_range") as f:
            first, last = (int(x) for x in f.read().split())
        with open(path + "ip_local_reserved_ports") as f:
            reserved = _port_set(f.read())
    except (OSError, ValueError):
        return None
    exposed = [p for p in range(max(low, first), min(high, last) + 1) if p not in reserved]
    if not exposed:
        return None
    message = (
        "upstream-source-ports {low}-{high}: {n} of them are in the kernel's ephemeral range "
        "{first}-{last} and not in net.ipv4.ip_local_reserved_ports, so a client may get one; "
        "reserve them (sysctl net.ipv4.ip_local_reserved_ports={low}-{high}) or pick ports above {last}."
    ).format(low=low, high=high, n=len(exposed), first=first, last=last)
    log.warn(message)
    return message


def _port_set(text):
    ports = set()
    for part in text.replace("\n", ",").split(","):
        part = part.strip()
        if not part:
            continue
        first, _, last = part.partition("-")
        ports.update(range(int(first), int(last or first) + 1))
    return ports
