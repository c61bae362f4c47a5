"""
End to end: the graceful drain of a real C{twistd -n origdst} on SIGTERM, in
the testbed's namespaces (root only; skipped elsewhere).

Each test starts a proxy of its own (a drain ends it) on the same port.
"""

import json
import os
import signal
import time

import testbed

PROXY_PORT = 15031
ADMIN_PORT = 15032

SLOW = "/slow?delay=%s"


class DrainEndToEndTests(testbed.TopologyTestCase):
    tag = "dr"

    @classmethod
    def build(cls, topology):
        topology.add_redirect(testbed.SERVER_V4, [80], PROXY_PORT)
        topology.start_backend(80)

    def start(self, *args):
        path = os.path.join(self.topology.workdir, "proxy.log")
        self.offset = os.path.getsize(path) if os.path.exists(path) else 0
        proxy = self.topology.start_proxy(
            ["--port", "tcp:%d" % PROXY_PORT, "--log-level", "debug",
             "--admin", "tcp:%d:interface=127.0.0.1" % ADMIN_PORT] + list(args),
            PROXY_PORT,
        )
        # The next test starts its own; setUp must not take this one's end
        # for a crash.
        self.addCleanup(setattr, self.topology, "proxy", None)
        self.addCleanup(proxy.stop)
        return proxy

    def log(self):
        return self.topology.proxy_log()[self.offset:]

    def wait_log(self, text, count=1, timeout=15):
        testbed.wait_for(lambda: self.log().count(text) >= count, timeout, what=repr(text))

    def client(self, spec):
        return self.topology.start_script(self.topology.client_script, [json.dumps(spec)])

    def ready(self):
        """
        @return: C{(status, body)} of the admin's C{/ready}.
        """
        code = (
            "import urllib.request, urllib.error\n"
            "try:\n"
            "    r = urllib.request.urlopen('http://127.0.0.1:%d/ready', timeout=5)\n"
            "    print(r.status, r.read().decode().strip())\n"
            "except urllib.error.HTTPError as e:\n"
            "    print(e.code, e.read().decode().strip())\n" % ADMIN_PORT
        )
        out = self.topology.exec(self.topology.client, [self.topology.python, "-c", code]).stdout
        status, _, body = out.strip().partition(" ")
        return int(status), body

    def slow_and_idle(self, delay):
        """
        Open a slow request and an idle keep-alive connection (one request
        answered) through the proxy; return once the proxy has both.
        """
        slow = self.client({"host": testbed.SERVER_V4, "port": 80, "timeout": 60,
                            "requests": [{"path": SLOW % delay}]})
        idle = self.client({"host": testbed.SERVER_V4, "port": 80, "read_timeout": 60,
                            "raw": "GET /echo HTTP/1.1\r\nHost: %s\r\n\r\n" % testbed.SERVER_V4})
        self.wait_log("GET " + SLOW % delay + " to")
        self.wait_log("GET /echo to")
        self.wait_log("response complete")
        return slow, idle

    def exited(self, proc, timeout):
        """
        Wait for a script or the proxy; @return: the seconds it took.
        """
        started = time.monotonic()
        popen = getattr(proc, "popen", proc)
        testbed.wait_for(lambda: popen.poll() is not None, timeout, interval=0.05, what="exit")
        return time.monotonic() - started

    def drain_in_flight(self, *args):
        proxy = self.start("--drain-timeout", "20", *args)
        self.wait_log("origdst listening on tcp:", count=2 if args else 1)
        slow, idle = self.slow_and_idle(4)
        self.assertEqual(self.ready(), (200, "LIVE"))
        os.kill(proxy.popen.pid, signal.SIGTERM)
        self.wait_log("Draining:", count=2 if args else 1)
        # The idle connection is closed at once, the slow request not.
        self.assertLess(self.exited(idle, 10), 3)
        self.assertIsNone(slow.poll())
        self.assertEqual(self.ready(), (503, "DRAINING"))
        refused = self.topology.run_client(
            {"host": testbed.SERVER_V4, "port": 80, "timeout": 5, "requests": [{"path": "/echo"}]})
        self.assertIn("ConnectionRefusedError", refused["error"] or "", refused)
        result = self.topology.finish_script(slow)
        [response] = result["responses"]
        self.assertEqual((response["status"], response["body"]), (200, "slow done\n"), result)
        self.assertIn(["connection", "close"], [[n.lower(), v] for n, v in response["headers"]])
        self.exited(proxy, 15)
        self.assertEqual(proxy.popen.returncode, 0, self.log()[-3000:])
        self.assertNotIn("Drain timeout", self.log())
        self.assertIn("Drained: the last client connection closed", self.log())

    def test_1_request_in_flight_completes(self):
        """
        After SIGTERM: the idle keep-alive connection is closed at once, new
        connections are refused, /ready says 503 DRAINING, the slow request
        in flight is answered in full with connection: close, and the proxy
        exits with 0 as soon as it is done.
        """
        self.drain_in_flight()

    def test_2_timeout_closes_and_logs(self):
        """
        A request still open at --drain-timeout is not cut before it, is
        closed at it with one log line counting it, and the proxy exits 0.
        """
        proxy = self.start("--drain-timeout", "2")
        slow = self.client({"host": testbed.SERVER_V4, "port": 80, "timeout": 60,
                            "requests": [{"path": SLOW % 30}]})
        self.wait_log("GET " + SLOW % 30 + " to")
        os.kill(proxy.popen.pid, signal.SIGTERM)
        took = self.exited(slow, 15)
        self.assertGreaterEqual(took, 1.9)
        self.assertLess(took, 6)
        result = self.topology.finish_script(slow)
        self.assertIsNotNone(result["error"], result)
        self.exited(proxy, 10)
        self.assertEqual(proxy.popen.returncode, 0, self.log()[-3000:])
        self.assertIn("Drain timeout (2 s): closing 1 client connections still open.", self.log())

    def test_4_drain_listeners(self):
        """
        POST /drain_listeners drains as SIGTERM does, but the process keeps
        running, its admin port answering 503 DRAINING; a SIGTERM then
        exits 0 at once.
        """
        proxy = self.start("--drain-timeout", "20")
        code = (
            "import urllib.request\n"
            "r = urllib.request.Request('http://127.0.0.1:%d/drain_listeners', method='POST',"
            " headers={'X-Origdst-Admin': '1'})\n"
            "print(urllib.request.urlopen(r, timeout=5).read().decode().strip())\n" % ADMIN_PORT
        )
        out = self.topology.exec(self.topology.client, [self.topology.python, "-c", code]).stdout
        self.assertEqual(out.strip(), "OK")
        self.wait_log("Draining:")
        refused = self.topology.run_client(
            {"host": testbed.SERVER_V4, "port": 80, "timeout": 5, "requests": [{"path": "/echo"}]})
        self.assertIn("ConnectionRefusedError", refused["error"] or "", refused)
        time.sleep(1)
        self.assertTrue(proxy.running())
        self.assertEqual(self.ready(), (503, "DRAINING"))
        os.kill(proxy.popen.pid, signal.SIGTERM)
        self.assertLess(self.exited(proxy, 10), 5)
        self.assertEqual(proxy.popen.returncode, 0, self.log()[-3000:])

    def test_3_workers_drained(self):
        """
        With --workers 2, SIGTERM to the main process drains both; the
        request in flight completes wherever it is, and the exit is 0.
        """
        self.drain_in_flight("--workers", "2")


def testSuite():
    return testbed.suite(DrainEndToEndTests)
