"""
Resource ceilings end to end (issue 12, item 4): 10,000 concurrent idle client connections and
1,000 concurrent destinations, each held and released, in network namespaces of their own
(tag C{ce}).

One proxy per ceiling, so that neither measures memory the other freed: the first takes
C{10.250.0.3:80}, the second 1,000 addresses C{10.250.16.0}-C{10.250.19.231} added to the
backend namespace's interface (C{/32} each, reached from C through one route via
C{10.250.0.3}, so C keeps a single neighbour entry) and served by the one wildcard backend.
The clients are a single process of raw non-blocking sockets (L{tests.holdclients}) run as the
unprivileged uid; the REDIRECT rules come with their fail-closed rules, as C{conf/iptables.sh}
installs them.

Each test counts the proxy's open descriptors (C{/proc/PID/fd}) and its hosts (C{/clusters}) at
the start, checks that the held state is exactly what it should be (one descriptor per idle
client connection, one host and one pooled upstream connection per destination), that a
request still works at the ceiling, and that after the release and the sweep both are back
where they started.  The proxy's resident memory growth over the count is logged (trial's
C{test.log}: C{ceiling: ...}) and bounded; the README gives the figures.
"""

import json
import os
import resource
import subprocess
import sys

from twisted.python import log
from twisted.trial import unittest

import testbed

IDLE_PROXY, HOSTS_PROXY = 15011, 15012
IDLE_ADMIN, HOSTS_ADMIN = 19911, 19912
IDLE = 10000
HOSTS = 1000
#: Descriptors beyond the ceiling: the proxy's own (listeners, log, admin), the pooled upstream
#: connections, the test's requests at the ceiling.
MARGIN = 1000
#: The destinations: a /22 in S; the first HOSTS are held, a few of the rest warm up.
NETWORK = "10.250.16.0/22"
WARM = 8
ADDRESSES = ["10.250.%d.%d" % (16 + i // 256, i % 256) for i in range(HOSTS + WARM + 1)]
TARGETS, WARMUP, BEYOND = ADDRESSES[:HOSTS], ADDRESSES[HOSTS:HOSTS + WARM], ADDRESSES[-1]
#: Seconds between sweeps.  The idle proxy's is short, so the release is quick; the hosts
#: proxy's must outlast creating and counting the 1,000 hosts (a host lives at least one
#: interval after its last use, at most two).
IDLE_SWEEP, HOSTS_SWEEP = 2, 10
#: Generous upper bounds, to catch a regression (a buffer kept per connection), not to race.
MAX_KIB_PER_CONNECTION = 16
MAX_KIB_PER_HOST = 64

HERE = os.path.dirname(os.path.abspath(__file__))
HOLDCLIENTS = os.path.join(HERE, "holdclients.py")

#: Runs in namespace C: one admin request, its body printed.
FETCH = """
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode("utf-8"))
"""


def _needed_reason():
    """
    @return: why this machine cannot hold the ceilings, or L{None}.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = IDLE + MARGIN
    if hard != resource.RLIM_INFINITY and hard < need:
        return ("the hard limit on open files is %d; holding %d client connections needs %d "
                "(raise it, e.g. ulimit -Hn %d as root)" % (hard, IDLE, need, need))
    return None


class CeilingTests(testbed.TopologyTestCase):
    """
    The two ceilings, each on a proxy of its own.
    """

    tag = "ce"

    @classmethod
    def build(cls, topology):
        reason = _needed_reason()
        if reason:
            raise unittest.SkipTest(reason)
        server_dev = topology.server + "0"
        topology.exec(topology.server, ["ip", "-batch", "-"], input="".join(
            "addr add %s/32 dev %s\n" % (a, server_dev) for a in ADDRESSES))
        topology.exec(topology.client, ["ip", "route", "add", NETWORK, "via", testbed.SERVER_V4])
        topology.start_backend(80)
        topology.add_redirect(testbed.SERVER_V4, 80, IDLE_PROXY)
        topology.add_redirect(NETWORK, 80, HOSTS_PROXY)
        # The clients open connections faster than Twisted's default backlog of 50
        # absorbs: these ports rely on origdst's default of 1024.
        cls.idle_proxy = topology.start_proxy([
            "--port", "tcp6:%d" % IDLE_PROXY,
            "--admin", "tcp:%d:interface=127.0.0.1" % IDLE_ADMIN,
            "--cleanup-interval", str(IDLE_SWEEP)], IDLE_PROXY, name="idle")
        # The pooled connections stay until the sweep removes their host.
        cls.hosts_proxy = topology.start_proxy([
            "--port", "tcp6:%d" % HOSTS_PROXY,
            "--admin", "tcp:%d:interface=127.0.0.1" % HOSTS_ADMIN,
            "--cleanup-interval", str(HOSTS_SWEEP),
            "--upstream-idle-timeout", "60"], HOSTS_PROXY, name="hosts")
        for port in (IDLE_ADMIN, HOSTS_ADMIN):
            testbed.wait_for(lambda: topology.listening(topology.client, port), 10,
                             what="the admin endpoint on %d" % port)

    # -- helpers ---------------------------------------------------------------------

    def hosts(self, admin_port):
        """
        @return: the proxy's hosts, C{{key: cx_active}}, from C{/clusters}.
        """
        out = self.topology.exec(self.topology.client, [
            sys.executable, "-c", FETCH,
            "http://127.0.0.1:%d/clusters?format=json" % admin_port]).stdout
        [cluster] = json.loads(out)["cluster_statuses"]
        return {h["key"]: {s["name"]: s["value"] for s in h["stats"]}["cx_active"]
                for h in cluster["host_statuses"]}

    def clients(self, targets, count, keep):
        """
        Start L{tests.holdclients} in C as the unprivileged client.

        @return: the process and the first line it printed (decoded).
        """
        script = os.path.join(os.path.dirname(self.topology.client_script), "holdclients.py")
        if not os.path.exists(script):
            with open(HOLDCLIENTS, "rb") as src, open(script, "wb") as dst:
                dst.write(src.read())
            os.chmod(script, 0o644)
        spec = {"targets": [[t, 80] for t in targets], "count": count, "keep": keep,
                "window": 64, "timeout": 60}
        proc = subprocess.Popen(
            self.topology.as_client([self.topology.client_python, script, json.dumps(spec)]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        self.addCleanup(_reap, proc)
        line = proc.stdout.readline()
        if not line:
            proc.wait(10)
            self.fail("holdclients failed (%s): %s" % (proc.returncode, proc.stderr.read()))
        return proc, json.loads(line)

    def answered(self, targets, count):
        """
        Make C{count} requests over C{targets}, one connection each, closed once answered.
        """
        proc, result = self.clients(targets, count, keep=False)
        proc.wait(10)
        self.assertEqual((result["statuses"], result["errors"]), ({"200": count}, {}), result)

    def settle(self, pid, what, predicate, timeout):
        """
        Wait until C{predicate(fds)} holds for the proxy's open descriptor count.
        """
        seen = []

        def check():
            seen.append(_fds(pid))
            return predicate(seen[-1])

        try:
            testbed.wait_for(check, timeout, interval=0.2, what=what)
        except testbed.TopologyError as e:
            self.fail("%s (open descriptors: %s at the start of the wait, %s at its end; "
                      "its sockets but the client connections: %s; its hosts: %s)"
                      % (e, seen[0], seen[-1], self.other_sockets(pid), self.host_figures()))

    def host_figures(self):
        """
        @return: both proxies' C{/clusters} figures but the zeros, for a failure message.
        """
        figures = {}
        for port in (IDLE_ADMIN, HOSTS_ADMIN):
            out = self.topology.exec(self.topology.client, [
                sys.executable, "-c", FETCH,
                "http://127.0.0.1:%d/clusters?format=json" % port]).stdout
            for h in json.loads(out)["cluster_statuses"][0]["host_statuses"][:5]:
                figures["%d %s" % (port, h["key"])] = {
                    s["name"]: s["value"] for s in h["stats"] if s["value"]}
        return figures

    def other_sockets(self, pid):
        """
        @return: C{ss}'s lines for the proxy's TCP sockets other than its accepted client
            connections, to say what a descriptor count that does not settle is made of.
        """
        out = self.topology.exec(self.topology.client, ["ss", "-Htanp"], check=False).stdout
        mine = [line for line in out.splitlines() if "pid=%d," % pid in line]
        return [" ".join(line.split()[:5]) for line in mine
                if not line.split()[3].endswith((":%d" % IDLE_PROXY, ":%d" % HOSTS_PROXY))][:20]

    def one_request(self, host):
        got = self.topology.run_client({"host": host, "port": 80, "timeout": 15,
                                        "requests": [{"path": "/peer"}]})
        self.assertIsNone(got["error"], got)
        self.assertEqual(got["responses"][0]["status"], 200, got)

    def check_fd_limit(self, pid):
        """
        The proxy raised its soft limit to the hard one, far enough for the ceiling.
        """
        soft = _soft_fd_limit(pid)
        self.assertEqual(soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        self.assertGreaterEqual(soft, IDLE + MARGIN)

    # -- tests -----------------------------------------------------------------------

    def test_1_idle_connections(self):
        """
        10,000 idle keep-alive client connections (one request each) are held at one
        descriptor apiece and no upstream connection, a new request is still answered, and
        after the clients go the descriptors and hosts are back where they started.
        """
        pid = _python_pid(self.idle_proxy.popen.pid)
        self.check_fd_limit(pid)
        start_fds, start_hosts = _fds(pid), self.hosts(IDLE_ADMIN)
        self.assertEqual(start_hosts, {})
        # Warm-up, then its host and pooled connections swept away again.
        self.answered([testbed.SERVER_V4], 50)
        self.settle(pid, "the warm-up released", lambda n: n == start_fds, 15)
        testbed.wait_for(lambda: self.hosts(IDLE_ADMIN) == start_hosts, 10, interval=0.5,
                         what="the warm-up host swept")
        before = _rss_kib(pid)

        proc, result = self.clients([testbed.SERVER_V4], IDLE, keep=True)
        self.assertEqual((result["held"], result["statuses"], result["errors"]),
                         (IDLE, {"200": IDLE}, {}), result)
        # Held: one descriptor per client connection once the pooled upstream connections
        # have timed out and the host is swept.
        self.settle(pid, "%d idle connections held alone" % IDLE,
                    lambda n: n == start_fds + IDLE, 20)
        testbed.wait_for(lambda: self.hosts(IDLE_ADMIN) == {}, 10, interval=0.5,
                         what="the host swept while the connections idle")
        held = _rss_kib(pid)
        per_connection = (held - before) / IDLE
        log.msg("ceiling: %s: %d idle connections, RSS %d -> %d KiB, %.2f KiB each, held in %.1f s"
                % (_runtime(), IDLE, before, held, per_connection, result["elapsed"]))

        self.one_request(testbed.SERVER_V4)

        proc.stdin.write("release\n")
        proc.stdin.flush()
        released = json.loads(proc.stdout.readline())
        proc.wait(10)
        self.assertEqual(released, {"closed_by_peer": 0})
        self.settle(pid, "the idle connections released", lambda n: n == start_fds, 20)
        testbed.wait_for(lambda: self.hosts(IDLE_ADMIN) == start_hosts, 10, interval=0.5,
                         what="the hosts back to the start")
        self.assertLess(per_connection, MAX_KIB_PER_CONNECTION)

    def test_2_destinations(self):
        """
        1,000 destinations are held as 1,000 hosts with one pooled connection each, a new
        destination is still served, and the sweep removes them all and closes their
        connections.
        """
        pid = _python_pid(self.hosts_proxy.popen.pid)
        self.check_fd_limit(pid)
        start_fds, start_hosts = _fds(pid), self.hosts(HOSTS_ADMIN)
        self.assertEqual(start_hosts, {})
        self.answered(WARMUP, WARM)
        self.settle(pid, "the warm-up pooled", lambda n: n == start_fds + WARM, 10)
        before = _rss_kib(pid)

        proc, result = self.clients(TARGETS, HOSTS, keep=False)
        proc.wait(10)
        self.assertEqual((result["statuses"], result["errors"]), ({"200": HOSTS}, {}), result)
        # Held: every destination a host with one pooled connection, and nothing else open
        # (the client connections closed, and the warm-up's hosts pooled or swept).
        targets = set("%s:80" % a for a in TARGETS)

        def held_state():
            hosts, fds = self.hosts(HOSTS_ADMIN), _fds(pid)
            if targets <= set(hosts) and fds == start_fds + sum(hosts.values()):
                return hosts
            return None

        held_hosts = testbed.wait_for(held_state, 10, interval=0.3, what="1,000 hosts held")
        held = _rss_kib(pid)
        self.assertEqual(set(held_hosts) - set("%s:80" % a for a in WARMUP), targets)
        self.assertEqual(set(held_hosts.values()), {1}, held_hosts)
        per_host = (held - before) / HOSTS
        log.msg("ceiling: %s: %d hosts, RSS %d -> %d KiB, %.2f KiB each, made in %.1f s"
                % (_runtime(), HOSTS, before, held, per_host, result["elapsed"]))

        self.one_request(BEYOND)
        self.one_request(TARGETS[0])

        self.settle(pid, "the hosts swept", lambda n: n == start_fds, 2 * HOSTS_SWEEP + 10)
        self.assertEqual(self.hosts(HOSTS_ADMIN), start_hosts)
        self.assertLess(per_host, MAX_KIB_PER_HOST)


def _reap(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, 9)
    proc.communicate(timeout=10)


def _python_pid(pid):
    """
    @return: the proxy's own process: C{pid} (ip netns exec execs it) or, under a wrapper
        that forks, the descendant that runs origdst.
    """
    for candidate in [pid] + testbed.descendants(pid):
        try:
            with open("/proc/%d/cmdline" % candidate, "rb") as f:
                if b"origdst" in f.read():
                    return candidate
        except OSError:
            pass
    raise AssertionError("no origdst process under %d" % pid)


def _fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def _rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


def _soft_fd_limit(pid):
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                value = line.split()[3]
                return resource.RLIM_INFINITY if value == "unlimited" else int(value)
    raise AssertionError("no open files limit for %d" % pid)


def _runtime():
    return "%s %s" % (sys.implementation.name, ".".join(map(str, sys.version_info[:3])))


def testSuite():
    return testbed.suite(CeilingTests)
