"""
Where a redirected connection was really going.

iptables' REDIRECT rewrites the destination of a connection to the proxy's port;
netfilter's connection tracking still knows the original one and hands it out
through C{getsockopt(SOL_IP, SO_ORIGINAL_DST)} (IPv4) or
C{getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)} (IPv6).

C{python -m origdst.sockopt [PORT]} is a small demonstration server that prints
the original destination of each connection it accepts.
"""

import errno
import socket
import struct
import sys

from origdst.addresses import host_port, plain_ip, socket_ip

SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80
SOL_IPV6 = getattr(socket, "SOL_IPV6", 41)

# sa_family is in host byte order, the port and address in network order.
_FAMILY = struct.Struct("=H")
_SOCKADDR_IN = struct.Struct("!2xH4s8x")
_SOCKADDR_IN6 = struct.Struct("!2xHI16sI")


class NoOriginalDestination(Exception):
    """
    The kernel has no original destination for this connection: it was not
    redirected (no iptables rule matched, or connection tracking is off).
    """


def decode_sockaddr_in(data):
    """
    Decode a C{struct sockaddr_in} as returned by C{SO_ORIGINAL_DST}.

    @return: C{(ip, port)} with C{ip} in dotted-quad form.
    """
    if len(data) < _SOCKADDR_IN.size:
        raise ValueError(f"sockaddr_in too short: {len(data)} bytes")
    (family,) = _FAMILY.unpack_from(data)
    port, ip = _SOCKADDR_IN.unpack_from(data)
    if family != socket.AF_INET:
        raise ValueError(f"not an AF_INET address: family {family}")
    return socket.inet_ntop(socket.AF_INET, ip), port


def decode_sockaddr_in6(data):
    """
    Decode a C{struct sockaddr_in6} as returned by C{IP6T_SO_ORIGINAL_DST}.

    @return: C{(ip, port)} with C{ip} in compressed IPv6 form.
    """
    if len(data) < _SOCKADDR_IN6.size:
        raise ValueError(f"sockaddr_in6 too short: {len(data)} bytes")
    (family,) = _FAMILY.unpack_from(data)
    port, _flow, ip, _scope = _SOCKADDR_IN6.unpack_from(data)
    if family != socket.AF_INET6:
        raise ValueError(f"not an AF_INET6 address: family {family}")
    return socket.inet_ntop(socket.AF_INET6, ip), port


def _is_ipv4(local_ip):
    """
    A dual-stack IPv6 socket carries IPv4 connections as IPv4-mapped addresses;
    netfilter tracked those as IPv4, so they need the IPv4 option.
    """
    return ":" not in local_ip or ":" not in socket_ip(local_ip)


def original_destination(sock):
    """
    Read the original destination of an accepted, redirected connection.

    @param sock: the accepted socket.
    @return: C{(ip, port)}; IPv4 destinations reached through a dual-stack
        socket are given in plain dotted-quad form.
    @raise NoOriginalDestination: when the kernel has none for this socket.
    """
    local_ip = sock.getsockname()[0]
    try:
        if _is_ipv4(local_ip):
            data = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN.size)
            return decode_sockaddr_in(data)
        data = sock.getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST, _SOCKADDR_IN6.size)
        return decode_sockaddr_in6(data)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOPROTOOPT, errno.EINVAL):
            raise NoOriginalDestination(e.strerror)
        raise


def main(argv=None):
    """
    Accept connections on a port and print where each was going: the
    tutorial's first step, to check an iptables rule before running the proxy.
    """
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) > 1 or (argv and not argv[0].isdigit()):
        print("usage: python -m origdst.sockopt [PORT]", file=sys.stderr)
        return 2
    port = int(argv[0]) if argv else 4999
    server = socket.create_server(
        ("::", port), family=socket.AF_INET6, dualstack_ipv6=True
    )
    print(f"Listening on port {port}; redirect traffic here with iptables.")
    sys.stdout.flush()
    try:
        while True:
            conn, peer = server.accept()
            with conn:
                source = host_port(plain_ip(peer[0]), peer[1])
                try:
                    ip, dport = original_destination(conn)
                except NoOriginalDestination as e:
                    print(f"{source} -> no original destination ({e})")
                else:
                    print(f"{source} -> original destination {host_port(ip, dport)}")
                sys.stdout.flush()
    except KeyboardInterrupt:
        return 0
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main())
