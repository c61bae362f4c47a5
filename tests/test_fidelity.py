"""
End-to-end checks of what a transparent proxy must not get in the way of:
flow control both ways with a slow peer (the proxy's memory stays flat),
WebSocket and CONNECT tunnels with half-close, and every timeout once for
real (an unreachable destination is a DROP rule inside the test's own
namespace).
"""

import os
import time

import testbed

PROXY_PORT = 15004
BACKEND_PORT = 80
STREAM_PORT = 84
#: Run in C as the unprivileged client by L{testbed.Topology.start_script}.
STREAM_CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "streamclient.py")
#: Connections from the proxy to this port are dropped: a connect timeout.
DROPPED_PORT = 85

#: Big enough that buffering it would show; kept small enough for a quick
#: suite. ORIGDST_FLOW_BYTES=1073741824 measures the 1 GiB case.
FLOW_BYTES = int(os.environ.get("ORIGDST_FLOW_BYTES", 256 * 1024 * 1024))
#: The proxy's resident memory may grow by less than this while it holds a
#: transfer its peer does not read.
RSS_BUDGET = 32 * 1024 * 1024

PROXY_ARGS = [
    "--port", "tcp:%d" % PROXY_PORT,
    "--log-level", "debug",
    "--connect-timeout", "1",
    "--request-timeout", "0",
    "--idle-timeout", "2",
    "--tcp-idle-timeout", "2",
    "--request-headers-timeout", "1",
    "--stream-idle-timeout", "5",
    "--upstream-idle-timeout", "1",
    "--cleanup-interval", "30",
]


def rss(pid, field="VmRSS"):
    """
    @return: a process's resident memory (or its peak, VmHWM) in bytes.
    """
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise ValueError(field)


class FidelityTests(testbed.TopologyTestCase):
    tag = "f"

    @classmethod
    def build(cls, topology):
        topology.add_redirect(
            testbed.SERVER_V4, [BACKEND_PORT, STREAM_PORT, DROPPED_PORT], PROXY_PORT
        )
        topology.exec(topology.client, [
            "iptables", "-w", "5", "-A", "OUTPUT", "-p", "tcp", "-d", testbed.SERVER_V4,
            "--dport", str(DROPPED_PORT), "-j", "DROP"])
        topology.start_backend(BACKEND_PORT)
        topology.start_server("streamserver", [
            topology.python, os.path.join(os.path.dirname(__file__), "streamserver.py"),
            "--port", str(STREAM_PORT)], STREAM_PORT)
        topology.start_proxy(PROXY_ARGS, PROXY_PORT)

    def proxy_pid(self):
        pid = self.topology.proxy.popen.pid
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            self.assertIn(b"origdst", f.read())
        return pid

    def raw(self, data, port=BACKEND_PORT, read_timeout=10):
        return self.topology.run_client({
            "host": testbed.SERVER_V4, "port": port, "raw": data, "read_timeout": read_timeout})

    def script(self, *args, timeout=120):
        return self.topology.finish_script(self.topology.start_script(STREAM_CLIENT, args), timeout)

    # Flow control.

    def test_slow_reader(self):
        """
        A download to a client that stops reading pauses the server instead of
        filling the proxy's memory; it then arrives intact.
        """
        pid = self.proxy_pid()
        # The same download unpaused first: its peak is what the runtime
        # itself takes for a transfer at full speed (PyPy's JIT code for the
        # streaming path and its collector's garbage: 2-6 MiB, 10-17 MiB
        # when PyPy read 1 MiB at a time), so that the budget is for what
        # pausing buffers.
        warm = self.script("download", testbed.SERVER_V4, STREAM_PORT, FLOW_BYTES, 0)
        self.assertEqual(warm.get("length"), FLOW_BYTES, warm)
        before = rss(pid)
        peak_before = rss(pid, "VmHWM")
        client = self.topology.start_script(
            STREAM_CLIENT, ["download", testbed.SERVER_V4, STREAM_PORT, FLOW_BYTES, 3])
        time.sleep(2)
        during = rss(pid)
        result = self.topology.finish_script(client, timeout=300)
        self.assertNotIn("error", result, result)
        self.assertEqual(result["length"], FLOW_BYTES)
        self.assertTrue(result["intact"])
        self.assertLess(during - before, RSS_BUDGET, "RSS grew from %d to %d" % (before, during))
        peak = rss(pid, "VmHWM")
        self.assertLess(peak - peak_before, RSS_BUDGET,
                        "peak RSS grew from %d to %d" % (peak_before, peak))

    def test_slow_server(self):
        """
        An upload to a server that does not read yet pauses the client
        instead of filling the proxy's memory; the server gets every byte.
        """
        pid = self.proxy_pid()
        before = rss(pid)
        client = self.topology.start_script(
            STREAM_CLIENT, ["upload", testbed.SERVER_V4, STREAM_PORT, FLOW_BYTES, 3])
        time.sleep(2)
        during = rss(pid)
        result = self.topology.finish_script(client, timeout=300)
        self.assertNotIn("error", result, result)
        self.assertEqual(result["report"], {"length": FLOW_BYTES, "sha256": result["sha256"]})
        self.assertLess(during - before, RSS_BUDGET, "RSS grew from %d to %d" % (before, during))

    # Tunnels.

    def test_websocket_echo(self):
        """
        A WebSocket handshake passes through untouched, a frame is echoed, and
        the client's half-close reaches the server, whose last frame still
        reaches the client.
        """
        result = self.script("websocket", testbed.SERVER_V4, STREAM_PORT)
        self.assertNotIn("error", result, result)
        self.assertTrue(result["head"].startswith("HTTP/1.1 101 "), result)
        self.assertTrue(result["accept_ok"], result)
        self.assertIn("server: origdst", result["head"])
        self.assertEqual(result["echo"], "hello origdst")
        self.assertEqual(result["after_half_close"], "bye")

    def test_connect_tunnel(self):
        """
        CONNECT to the original destination opens a tunnel once the server
        answers 200, with half-close passed on.
        """
        result = self.script("connect", testbed.SERVER_V4, STREAM_PORT)
        self.assertNotIn("error", result, result)
        self.assertTrue(result["head"].startswith("HTTP/1.1 200 Connection established"), result)
        self.assertEqual((result["echo"], result["after_half_close"]), ("ping", "bye"))

    # Timeouts, each once for real.

    def test_connect_timeout(self):
        """
        A destination that drops the SYN gets 503 after the connect timeout.
        """
        started = time.monotonic()
        got = self.raw("GET / HTTP/1.1\r\nHost: 10.250.0.3:85\r\n\r\n", port=DROPPED_PORT)
        self.assertEqual(got["status"], 503, got)
        self.assertTrue(got["raw_response"].endswith(
            "upstream connect error or disconnect/reset before headers. reset reason: connection timeout"), got)
        self.assertGreaterEqual(time.monotonic() - started, 0.9)

    def test_idle_timeout(self):
        """
        A client connection that sends nothing is closed after the idle
        timeout, without a reply. Since protocol detection, sending nothing
        means a server-speaks-first protocol: the connection is relayed after
        the detect timeout, and the relay's idle timeout closes it (the HTTP
        side's idle timeout is tested in tests/test_timeouts.py).
        """
        got = self.raw("", read_timeout=10)
        self.assertTrue(got["closed"], got)
        self.assertEqual(got["raw_len"], 0)

    def test_request_headers_timeout(self):
        """
        A request head that never completes gets 408 (the slowloris guard).
        """
        got = self.raw("GET /echo HTTP/1.1\r\nHost: 10.250.0.3\r\nX-Slow: 1\r\n")
        self.assertEqual(got["status"], 408, got)
        self.assertTrue(got["raw_response"].endswith("request headers timeout"), got)
        self.assertTrue(got["closed"])

    def test_stream_idle_timeout(self):
        """
        A server that stays silent past the stream idle timeout gets its
        client a 408 stream timeout.
        """
        got = self.raw("GET /slow?delay=8 HTTP/1.1\r\nHost: 10.250.0.3\r\n\r\n", read_timeout=15)
        self.assertEqual(got["status"], 408, got)
        self.assertTrue(got["raw_response"].endswith("stream timeout"), got)

    def test_upstream_idle_timeout(self):
        """
        A pooled connection idle past the upstream idle timeout is closed by
        the proxy, so the next request gets a new one.
        """
        spec = {"host": testbed.SERVER_V4, "port": BACKEND_PORT, "requests": [{"path": "/peer"}]}
        first = self.topology.run_client(spec)["responses"][0]["body"]
        time.sleep(2)
        second = self.topology.run_client(spec)["responses"][0]["body"]
        self.assertNotEqual(first, second)
        self.assertIn("Closing idle connection to 10.250.0.3:80.", self.topology.proxy_log())


def testSuite():
    return testbed.suite(FidelityTests)
