"""
Tests for C{--workers}: several proxy processes sharing the port.
"""

import json
import os
import re
import signal
import socket
import sys
import time

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.python import usage
from twisted.trial import unittest

from origdst import tap, workers
from origdst.tap import Options
import testbed
from testbed.figures import stat_values


class ParseTests(unittest.TestCase):
    def test_tcp(self):
        """
        tcp: and tcp6: descriptions give family, interface and port.
        """
        self.assertEqual(workers.parse_tcp("tcp:4999"), (socket.AF_INET, "0.0.0.0", 4999))
        self.assertEqual(
            workers.parse_tcp("tcp:4999:interface=127.0.0.1"), (socket.AF_INET, "127.0.0.1", 4999)
        )
        self.assertEqual(
            workers.parse_tcp("tcp6:4999:interface=\\:\\:1:backlog=50"), (socket.AF_INET6, "::1", 4999)
        )
        self.assertEqual(workers.parse_tcp("tcp6:4999"), (socket.AF_INET6, "::", 4999))

    def test_others_refused(self):
        """
        Other endpoints cannot be shared by SO_REUSEPORT here.
        """
        for description in ("unix:/tmp/x", "systemd:domain=INET:index=0", "tcp:x", "ssl:443"):
            self.assertRaises(workers.UnsupportedEndpoint, workers.parse_tcp, description)

    def test_option(self):
        """
        --workers with an unsuitable --port is a usage error naming both.
        """
        options = Options()
        options.parseOptions(["--workers", "2", "--port", "tcp6:5000"])
        self.assertEqual(options.settings.workers, 2)
        self.assertEqual(options.argv, ["--workers", "2", "--port", "tcp6:5000"])
        e = self.assertRaises(usage.UsageError, Options().parseOptions, ["--workers", "2", "--port", "unix:/tmp/s"])
        self.assertIn("--workers", str(e))
        self.assertIn("unix:/tmp/s", str(e))

    def test_worker_argv(self):
        """
        A worker runs the same origdst options in the foreground, without a
        pid file, logging where its parent logs.
        """
        argv = workers.worker_argv({"logfile": "/var/log/od.log"}, ["--workers", "2"])
        self.assertEqual(argv[3:], ["-n", "--pidfile=", "--logfile=/var/log/od.log", "origdst", "--workers", "2"])
        self.assertIn("--logfile=-", workers.worker_argv(None, []))

    def test_endpoint_interface(self):
        """
        The reuse-port endpoint is a stream server endpoint, made from a tcp:
        or tcp6: description.
        """
        from twisted.internet import reactor
        from twisted.internet.interfaces import IStreamServerEndpoint
        from zope.interface.verify import verifyObject

        endpoint = workers.ReusePortEndpoint.from_description(reactor, "tcp6:4999:interface=\\:\\:1")
        self.assertTrue(verifyObject(IStreamServerEndpoint, endpoint))
        self.assertEqual((endpoint.family, endpoint.interface, endpoint.port), (socket.AF_INET6, "::1", 4999))
        self.assertRaises(
            workers.UnsupportedEndpoint, workers.ReusePortEndpoint.from_description, reactor, "unix:/tmp/x"
        )

    @defer.inlineCallbacks
    def test_listen_shared(self):
        """
        Two shared listeners bind the same port.
        """
        from twisted.internet import reactor
        from twisted.internet.protocol import ServerFactory

        first = yield workers.ReusePortEndpoint.from_description(
            reactor, "tcp:0:interface=127.0.0.1"
        ).listen(ServerFactory())
        self.addCleanup(first.stopListening)
        port = first.getHost().port
        second = yield workers.ReusePortEndpoint.from_description(
            reactor, "tcp:%d:interface=127.0.0.1" % port
        ).listen(ServerFactory())
        self.addCleanup(second.stopListening)
        self.assertEqual(second.getHost().port, port)

    def test_port_taken(self):
        """
        A port held without SO_REUSEPORT cannot be shared: the endpoint's
        Deferred fails with CannotListenError, naming the address.
        """
        from twisted.internet import reactor
        from twisted.internet.protocol import ServerFactory

        plain = reactor.listenTCP(0, ServerFactory(), interface="127.0.0.1")
        self.addCleanup(plain.stopListening)
        port = plain.getHost().port
        endpoint = workers.ReusePortEndpoint(reactor, socket.AF_INET, "127.0.0.1", port)
        failure = self.failureResultOf(endpoint.listen(ServerFactory()), CannotListenError)
        self.assertIn("127.0.0.1:%d" % port, failure.getErrorMessage())

    def test_backlog(self):
        """
        The proxy's port listens with a backlog of L{workers.BACKLOG} unless
        its description names one; other kinds of endpoint are left alone.
        """
        from twisted.internet.endpoints import serverFromString
        from twisted.internet.protocol import ServerFactory
        from twisted.internet.testing import MemoryReactor

        self.assertEqual(tap.with_backlog("tcp:4999"), "tcp:4999:backlog=1024")
        self.assertEqual(tap.with_backlog("tcp6:4999:interface=\\:\\:1"), "tcp6:4999:interface=\\:\\:1:backlog=1024")
        for description in ("tcp:4999:backlog=10", "TCP:4999:Backlog=10", "systemd:domain=INET6:index=0", "unix:/run/x"):
            self.assertEqual(tap.with_backlog(description), description)
        reactor = MemoryReactor()
        serverFromString(reactor, tap.with_backlog("tcp6:4999:interface=\\:\\:1")).listen(ServerFactory())
        [(port, _, backlog, interface)] = reactor.tcpServers
        self.assertEqual((port, backlog, interface), (4999, 1024, "::1"))

    def test_listener_service_stops_twistd(self):
        """
        The proxy's listener, given a shared endpoint that cannot bind, stops
        twistd with a plain message naming the port, not a traceback.
        """
        from twisted.internet import reactor
        from twisted.internet.protocol import ServerFactory

        plain = reactor.listenTCP(0, ServerFactory(), interface="127.0.0.1")
        self.addCleanup(plain.stopListening)
        description = "tcp:%d:interface=127.0.0.1" % plain.getHost().port
        endpoint = workers.ReusePortEndpoint.from_description(reactor, description)
        service = tap.ListenerService(description, ServerFactory(), reactor, endpoint)
        e = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertIn("origdst: cannot listen on " + description, str(e))
        self.assertIn("Address already in use", str(e))
        self.assertIsNone(service.port)


PROXY_PORT = 15005
ADMIN_PORT = 19905


class WorkersEndToEndTests(testbed.TopologyTestCase):
    tag = "w"

    @classmethod
    def build(cls, topology):
        topology.add_redirect(testbed.SERVER_V4, [80], PROXY_PORT)
        topology.add_redirect(testbed.UNASSIGNED_V4, [80], PROXY_PORT, owner_match=False)
        topology.start_backend(80)
        topology.start_proxy(
            ["--port", "tcp:%d" % PROXY_PORT, "--workers", "2", "--log-level", "debug",
             "--admin", "tcp:%d:interface=127.0.0.1" % ADMIN_PORT, "--cleanup-interval", "120"],
            PROXY_PORT,
        )

    def admin(self, path):
        """
        One GET to the main process's admin, from inside namespace C: @return: the body.
        """
        from tests.test_admin_e2e import FETCH

        proc = self.topology.exec(self.topology.client, [
            sys.executable, "-c", FETCH, "http://127.0.0.1:%d%s" % (ADMIN_PORT, path), "GET", "{}"])
        answer = json.loads(proc.stdout)
        self.assertEqual(answer["status"], 200, answer)
        return answer["body"]

    def stats(self):
        return stat_values(self.admin("/stats?format=json"))

    def prometheus(self, metric):
        """
        @return: the value of the sample whose name and labels are C{metric}.
        """
        for line in self.admin("/stats/prometheus").splitlines():
            if line.startswith(metric + " "):
                return float(line.split()[-1])
        self.fail("no %s in /stats/prometheus" % metric)

    def host_requests(self):
        data = json.loads(self.admin("/clusters?format=json"))
        [host] = [h for h in data["cluster_statuses"][0]["host_statuses"] if h["key"] == "%s:80" % testbed.SERVER_V4]
        return {s["name"]: s["value"] for s in host["stats"]}["rq_total"]

    def send(self, count):
        spec = {"connections": [
            {"host": testbed.SERVER_V4, "port": 80, "requests": [{"path": "/echo"}]} for _ in range(count)
        ]}
        result = self.topology.run_client(spec)
        self.assertEqual([c["responses"][0]["status"] for c in result["connections"]], [200] * count)

    def test_1_both_serve(self):
        """
        Connections are spread over both processes, and all are answered.
        """
        testbed.wait_for(
            lambda: self.topology.proxy_log().count("origdst listening on") >= 2, 20, what="both workers"
        )
        spec = {"connections": [
            {"host": testbed.SERVER_V4, "port": 80, "requests": [{"path": "/echo"}]} for _ in range(24)
        ]}
        result = self.topology.run_client(spec)
        self.assertEqual([c["responses"][0]["status"] for c in result["connections"]], [200] * 24)
        # Each process numbers its own connections from 1.
        self.assertGreaterEqual(self.topology.proxy_log().count("[C1] new connection"), 2)

    def test_2_loop_caught_across_workers(self):
        """
        A redirect loop is refused whichever worker the looped connection
        reaches: a hop that reaches another worker is forwarded once more,
        until one recognises its own upstream connection.
        """
        got = self.topology.run_client({
            "host": testbed.UNASSIGNED_V4, "port": 80, "raw": "GET / HTTP/1.1\r\nHost: x\r\n\r\n", "read_timeout": 10})
        self.assertEqual(got["status"], 508, got)
        self.assertLessEqual(self.topology.proxy_log().count("redirect loop"), 10)

    def test_2b_report_as_one(self):
        """
        The main process's admin shows the sum over both workers: requests
        spread over both (each worker's log lines name it) are all counted,
        in /stats, the latency histogram of /stats/prometheus and /clusters.
        """
        time_count = 'envoy_cluster_upstream_rq_time_count{envoy_cluster_name="original_dst"}'
        before, before_time, before_host = self.stats(), self.prometheus(time_count), self.host_requests()
        self.assertEqual((before["server.workers"], before["server.workers_missing"]), (2, 0))
        log_before = len(self.topology.proxy_log())
        self.send(30)
        after = self.stats()
        for name in ("http.origdst.downstream_rq_total", "cluster.original_dst.upstream_rq_2xx",
                     "http.origdst.downstream_cx_total"):
            self.assertEqual(after[name] - before[name], 30, name)
        self.assertEqual(self.prometheus(time_count) - before_time, 30)
        self.assertEqual(self.host_requests() - before_host, 30)
        log = self.topology.proxy_log()[log_before:]
        served = [len(re.findall(r"\[worker %d\] \[C\d+\] new connection" % n, log)) for n in (0, 1)]
        self.assertEqual(sum(served), 30, served)
        self.assertTrue(all(served), "both workers served: %r" % (served,))

    def test_2c_worker_restarted(self):
        """
        A worker killed by its PID is started again, the restart counted in
        server.worker_restarts and logged; the sum includes it again.
        """
        started = re.findall(r"Started worker 1 \(pid (\d+)\)", self.topology.proxy_log())
        self.assertEqual(len(started), 1, started)
        self.assertEqual(self.stats()["server.worker_restarts"], 0)
        os.kill(int(started[0]), signal.SIGKILL)
        testbed.wait_for(
            lambda: len(re.findall(r"Started worker 1 \(pid (\d+)\)", self.topology.proxy_log())) == 2,
            20, what="worker 1 restarted")
        self.assertRegex(self.topology.proxy_log(), r"\[worker 0\] Worker 1 ended .*; restarting it in 1 s "
                         r"\(worker restarts: 1\)")
        testbed.wait_for(lambda: self.topology.proxy_log().count("origdst listening on") >= 3, 20,
                         what="the new worker listening")
        stats = self.stats()
        self.assertEqual((stats["server.worker_restarts"], stats["server.workers_missing"]), (1, 0))
        self.send(10)

    def test_3_workers_stop_with_parent(self):
        """
        Stopping the main process stops its workers.
        """
        parent = self.topology.proxy.popen.pid
        os.kill(parent, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            pids = self.topology.exec(self.topology.client, ["pgrep", "-f", "origdst --port tcp:%d" % PROXY_PORT], check=False).stdout.split()
            if not pids:
                break
            time.sleep(0.2)
        self.assertEqual(pids, [])


def testSuite():
    from twisted.trial import runner

    tests = runner.TestSuite([
        ParseTests(name) for name in sorted(n for n in dir(ParseTests) if n.startswith("test_"))
    ])
    tests.addTest(testbed.suite(WorkersEndToEndTests))
    return tests
