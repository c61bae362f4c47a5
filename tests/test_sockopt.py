"""
Tests for L{origdst.sockopt}: decoding what the kernel returns.
"""

import errno
import socket
import struct

from twisted.trial import unittest

from origdst import sockopt


def sockaddr_in(ip, port):
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H4s8x", port, socket.inet_aton(ip))


def sockaddr_in6(ip, port):
    return struct.pack("=H", socket.AF_INET6) + struct.pack(
        "!HI16sI", port, 0, socket.inet_pton(socket.AF_INET6, ip), 0
    )


class FakeSocket:
    """
    Stands in for an accepted socket: the kernel's answers are the input here.
    """

    def __init__(self, local, answers):
        self.local = local
        self.answers = answers
        self.asked = []

    def getsockname(self):
        return self.local

    def getsockopt(self, level, option, size):
        self.asked.append((level, option, size))
        answer = self.answers[level]
        if isinstance(answer, OSError):
            raise answer
        return answer


class DecodeTests(unittest.TestCase):
    def test_ipv4(self):
        """
        A sockaddr_in decodes to dotted quad and host-order port.
        """
        self.assertEqual(sockopt.decode_sockaddr_in(sockaddr_in("10.250.0.3", 8080)), ("10.250.0.3", 8080))

    def test_ipv6(self):
        """
        A sockaddr_in6 decodes to the compressed address and port.
        """
        data = sockaddr_in6("fd00:250::3", 80)
        self.assertEqual(len(data), 28)
        self.assertEqual(sockopt.decode_sockaddr_in6(data), ("fd00:250::3", 80))

    def test_wrong_family_or_size(self):
        """
        A buffer of the wrong family or size is an error, not an address.
        """
        self.assertRaises(ValueError, sockopt.decode_sockaddr_in, sockaddr_in6("::1", 80))
        self.assertRaises(ValueError, sockopt.decode_sockaddr_in6, sockaddr_in("10.0.0.1", 80) + b"\0" * 12)
        self.assertRaises(ValueError, sockopt.decode_sockaddr_in, b"\x02\x00")


class OriginalDestinationTests(unittest.TestCase):
    def test_ipv4_socket(self):
        """
        An IPv4 socket is asked with SOL_IP, SO_ORIGINAL_DST.
        """
        sock = FakeSocket(("127.0.0.1", 4999), {socket.SOL_IP: sockaddr_in("10.250.0.3", 80)})
        self.assertEqual(sockopt.original_destination(sock), ("10.250.0.3", 80))
        self.assertEqual(sock.asked, [(socket.SOL_IP, 80, 16)])

    def test_ipv4_mapped_on_dual_stack(self):
        """
        An IPv4 connection on a dual-stack IPv6 socket is decided by its local
        address, not the socket's family: it needs the IPv4 option.
        """
        sock = FakeSocket(("::ffff:127.0.0.1", 4999, 0, 0), {socket.SOL_IP: sockaddr_in("10.250.0.3", 80)})
        self.assertEqual(sockopt.original_destination(sock), ("10.250.0.3", 80))

    def test_ipv6_socket(self):
        """
        An IPv6 connection is asked with SOL_IPV6, IP6T_SO_ORIGINAL_DST.
        """
        sock = FakeSocket(("::1", 4999, 0, 0), {sockopt.SOL_IPV6: sockaddr_in6("fd00:250::3", 80)})
        self.assertEqual(sockopt.original_destination(sock), ("fd00:250::3", 80))
        self.assertEqual(sock.asked, [(sockopt.SOL_IPV6, 80, 28)])

    def test_not_redirected(self):
        """
        ENOENT (no conntrack entry) means the connection was not redirected.
        """
        sock = FakeSocket(("127.0.0.1", 4999), {socket.SOL_IP: OSError(errno.ENOENT, "No such file or directory")})
        self.assertRaises(sockopt.NoOriginalDestination, sockopt.original_destination, sock)

    def test_other_errors_propagate(self):
        """
        Other errors are not disguised as a missing destination.
        """
        sock = FakeSocket(("127.0.0.1", 4999), {socket.SOL_IP: OSError(errno.EBADF, "Bad file descriptor")})
        self.assertRaises(OSError, sockopt.original_destination, sock)

    def test_real_unredirected_socket(self):
        """
        A real loopback connection without any NAT has no original destination,
        or (where connection tracking sees it) its own local address.
        """
        server = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(server.close)
        client = socket.create_connection(server.getsockname())
        self.addCleanup(client.close)
        accepted, _ = server.accept()
        self.addCleanup(accepted.close)
        try:
            destination = sockopt.original_destination(accepted)
        except sockopt.NoOriginalDestination:
            return
        self.assertEqual(destination, accepted.getsockname())
