"""
Tests for the benchmark's pure parts (L{bench}): the TCP relay and TLS passthrough phases'
summaries, their rows, ratios and chart figures, the configuration templates, and the TCP
phase's stream source read by its client over loopback.
"""

import argparse
import os
import socket
import tempfile
import threading

from twisted.trial import unittest

from bench import chart, clients, launchers, loadgen, main, phases, report, tcpsource
from bench.common import ALL_PHASES, TCP_PORT


class ConnectionSummaryTests(unittest.TestCase):
    """
    L{loadgen.connection_summary} turns the TLS client's latencies into its report.
    """

    def test_rate_and_percentiles(self):
        """
        Connections per second over the counted seconds; nearest-rank percentiles in
        microseconds; the errors counted and their kinds listed once each.
        """
        latencies = [i / 1000.0 for i in range(100, 0, -1)]  # 1..100 ms, unsorted
        got = loadgen.connection_summary(latencies, ["SSLError", "timeout", "SSLError"], 2.0, 16)
        self.assertEqual(got["connections"], 100)
        self.assertEqual(got["conns_per_s"], 50.0)
        self.assertEqual(got["p50_us"], 50000.0)
        self.assertEqual(got["p99_us"], 99000.0)
        self.assertEqual(got["max_us"], 100000.0)
        self.assertEqual(got["errors"], 3)
        self.assertEqual(got["error_kinds"], ["SSLError", "timeout"])
        self.assertEqual(got["workers"], 16)

    def test_nothing_counted(self):
        """
        A run in which no connection succeeded has no percentiles and a rate of 0; one of no
        time has no rate.
        """
        got = loadgen.connection_summary([], ["ConnectionRefusedError"], 1.0, 4)
        self.assertEqual((got["connections"], got["conns_per_s"]), (0, 0.0))
        self.assertIsNone(got["p99_us"])
        self.assertIsNone(got["max_us"])
        self.assertIsNone(loadgen.connection_summary([], [], 0, 4)["conns_per_s"])


class TLSResultTests(unittest.TestCase):
    """
    L{clients.tls_result} gives the TLS report in the units of the other phases.
    """

    def test_milliseconds(self):
        r = loadgen.connection_summary([0.002, 0.004], [], 1.0, 2)
        got = clients.tls_result(r)
        self.assertEqual(got["conns_per_s"], 2.0)
        self.assertEqual(got["p50_ms"], 2.0)
        self.assertEqual(got["p99_ms"], 4.0)
        self.assertEqual(got["client_threads"], 2)
        self.assertEqual(got["errors"], 0)

    def test_none_stays_none(self):
        got = clients.tls_result(loadgen.connection_summary([], ["x"], 1.0, 1))
        self.assertIsNone(got["p99_ms"])
        self.assertEqual(got["errors"], 1)


def _fake_round(origdst_tcp, envoy_tcp, origdst_tls, envoy_tls):
    return {
        "origdst": {"tcp": {"mb_per_s": origdst_tcp, "rss_growth_mib": 1.0,
                            "proxy_cpu_s_per_gib": 1.0},
                    "tls": {"conns_per_s": origdst_tls, "p99_ms": 20.0, "errors": 2,
                            "proxy_cpu_us_per_conn": 400.0}},
        "envoy1": {"tcp": {"mb_per_s": envoy_tcp, "rss_growth_mib": 0.5,
                           "proxy_cpu_s_per_gib": 0.5},
                   "tls": {"conns_per_s": envoy_tls, "p99_ms": 10.0, "errors": 0,
                           "proxy_cpu_us_per_conn": 100.0}},
    }


class ReportTests(unittest.TestCase):
    """
    The TCP and TLS figures are rows of the table, ratios vs Envoy and bars of the chart.
    """

    def setUp(self):
        self.rounds = [_fake_round(500.0, 1000.0, 900.0, 1000.0),
                       _fake_round(600.0, 1000.0, 700.0, 1000.0)]
        self.results, self.spread = report.aggregate(self.rounds)

    def test_phases(self):
        """
        Both phases run by default.
        """
        self.assertIn("tcp", ALL_PHASES)
        self.assertIn("tls", ALL_PHASES)

    def test_medians_and_spread(self):
        self.assertEqual(self.results["origdst"]["tcp"]["mb_per_s"], 550.0)
        self.assertEqual(self.spread["origdst"]["tls"]["conns_per_s"], [700.0, 900.0])

    def test_ratios(self):
        """
        The per-round ratios to Envoy: their median, range and count.
        """
        got = report.ratio_summary(self.rounds, "origdst", "envoy1")
        self.assertEqual(got["tcp.mb_per_s"], {"median": 0.55, "min": 0.5, "max": 0.6, "n": 2})
        self.assertEqual(got["tls.conns_per_s"]["median"], 0.8)
        self.assertEqual(got["tls.p99_ms"]["median"], 2.0)
        self.assertEqual(got["tls.proxy_cpu_us_per_conn"]["median"], 4.0)
        self.assertEqual(got["tcp.rss_growth_mib"]["median"], 2.0)
        self.assertEqual(got["tcp.proxy_cpu_s_per_gib"]["median"], 2.0)

    def test_table(self):
        text = report.render(self.results, ["origdst", "envoy1"], [("origdst", "envoy1")], [],
                             256, spread=self.spread, rounds=self.rounds)
        self.assertRegex(text, r"TCP relay MB/s \(256 MiB\) +550 ±9% +1,000")
        self.assertRegex(text, r"TLS passthrough conn/s +800 ±12% +1,000")
        self.assertRegex(text, r"TLS p99 ms +20\.00")
        self.assertRegex(text, r"TCP relay MB/s \(256 MiB\) +0\.55x \[0\.50-0\.60\]")
        self.assertRegex(text, r"TLS passthrough conn/s +0\.80x \[0\.70-0\.90\]")

    def test_errors_count_tls(self):
        """
        The errors row adds the TLS connections that failed.
        """
        self.assertEqual(report.value(self.results, "origdst", None, "errors"), 2)

    def test_chart(self):
        """
        The chart has a group of bars for the TCP relay and for TLS passthrough.
        """
        pairs = [("origdst", "envoy1")]
        out = {"ratios": {"origdst/envoy1": report.ratio_summary(self.rounds, *pairs[0])},
               "rounds": self.rounds, "meta": {}}
        path = os.path.join(tempfile.mkdtemp(), "chart.svg")
        chart.write(path, out, pairs)
        with open(path) as f:
            svg = f.read()
        for label in ("TCP relay MB/s", "TLS passthrough conn/s", "TLS connection p99",
                      "CPU per TLS connection"):
            self.assertIn(">%s</text>" % label, svg)
        self.assertIn("origdst/envoy1 TCP relay MB/s: 0.55x [0.50-0.60]", svg)


class TargetPhaseTests(unittest.TestCase):
    """
    L{main.target_phases}: who runs the new phases.
    """

    def test_who(self):
        both = ["keepalive", "tcp", "tls"]
        self.assertEqual(main.target_phases("origdst-pypy", both), both)
        self.assertEqual(main.target_phases("envoy1", both), both)
        self.assertEqual(main.target_phases("direct", both + ["idle"]), both)
        self.assertEqual(main.target_phases("envoy2", both), ["keepalive"])
        self.assertEqual(main.target_phases("origdst-w2", both), ["keepalive"])


class TemplateTests(unittest.TestCase):
    """
    The proxies' set-ups for the new phases.
    """

    def render(self, template, **values):
        path = os.path.join(tempfile.mkdtemp(), "out")
        launchers.render(template, path, **values)
        with open(path) as f:
            return f.read()

    def test_envoy(self):
        """
        Envoy relays the TCP phase with tcp_proxy and the TLS phase with tls_inspector and
        tcp_proxy, both through the ORIGINAL_DST cluster after the original_dst filter.
        """
        self.assertEqual(sorted(launchers.EnvoyProxy.TEMPLATES),
                         [launchers.HTTP, launchers.TCP, launchers.TLS])
        tcp = self.render(launchers.EnvoyProxy.TEMPLATES[launchers.TCP], port=15009)
        tls = self.render(launchers.EnvoyProxy.TEMPLATES[launchers.TLS], port=15009)
        for text in (tcp, tls):
            self.assertIn("port_value: 15009", text)
            self.assertIn("envoy.filters.listener.original_dst", text)
            self.assertIn("envoy.filters.network.tcp_proxy", text)
            self.assertIn("type: ORIGINAL_DST", text)
            self.assertNotIn("http_connection_manager", text)
        self.assertNotIn("tls_inspector", tcp)
        self.assertIn("envoy.filters.listener.tls_inspector", tls)

    def test_nginx(self):
        """
        nginx serves the TLS phase with full handshakes only.
        """
        text = self.render("nginx.conf", work="/w", redirected=80, direct=8080, big="big.bin",
                           body="x", tls_redirected=443, tls_direct=8443, cert="/c.pem",
                           key="/c.key")
        self.assertIn("listen 443 ssl;", text)
        self.assertIn("listen 8443 ssl;", text)
        self.assertIn("ssl_session_cache off;", text)
        self.assertIn("ssl_session_tickets off;", text)

    def test_origdst_tcp_ports(self):
        """
        origdst takes the TCP phase's port as a --tcp-ports port, and only in that phase.
        """
        proxy = launchers.origdst("origdst", "python3", "/src", {})
        self.assertEqual(proxy.mode_args, {launchers.TCP: ["--tcp-ports", str(TCP_PORT)]})
        self.assertNotIn("--tcp-ports", proxy.argv)


class TransfersTests(unittest.TestCase):
    """
    L{phases.transfers}: the first transfer is not counted; the median of the others.
    """

    def test_median(self):
        seconds = iter([10.0, 1.0, 2.0, 4.0])
        got = phases.transfers(None, 3, 100 * 1000 * 1000, lambda: next(seconds))
        self.assertEqual(got["mb_per_s_all"], [100.0, 50.0, 25.0])
        self.assertEqual(got["mb_per_s"], 50.0)
        self.assertNotIn("rss_growth_mib", got)


class StreamTests(unittest.TestCase):
    """
    bench/tcpsource.py and C{loadgen.py fetch}, over loopback: every byte of the file,
    then the end of the stream.
    """

    def test_fetch(self):
        path = os.path.join(tempfile.mkdtemp(), "f")
        size = 3 * 1024 * 1024 + 5
        with open(path, "wb") as f:
            f.write(os.urandom(size))
        server = tcpsource.Server(("127.0.0.1", 0), tcpsource.handler(path, 10))
        self.addCleanup(server.server_close)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True)
        thread.start()
        self.addCleanup(thread.join, 10)
        self.addCleanup(server.shutdown)
        args = argparse.Namespace(
            host="127.0.0.1", port=server.server_address[1], timeout=10.0,
            expect_bytes=size, max_seconds=20.0)
        got = loadgen.fetch(args)
        self.assertEqual(got["bytes"], size)
        self.assertGreater(got["seconds"], 0)

    def test_refused(self):
        """
        Nothing listening: the client fails rather than reporting a short stream.
        """
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        args = argparse.Namespace(
            host="127.0.0.1", port=port, timeout=5.0, expect_bytes=10, max_seconds=5.0)
        self.assertRaises(OSError, loadgen.fetch, args)

