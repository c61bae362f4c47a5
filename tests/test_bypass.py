"""
No way around the proxy: under load, with a backend that resets connections, no client request
reaches the backend without passing through origdst (issue 12, item 1).

A client connection that gets the addresses and source port of an upstream connection the backend
has just reset matches that connection's conntrack entry (CLOSE, kept 10 s), so the nat REDIRECT
rule is never consulted and the client talks to the backend directly.  The clients leave from the
proxy's own address, as on a real host; namespace C's ephemeral range is narrowed to 300 ports so
that collisions come within a bounded load (8,000 requests, 40 s at most, only to namespace
addresses).  The backend (L{testbed.resetter}) counts, per port, the requests that arrived
without the C{x-request-id} origdst adds.

Three set-ups side by side, one port each:
  - the old rules (REDIRECT only) and the kernel's choice of upstream ports: the bypass happens;
  - the REDIRECT rule with the fail-closed rule: nothing gets through around the proxy (the
    collisions are refused instead);
  - C{conf/iptables.sh up} and origdst's default C{--upstream-source-ports}: nothing gets
    through and nothing is refused, because the collisions no longer happen.
"""

import collections
import os

from twisted.python import log
from twisted.trial import unittest

import testbed

OLD_PORT, RULE_PORT, SHIPPED_PORT = 80, 8081, 8080
OLD_PROXY, RULE_PROXY, SHIPPED_PROXY = 15001, 15003, 15002
REQUESTS, CONCURRENCY, SECONDS = 8000, 40, 40
HERE = os.path.dirname(os.path.abspath(__file__))
RESETTER = os.path.join(testbed.REPO_ROOT, "testbed", "resetter.py")
CHURN = os.path.join(testbed.REPO_ROOT, "testbed", "churn.py")
IPTABLES_SH = os.path.join(testbed.REPO_ROOT, "conf", "iptables.sh")


class BypassTests(testbed.TopologyTestCase):
    """
    The bypass, counted at the backend, before and after.
    """

    tag = "by"
    #: Why the IPv6 half cannot run here, or None.
    v6_reason = None

    @classmethod
    def build(cls, topology):
        cls.v6_reason = _ip6tables_nat_reason(topology)
        topology.exec(topology.client, ["sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40299"])
        cls.resetter = topology.start_server(
            "resetter", [topology.python, RESETTER, "--reset-every", "3"] + [
                a for p in (OLD_PORT, RULE_PORT, SHIPPED_PORT) for a in ("--port", str(p))],
            SHIPPED_PORT)
        hosts = [testbed.SERVER_V4] + ([] if cls.v6_reason else [testbed.SERVER_V6])
        for host in hosts:
            topology.add_redirect(host, OLD_PORT, OLD_PROXY, fail_closed=False)
            topology.add_redirect(host, RULE_PORT, RULE_PROXY)
        topology.exec(topology.client, [
            "bash", IPTABLES_SH, "up", "--port", str(SHIPPED_PROXY),
            "--dports", str(SHIPPED_PORT), "--uid", "0"] + (["-4"] if cls.v6_reason else []))
        for port, name, extra in (
                (OLD_PROXY, "old", ["--upstream-source-ports", "none"]),
                (RULE_PROXY, "rule", ["--upstream-source-ports", "none"]),
                (SHIPPED_PROXY, "proxy", [])):
            topology.start_proxy(["--port", "tcp6:%d" % port, "--admin", "none"] + extra,
                                 port, name=name)

    def load(self, host, port):
        """
        Run the bounded load against the backend's C{port} at C{host}.

        @return: the client's result and the backend's counts for that port and family.
        """
        peer = testbed.CLIENT_V6 if ":" in host else "::ffff:" + testbed.CLIENT_V4
        proc = self.topology.start_script(CHURN, [host, port, REQUESTS, CONCURRENCY, SECONDS])
        result = self.topology.finish_script(proc, timeout=SECONDS + 20)
        with open(self.resetter.log_path) as f:
            counts = collections.Counter(
                fields[0] for fields in (line.split() for line in f)
                if len(fields) == 3 and fields[0] in ("proxied", "direct")
                and fields[1:] == [str(port), peer])
        log.msg("bypass: %s port %d: client %r, backend %r" % (host, port, result, dict(counts)))
        return result, counts

    def v6(self):
        """
        @return: the backend's IPv6 address, or skip where ip6tables has no nat table.
        """
        if self.v6_reason:
            raise unittest.SkipTest(self.v6_reason)
        return testbed.SERVER_V6

    def check_old_rules_are_bypassed(self, host):
        result, counts = self.load(host, OLD_PORT)
        self.assertGreater(counts["direct"], 0, (result, counts))

    def check_fail_closed(self, host):
        result, counts = self.load(host, RULE_PORT)
        self.assertEqual(counts["direct"], 0, (result, counts))
        self.assertGreater(counts["proxied"], REQUESTS // 2, (result, counts))

    def check_shipped_setup(self, host):
        result, counts = self.load(host, SHIPPED_PORT)
        self.assertEqual(counts["direct"], 0, (result, counts))
        self.assertNotIn("ConnectionRefusedError", result["errors"], result)
        self.assertNotIn("ConnectionResetError", result["errors"], result)
        # A GET on a pooled connection the backend has just reset is retried; an occasional
        # local 503 when the retry meets a reset too is the documented behaviour, not a bypass.
        self.assertGreaterEqual(result["ok"], REQUESTS - 10, result)
        self.assertGreaterEqual(counts["proxied"], result["ok"], (result, counts))

    def test_1_old_rules_are_bypassed(self):
        """
        With the REDIRECT rule alone, some client requests reach the backend directly.
        """
        self.check_old_rules_are_bypassed(testbed.SERVER_V4)

    def test_1_old_rules_are_bypassed_v6(self):
        """
        The same over IPv6: the ip6tables REDIRECT rule alone is bypassed too.
        """
        self.check_old_rules_are_bypassed(self.v6())

    def test_2_fail_closed(self):
        """
        With the fail-closed rule, no request reaches the backend around the proxy.
        """
        self.check_fail_closed(testbed.SERVER_V4)

    def test_2_fail_closed_v6(self):
        """
        The same over IPv6, with the ip6tables fail-closed rule.
        """
        self.check_fail_closed(self.v6())

    def test_3_shipped_setup(self):
        """
        conf/iptables.sh and the default upstream source ports: none around the proxy, none
        refused, every request answered through it.
        """
        self.check_shipped_setup(testbed.SERVER_V4)

    def test_3_shipped_setup_v6(self):
        """
        The same over IPv6: conf/iptables.sh's ip6tables ORIGDST chains and the default
        upstream source ports.
        """
        self.check_shipped_setup(self.v6())

    def test_4_iptables_down(self):
        """
        conf/iptables.sh down removes its nat and filter rules again, for both families.
        """
        topology = self.topology
        tools = ("iptables",) if self.v6_reason else ("iptables", "ip6tables")
        for tool in tools:
            rules = topology.exec(topology.client, [tool, "-S", "ORIGDST"]).stdout
            self.assertIn("--ctstate DNAT -j REJECT --reject-with tcp-reset", rules)
            self.assertIn("! --uid-owner 0", rules)
        topology.exec(topology.client, ["bash", IPTABLES_SH, "down"])
        for tool in tools:
            for table in ("nat", "filter"):
                out = topology.exec(topology.client, [tool, "-t", table, "-S"]).stdout
                self.assertNotIn("ORIGDST", out)


def _ip6tables_nat_reason(topology):
    """
    @return: why ip6tables cannot redirect in C{topology}'s client namespace, or L{None}.
    """
    probe = topology.exec(topology.client, ["ip6tables", "-w", "5", "-t", "nat", "-S"],
                          check=False)
    if probe.returncode != 0:
        return "ip6tables has no nat table here (no IPv6 REDIRECT): %s" % (
            (probe.stderr or probe.stdout).strip()[-200:],)
    return None


def testSuite():
    return testbed.suite(BypassTests)
