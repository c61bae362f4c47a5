"""
The fixture of the fault tests (L{tests.test_faults}): one topology per class, a backend that
commits faults on request (L{testbed.faults}), the proxy with its admin port and a JSON access
log, and one long-lived client (C{tests/faultclient.py}) that holds named connections in C.

Every test starts with no host in the cluster, opens a bystander keep-alive connection to
another host (the backend's IPv6 address, port 8080) with one request on it, commits its
fault, and ends with L{FaultTestCase.assertRecovered}: a second request on the bystander
connection succeeds on the same connection, and once the bystander is closed the proxy's open
descriptors and C{/clusters} are back to what they were before the test.
"""

import json
import os
import select
import shutil
import signal
import subprocess
from twisted.trial import unittest

import testbed
from testbed.figures import stat_values

PROXY_PORT = 15001
ADMIN_PORT = 9901
#: The backend's port the faults go to, over IPv4.
FAULTY = 80
#: The bystander's port, over IPv6: another host, so a fault's pool is its own.
BYSTANDER = 8080
#: In S nothing listens here.
CLOSED = 81
REQUEST_TIMEOUT = 2
CONNECT_TIMEOUT = 1
STREAM_IDLE_TIMEOUT = 3

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT = os.path.join(HERE, "faultclient.py")

RESET = "upstream connect error or disconnect/reset before headers. reset reason: "


def request(method, path, headers=(), body=None, host="10.250.0.3"):
    """
    @return: a request's bytes as latin-1 text, for the client's C{send}.
    """
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: %s" % host]
    lines += ["%s: %s" % h for h in headers]
    if body is not None and not any(h[0].lower() == "content-length" for h in headers):
        lines.append("Content-Length: %d" % len(body))
    return "\r\n".join(lines) + "\r\n\r\n" + (body or "")


def header(response, name):
    """
    @return: the values of C{name} in a response from the client, comma lists split.
    """
    found = []
    for k, v in response["headers"]:
        if k.lower() == name:
            found += [p.strip().lower() for p in v.split(",")]
    return found


class FaultClient:
    """
    The long-lived client in C, spoken to a JSON line at a time.
    """

    def __init__(self, topology):
        script = os.path.join(os.path.dirname(topology.client_script), "faultclient.py")
        shutil.copyfile(CLIENT, script)
        os.chmod(script, 0o644)
        self.proc = subprocess.Popen(
            topology.as_client([topology.client_python, script]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, bufsize=1, start_new_session=True)

    def __call__(self, op, c=None, wait=30, **args):
        args["op"] = op
        if c is not None:
            args["c"] = c
        self.proc.stdin.write(json.dumps(args) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], wait)
        if not ready:
            raise testbed.TopologyError("the fault client did not answer %r in %ss" % (args, wait))
        line = self.proc.stdout.readline()
        if not line:
            raise testbed.TopologyError("the fault client exited (%r)" % (self.proc.poll(),))
        return json.loads(line)

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(5)


class FaultTestCase(testbed.TopologyTestCase):
    """
    One topology per class; see the module docstring for what every test does.
    """

    tag = "fl"
    client = None

    @classmethod
    def build(cls, topology):
        try:
            topology.add_redirect(testbed.SERVER_V4, [FAULTY, CLOSED, BYSTANDER], PROXY_PORT)
            topology.add_redirect(testbed.SERVER_V6, [FAULTY, BYSTANDER], PROXY_PORT)
        except testbed.TopologyError as e:
            raise unittest.SkipTest("cannot add the iptables rules: %s" % (e,))
        topology.backend = topology.start_server(
            "backend", [topology.python, testbed.BACKEND_SCRIPT, "--port", str(FAULTY),
                        "--port", str(BYSTANDER)], BYSTANDER)
        testbed.wait_for(lambda: topology.listening(topology.server, FAULTY), 10,
                         what="the backend on port %d" % FAULTY)
        cls.accessLog = os.path.join(topology.workdir, "access.log")
        topology.start_proxy([
            "--port", "tcp6:%d" % PROXY_PORT, "--log-level", "debug",
            "--admin", "tcp:%d:interface=127.0.0.1" % ADMIN_PORT,
            "--cleanup-interval", "1", "--request-timeout", str(REQUEST_TIMEOUT),
            "--connect-timeout", str(CONNECT_TIMEOUT),
            "--stream-idle-timeout", str(STREAM_IDLE_TIMEOUT),
            "--access-log", cls.accessLog, "--access-log-format", "json",
        ], PROXY_PORT)
        testbed.wait_for(lambda: topology.listening(topology.client, ADMIN_PORT), 10,
                         what="the admin endpoint")
        cls.client = FaultClient(topology)
        topology.track(cls.client)
        # The admin connection stays open for the whole class, so it is in every count.
        opened = cls.client("open", "admin", host="127.0.0.1", port=ADMIN_PORT)
        if not opened["ok"]:
            raise testbed.TopologyError("admin connection: %r" % (opened,))
        # A fresh veth can take a moment (IPv6 neighbour discovery) before the first
        # connection to a host gets through; the tests' connect timeout is short.
        for host, port in ((testbed.SERVER_V6, BYSTANDER), (testbed.SERVER_V4, FAULTY)):
            testbed.wait_for(lambda: cls._answers(host, port), 15, interval=0.2,
                             what="a first request to [%s]:%d through the proxy" % (host, port))

    @classmethod
    def _answers(cls, host, port):
        if not cls.client("open", "warm", host=host, port=port)["ok"]:
            return False
        cls.client("send", "warm", data=request("GET", "/echo?warm=1", host="warm"))
        got = cls.client("response", "warm", timeout=5)
        cls.client("close", "warm")
        return got["status"] == 200

    def setUp(self):
        testbed.TopologyTestCase.setUp(self)
        self.client = type(self).client
        self.startClusters = self.waitForClusters(self.emptyClusters())
        # The previous test's client connections may still be closing: count the
        # descriptors once the proxy holds none of them (or after 10 s, when a failed
        # test left one open: this test's own checks then say so).
        try:
            testbed.wait_for(self._quiet, 10, interval=0.1, what="no client or upstream connection")
        except testbed.TopologyError:
            pass
        self.startFds = self.fds()
        self.idleStats = self.stats()
        opened = self.client("open", "by", host=testbed.SERVER_V6, port=BYSTANDER)
        self.assertTrue(opened["ok"], opened)
        self.assertBystander()
        # What the test itself causes is counted from here.
        self.startStats = self.stats()
        self.logMark = len(self.topology.proxy_log())
        self.backendMark = len(self.topology.backend_log())
        self.accessMark = self.accessSize()

    def _quiet(self):
        now = self.stats()
        return not (now["http.origdst.downstream_cx_active"] or now["cluster.original_dst.upstream_cx_active"])

    # -- what the proxy shows ---------------------------------------------------------

    def admin(self, path):
        """
        @return: the body of the admin page at C{path}, read on the class's admin connection.
        """
        for _ in range(2):
            sent = self.client("send", "admin", data=request(
                "GET", path, host="127.0.0.1:%d" % ADMIN_PORT))
            if sent["ok"]:
                got = self.client("response", "admin", timeout=10)
                if got["status"] == 200 and got["complete"]:
                    return got["body"]
            # Closed by the admin server (idle): open it again.
            self.client("close", "admin")
            self.client("open", "admin", host="127.0.0.1", port=ADMIN_PORT)
        self.fail("cannot read %s: %r" % (path, got))

    def stats(self):
        return stat_values(self.admin("/stats?format=json"))

    def delta(self, *names):
        """
        @return: how much each stat grew since the test began.
        """
        now = self.stats()
        return {name: now[name] - self.startStats[name] for name in names}

    def assertCounted(self, **expected):
        """
        Stats grew by exactly these amounts; a name's dots are written as C{__}, and
        C{cluster.original_dst.} and C{http.origdst.} may be left out.
        """
        names = {}
        for key, value in expected.items():
            name = key.replace("__", ".")
            if name.startswith("upstream_") or name.startswith("membership_"):
                name = "cluster.original_dst." + name
            elif name.startswith("downstream_"):
                name = "http.origdst." + name
            names[name] = value
        self.assertEqual(self.delta(*names), names)

    def clusters(self):
        return self.admin("/clusters")

    def emptyClusters(self):
        return lambda text: not any(line.count("::") >= 3 and "::rq_total::" in line
                                    for line in text.splitlines())

    def waitForClusters(self, predicate, timeout=15):
        last = []

        def check():
            last[:] = [self.clusters()]
            return predicate(last[0])

        try:
            testbed.wait_for(check, timeout, interval=0.2, what="/clusters")
        except testbed.TopologyError as e:
            self.fail("%s:\n%s" % (e, last[0] if last else ""))
        return last[0]

    def fds(self):
        return len(os.listdir("/proc/%d/fd" % self.topology.proxy.popen.pid))

    def rss(self):
        """
        @return: the proxy's resident size in bytes.
        """
        with open("/proc/%d/status" % self.topology.proxy.popen.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def newLog(self):
        return self.topology.proxy_log()[self.logMark:]

    def newBackendLog(self):
        return self.topology.backend_log()[self.backendMark:]

    def accessSize(self):
        try:
            return os.path.getsize(self.accessLog)
        except OSError:
            return 0

    def accessEntries(self, path, count=1, timeout=10):
        """
        Wait for C{count} access log entries of requests to C{path} since the test began.

        @return: them.
        """
        found = []

        def look():
            with open(self.accessLog) as f:
                f.seek(self.accessMark)
                text = f.read()
            # Only whole lines: the proxy may be writing the last one.
            entries = [json.loads(line) for line in text.split("\n")[:-1] if line]
            found[:] = [e for e in entries if e["path"] == path]
            return len(found) >= count

        try:
            testbed.wait_for(look, timeout, interval=0.1, what="access log entries for " + path)
        except testbed.TopologyError as e:
            self.fail("%s: %r" % (e, found))
        self.assertEqual(len(found), count, found)
        return found

    def assertAccess(self, path, code, flags, **fields):
        """
        The access log has one entry for C{path}, with this status and these flags.
        """
        [entry] = self.accessEntries(path)
        self.assertEqual((entry["response_code"], entry["response_flags"]), (code, flags), entry)
        for name, value in fields.items():
            self.assertEqual(entry[name], value, entry)
        return entry

    def assertLogged(self, text, timeout=10):
        """
        The proxy's log has a line containing C{text} since the test began.
        """
        try:
            testbed.wait_for(lambda: text in self.newLog(), timeout, interval=0.1,
                             what="the log line %r" % (text,))
        except testbed.TopologyError as e:
            self.fail("%s\nlog since the test began:\n%s" % (e, self.newLog()[-3000:]))

    def backendSaw(self, text):
        """
        @return: how many backend output lines contain C{text} since the test began.
        """
        return sum(text in line for line in self.newBackendLog().splitlines())

    # -- the client -----------------------------------------------------------------

    def exchange(self, c, method, path, headers=(), body=None, timeout=15, host=None, **kw):
        """
        Send one request on connection C{c} and read its response.
        """
        sent = self.client("send", c, data=request(
            method, path, headers, body, host=host or testbed.SERVER_V4), **kw)
        self.assertTrue(sent["ok"], sent)
        return self.client("response", c, timeout=timeout, wait=timeout + 15)

    def open(self, c, port=FAULTY, host=testbed.SERVER_V4):
        opened = self.client("open", c, host=host, port=port)
        self.assertTrue(opened["ok"], opened)
        return opened["local_port"]

    def assertLocalReply(self, response, status, body, c="f"):
        """
        A local reply on connection C{c}: status, text body, C{server: origdst},
        C{Connection: close}, and the connection closed after it.
        """
        self.assertEqual((response["status"], response["body"]), (status, body), response)
        self.assertEqual(header(response, "server"), ["origdst"], response)
        self.assertIn("close", header(response, "connection"), response)
        self.assertTrue(response["complete"], response)
        self.assertEqual(self.client("read", c, timeout=5)["closed"], True)

    def assertBystander(self):
        """
        A request on the bystander connection succeeds, on the same connection.
        """
        got = self.exchange("by", "GET", "/echo?bystander=1", host="[%s]:%d" % (
            testbed.SERVER_V6, BYSTANDER))
        self.assertEqual((got["status"], got["complete"], got["closed"]), (200, True, False),
                         got)
        self.assertEqual(json.loads(got["body"])["uri"], "/echo?bystander=1")

    def assertRecovered(self):
        """
        The bystander connection was undisturbed; once it and the fault's connections are
        closed, the proxy's descriptors and C{/clusters} return to their starting values.
        """
        self.assertBystander()
        self.client("close", "by")
        for name in ("f", "g"):
            self.client("close", name)
        self.waitForClusters(lambda text: text == self.startClusters)
        try:
            testbed.wait_for(lambda: self.fds() == self.startFds, 10, interval=0.1,
                             what="the proxy's open descriptors")
        except testbed.TopologyError:
            self.assertEqual(self.fds(), self.startFds, os.listdir(
                "/proc/%d/fd" % self.topology.proxy.popen.pid))
        now = self.stats()
        for gauge in ("cluster.original_dst.upstream_cx_active",
                      "cluster.original_dst.upstream_rq_active",
                      "cluster.original_dst.upstream_rq_pending_active",
                      "http.origdst.downstream_cx_active"):
            self.assertEqual(now[gauge], self.idleStats[gauge], gauge)
        self.assertNotIn("Traceback", self.newLog())
        self.assertNotIn("Unhandled", self.newLog())
