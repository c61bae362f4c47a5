"""
Tests for L{origdst.policy}: who may use the proxy and where they may go.
"""

from twisted.trial import unittest

from origdst.config import Settings
from origdst.policy import Policy


def policy(**settings):
    return Policy(Settings(**settings))


class DestinationTests(unittest.TestCase):
    def test_default_allows_everything(self):
        """
        With no rules every destination may be reached.
        """
        p = policy()
        self.assertIsNone(p.destination_denied("169.254.169.254", 80))
        self.assertIsNone(p.destination_denied("fd00::1", 8080))

    def test_allow_list(self):
        """
        With an allow list, only what it names may be reached, ports included.
        """
        p = policy(allow=("10.0.0.0/8:80,443", "[fd00::/8]:8000-8080"))
        self.assertIsNone(p.destination_denied("10.1.2.3", 443))
        self.assertEqual(p.destination_denied("10.1.2.3", 8080), "not in --allow")
        self.assertEqual(p.destination_denied("192.168.1.1", 80), "not in --allow")
        self.assertIsNone(p.destination_denied("fd00::5", 8042))
        self.assertEqual(p.destination_denied("fd00::5", 80), "not in --allow")

    def test_deny_wins(self):
        """
        A deny rule wins over an allow rule that also matches.
        """
        p = policy(allow=("*:80",), deny=("169.254.169.254/32",))
        self.assertIsNone(p.destination_denied("10.0.0.1", 80))
        self.assertEqual(
            p.destination_denied("169.254.169.254", 80), "denied by --deny 169.254.169.254/32"
        )

    def test_families_do_not_mix(self):
        """
        An IPv4 rule never matches an IPv6 destination, nor the reverse.
        """
        p = policy(deny=("0.0.0.0/0",))
        self.assertIsNone(p.destination_denied("fd00::1", 80))
        self.assertIsNotNone(p.destination_denied("10.0.0.1", 80))

    def test_verdicts_cached(self):
        """
        The same destination gives the same answer, from the cache the second
        time.
        """
        p = policy(deny=("10.0.0.0/8",))
        first = p.destination_denied("10.0.0.1", 80)
        self.assertEqual(p._verdicts[("10.0.0.1", 80)], first)
        self.assertEqual(p.destination_denied("10.0.0.1", 80), first)


class HostTests(unittest.TestCase):
    def test_host_patterns(self):
        """
        Host names match exactly or by a *. suffix, ignoring case, port and a
        final dot; deny wins.
        """
        p = policy(allow_host=("example.com", "*.example.org"), deny_host=("bad.example.org",))
        self.assertIsNone(p.host_denied(b"Example.COM:8080"))
        self.assertIsNone(p.host_denied(b"a.b.example.org."))
        self.assertEqual(p.host_denied(b"example.org"), "not in --allow-host")
        self.assertEqual(p.host_denied(b"bad.example.org"), "denied by --deny-host bad.example.org")
        self.assertEqual(p.host_denied(b"[fd00::1]:80"), "not in --allow-host")

    def test_no_host_rules(self):
        """
        Without host rules any name passes.
        """
        self.assertIsNone(policy().host_denied(b"anything"))


class ServerNameTests(unittest.TestCase):
    def test_sni_patterns(self):
        """
        TLS server names match exactly or by a *. suffix (not the bare
        domain); deny wins; with an allow list a missing name is refused.
        """
        p = policy(allow_sni=("example.com", "*.example.org"), deny_sni=("bad.example.org",))
        self.assertIsNone(p.sni_denied("example.com"))
        self.assertIsNone(p.sni_denied("a.b.example.org"))
        self.assertEqual(p.sni_denied("example.org"), "not in --allow-sni")
        self.assertEqual(p.sni_denied("bad.example.org"), "denied by --deny-sni bad.example.org")
        self.assertEqual(p.sni_denied(None), "no TLS server name and --allow-sni is set")

    def test_no_sni_rules(self):
        """
        Without SNI rules any name, and none, passes; a deny list alone lets
        a connection without a name through.
        """
        self.assertIsNone(policy().sni_denied("anything"))
        self.assertIsNone(policy().sni_denied(None))
        self.assertIsNone(policy(deny_sni=("a.example",)).sni_denied(None))


class SourceTests(unittest.TestCase):
    def test_sources(self):
        """
        Without --allow-source every client may use the proxy; with it, only
        those in its networks.
        """
        self.assertTrue(policy().source_allowed("10.9.9.9"))
        p = policy(allow_source=("127.0.0.0/8", "10.250.0.0/24", "fd00::/8"))
        self.assertTrue(p.source_allowed("10.250.0.2"))
        self.assertTrue(p.source_allowed("fd00::2"))
        self.assertFalse(p.source_allowed("10.250.1.2"))

