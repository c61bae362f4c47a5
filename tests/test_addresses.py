"""
Tests for L{origdst.addresses}: the one way addresses are parsed and named.
"""

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.trial import unittest

from origdst import addresses


class FormatTests(unittest.TestCase):
    def test_host_port(self):
        """
        Host keys are ip:port, IPv6 in brackets.
        """
        self.assertEqual(addresses.host_port("10.250.0.3", 80), "10.250.0.3:80")
        self.assertEqual(addresses.host_port("fd00::3", 80), "[fd00::3]:80")

    def test_plain_ip(self):
        """
        IPv4-mapped addresses are given in plain IPv4 form.
        """
        self.assertEqual(addresses.plain_ip("::ffff:10.250.0.2"), "10.250.0.2")
        self.assertEqual(addresses.plain_ip("fd00:0::3"), "fd00::3")
        self.assertEqual(addresses.plain_ip("10.0.0.1"), "10.0.0.1")

    def test_socket_ip(self):
        """
        A kernel's address is given as L{addresses.plain_ip} gives it.
        """
        for ip in ("10.0.0.1", "::ffff:10.250.0.2", "fd00:0::3", "fe80::1%eth0"):
            self.assertEqual(addresses.socket_ip(ip), addresses.plain_ip(ip))

    def test_endpoint(self):
        """
        A Twisted address becomes C{(ip, port)}, IPv4-mapped ones plain.
        """
        self.assertEqual(addresses.endpoint(IPv4Address("TCP", "10.0.0.1", 5)), ("10.0.0.1", 5))
        self.assertEqual(
            addresses.endpoint(IPv6Address("TCP", "::ffff:10.0.0.1", 5)), ("10.0.0.1", 5)
        )

    def test_describe_and_optional(self):
        """
        Log lines name a missing address C{?}; JSON fields leave it null.
        """
        self.assertEqual(addresses.describe(("fd00::2", 40000)), "[fd00::2]:40000")
        self.assertEqual(addresses.describe(None), "?")
        self.assertEqual(addresses.optional(("10.0.0.1", 1)), "10.0.0.1:1")
        self.assertIsNone(addresses.optional(None))

    def test_stat_name(self):
        """
        Listening addresses as Envoy names them in stats.
        """
        self.assertEqual(addresses.stat_name("0.0.0.0", 4999), "0.0.0.0_4999")
        self.assertEqual(addresses.stat_name("::", 4999), "[__]_4999")

    def test_host_header(self):
        """
        A Host value for an address leaves out port 80 and brackets IPv6.
        """
        self.assertEqual(addresses.host_header("10.0.0.1", 80), b"10.0.0.1")
        self.assertEqual(addresses.host_header("fd00::3", 8080), b"[fd00::3]:8080")


class ParseTests(unittest.TestCase):
    def test_authority(self):
        """
        An authority is a host and an optional port; IP hosts come out plain.
        """
        self.assertEqual(addresses.parse_authority(b"example.com"), ("example.com", 80))
        self.assertEqual(addresses.parse_authority(b"10.0.0.1:8080"), ("10.0.0.1", 8080))
        self.assertEqual(addresses.parse_authority(b"[fd00:0::3]:81"), ("fd00::3", 81))
        self.assertEqual(addresses.parse_authority(b"[::ffff:10.0.0.1]"), ("10.0.0.1", 80))
        self.assertEqual(addresses.parse_authority(b"10.0.0.1", None), ("10.0.0.1", None))

    def test_malformed_authority(self):
        """
        Bad ports, unclosed brackets and bracketed names are refused.
        """
        for authority in (b"a:0", b"a:65536", b"a:x", b"[fd00::3", b"[name]:80", b"[::1]x", b":80"):
            self.assertIsNone(addresses.parse_authority(authority), authority)

    def test_is_ip(self):
        """
        Addresses are IPs; names are not.
        """
        self.assertTrue(addresses.is_ip("fd00::3"))
        self.assertFalse(addresses.is_ip("example.com"))
