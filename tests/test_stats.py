"""
Tests for L{origdst.stats}: every path of the proxy counts what it did, and
the counters come out in Envoy's text, JSON and Prometheus forms.
"""

import json
import re

from twisted.internet.error import TimeoutError
from twisted.trial import unittest

from origdst import stats as statsmodule
from origdst.sockopt import NoOriginalDestination
from origdst.stats import Stats, collect

from tests.helpers import DEST, GET, OK, SWITCH, UPGRADE, ProxyHarness, capture_log, parse_response


def figures(stats):
    """
    @return: the counters of C{stats} as a dict, classes as C{downstream_rq_2xx}.
    """
    out = {name: getattr(stats, name) for name in statsmodule._COUNTERS}
    out["downstream_cx_active"] = stats.downstream_cx_active
    for n in statsmodule.CLASSES:
        out[f"downstream_rq_{n}xx"] = stats.downstream_rq_xx[n]
        out[f"upstream_rq_{n}xx"] = stats.upstream_rq_xx[n]
    return out


class CountingTests(unittest.TestCase):
    """
    The counters after each kind of exchange, checked as a whole so that a
    path counting something extra fails too.
    """

    def setUp(self):
        self.proxy = ProxyHarness(self, request_timeout=15)
        self.stats = self.proxy.cluster.stats
        self.log = capture_log(self)

    def assertCounted(self, **expected):
        """
        The counters named are as given, every other one is 0.
        """
        want = dict.fromkeys(figures(self.stats), 0)
        want.update(expected)
        self.assertEqual(figures(self.stats), want)

    def pool(self):
        return self.proxy.cluster.hosts[DEST].pool

    def test_get(self):
        """
        One GET answered 200: a downstream and an upstream connection and
        request, a 2xx on both sides, the bytes both ways on the cluster and
        the host, and a new host.
        """
        self.proxy.reactor.advance(100)
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        upstream = self.proxy.accept_upstream()
        sent = len(upstream.value())
        upstream.protocol.dataReceived(OK)
        self.assertEqual(parse_response(client.value())[0], 200)
        self.assertCounted(
            downstream_cx_total=1,
            downstream_cx_active=1,
            downstream_rq_total=1,
            downstream_rq_2xx=1,
            upstream_cx_total=1,
            upstream_rq_total=1,
            upstream_rq_pending_total=1,
            upstream_rq_2xx=1,
            upstream_cx_tx_bytes_total=sent,
            upstream_cx_rx_bytes_total=len(OK),
            membership_change=1,
        )
        pool = self.pool()
        self.assertEqual(
            (pool.rq_total, pool.rq_success, pool.rq_error, pool.cx_total, pool.tx_bytes, pool.rx_bytes),
            (1, 1, 0, 1, sent, len(OK)),
        )
        self.assertEqual(self.proxy.cluster.hosts[DEST].last_used, 100)
        client.loseConnection()
        self.assertEqual(self.stats.downstream_cx_active, 0)

    def test_keep_alive(self):
        """
        Requests reusing a pooled connection count as requests, not as new
        connections or pending requests.
        """
        channel, client = self.proxy.client()
        upstream = None
        for _ in range(3):
            channel.dataReceived(GET)
            if upstream is None:
                upstream = self.proxy.accept_upstream()
            upstream.protocol.dataReceived(OK)
        self.assertEqual(
            (self.stats.downstream_rq_total, self.stats.upstream_rq_total, self.stats.upstream_cx_total),
            (3, 3, 1),
        )
        self.assertEqual((self.stats.upstream_rq_pending_total, self.stats.downstream_rq_xx[2]), (1, 3))
        self.assertEqual(self.stats.upstream_cx_rx_bytes_total, 3 * len(OK))
        self.assertEqual(self.pool().rq_total, 3)

    def test_request_body_bytes(self):
        """
        Request body bytes count as sent, with their chunked framing.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n")
        upstream = self.proxy.accept_upstream()
        channel.dataReceived(b"0\r\n\r\n")
        self.assertEqual(self.stats.upstream_cx_tx_bytes_total, len(upstream.value()))
        self.assertEqual(self.pool().tx_bytes, len(upstream.value()))

    def test_connect_refused(self):
        """
        A refused connection is a connect failure, and its 503 a 5xx on both
        sides (as Envoy charges the cluster for it), but no upstream request.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        self.proxy.refuse_upstream()
        self.assertCounted(
            downstream_cx_total=1,
            downstream_rq_total=1,
            downstream_rq_5xx=1,
            upstream_cx_total=1,
            upstream_cx_connect_fail=1,
            upstream_rq_pending_total=1,
            upstream_rq_5xx=1,
            membership_change=1,
        )
        self.assertEqual((self.pool().cx_connect_fail, self.pool().rq_error), (1, 1))

    def test_connect_timeout(self):
        """
        A connect timeout counts as a connect failure and a connect timeout.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        self.proxy.refuse_upstream(TimeoutError())
        self.assertEqual(
            (self.stats.upstream_cx_connect_fail, self.stats.upstream_cx_connect_timeout), (1, 1)
        )

    def test_overflow(self):
        """
        A request beyond the pending limit is a pending overflow; the ones
        that waited count as pending.
        """
        proxy = ProxyHarness(self, max_connections=1, max_pending_requests=2)
        for i in range(3):
            proxy.client(peer=("10.250.0.2", 40000 + i))[0].dataReceived(GET)
        stats = proxy.cluster.stats
        self.assertEqual(
            (stats.upstream_rq_pending_total, stats.upstream_rq_pending_overflow, stats.upstream_cx_total),
            (2, 1, 1),
        )
        self.assertEqual((stats.downstream_rq_xx[5], stats.upstream_rq_xx[5]), (1, 1))
        self.assertEqual(proxy.cluster.gauges()["upstream_rq_pending_active"], 2)

    def test_request_timeout(self):
        """
        A route timeout counts on the cluster and the host, and its 504 as a
        5xx.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        self.proxy.accept_upstream()
        self.proxy.reactor.advance(16)
        self.assertEqual(parse_response(client.value())[0], 504)
        self.assertEqual(
            (self.stats.upstream_rq_timeout, self.stats.upstream_rq_total, self.stats.downstream_rq_xx[5]),
            (1, 1, 1),
        )
        self.assertEqual((self.pool().rq_timeout, self.pool().rq_error), (1, 1))

    def test_retry(self):
        """
        A GET sent again after a reused connection turned out closed is a
        retry and a second upstream request.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        first = self.proxy.accept_upstream()
        first.protocol.dataReceived(OK)
        channel.dataReceived(GET)
        first.loseConnection()
        second = self.proxy.accept_upstream(local_port=50001)
        second.protocol.dataReceived(OK)
        self.assertEqual(self.stats.upstream_rq_retry, 1)
        # The lost connection was under a request: a remote reset, retried.
        self.assertEqual(self.stats.upstream_rq_rx_reset, 1)
        self.assertEqual((self.stats.downstream_rq_total, self.stats.upstream_rq_total), (2, 3))
        self.assertEqual((self.stats.downstream_rq_xx[2], self.stats.upstream_rq_xx[2]), (2, 2))

    def test_upstream_classes(self):
        """
        Upstream 4xx and 5xx responses count in their class on both sides; a
        5xx is an error of the host.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        upstream = self.proxy.accept_upstream()
        upstream.protocol.dataReceived(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        channel.dataReceived(GET)
        upstream.protocol.dataReceived(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
        channel.dataReceived(GET)
        upstream.protocol.dataReceived(b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n")
        for side in (self.stats.downstream_rq_xx, self.stats.upstream_rq_xx):
            self.assertEqual(side[1:6], [0, 0, 1, 1, 1])
        self.assertEqual((self.pool().rq_success, self.pool().rq_error), (2, 1))

    def test_malformed_request(self):
        """
        A malformed request is a downstream request and a 4xx, nothing upstream.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n")
        self.assertCounted(downstream_cx_total=1, downstream_rq_total=1, downstream_rq_4xx=1)

    def test_head_too_large(self):
        """
        A head that never ends within the limit still counts as a request
        answered 431.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(b"GET / HTTP/1.1\r\nX: " + b"a" * 70000)
        self.assertEqual((self.stats.downstream_rq_total, self.stats.downstream_rq_xx[4]), (1, 1))

    def test_no_original_destination(self):
        """
        A connection with no original destination counts once as such; its
        request is a downstream 5xx and nothing upstream.
        """
        channel, client = self.proxy.client(destination=NoOriginalDestination("No such file"))
        channel.dataReceived(GET)
        self.assertCounted(
            downstream_cx_total=1, downstream_rq_total=1, downstream_rq_5xx=1, no_original_dst=1
        )

    def test_loops(self):
        """
        Both kinds of redirect loop count as refused loops.
        """
        channel, client = self.proxy.client(destination=("127.0.0.1", 4999))
        channel.dataReceived(GET)
        channel, client = self.proxy.client(peer=("10.250.0.2", 40001))
        channel.dataReceived(GET)
        self.proxy.accept_upstream(local_port=50007)
        looped, _ = self.proxy.client(peer=("10.250.0.2", 50007))
        looped.dataReceived(GET)
        self.assertEqual(self.stats.redirect_loop, 2)
        self.assertEqual(self.stats.downstream_rq_xx[5], 2)
        self.assertEqual(self.stats.upstream_rq_total, 1)

    def test_tunnel(self):
        """
        An upgrade's 101 counts as a 1xx on both sides, and the tunnel's
        bytes count both ways.
        """

        channel, client = self.proxy.client()
        channel.dataReceived(UPGRADE)
        upstream = self.proxy.accept_upstream()
        upstream.protocol.dataReceived(SWITCH + b"hi")
        channel.dataReceived(b"hello")
        self.assertEqual((self.stats.downstream_rq_xx[1], self.stats.upstream_rq_xx[1]), (1, 1))
        self.assertEqual(self.pool().tx_bytes, len(upstream.value()))
        self.assertTrue(upstream.value().endswith(b"hello"))
        self.assertEqual(self.pool().rx_bytes, len(SWITCH) + 2)
        self.assertEqual(self.stats.upstream_cx_tx_bytes_total, len(upstream.value()))

    def test_stream_ids(self):
        """
        Each request's log lines carry its connection and its own stream id.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        upstream = self.proxy.accept_upstream()
        upstream.protocol.dataReceived(OK)
        channel.dataReceived(GET)
        upstream.protocol.dataReceived(OK)
        tags = [re.match(r"^\[C1\](\[S\d+\]) response complete\.$", m) for m in self.log]
        streams = [t.group(1) for t in tags if t]
        self.assertEqual(len(streams), 2)
        self.assertNotEqual(streams[0], streams[1])
        self.assertTrue(any(m.startswith("[C1]" + streams[0] + " GET /a?b=1") for m in self.log))


class GaugeTests(unittest.TestCase):
    """
    Gauges are read from the cluster when asked.
    """

    def test_gauges_follow_connections(self):
        """
        Connections being opened and busy, requests carried and waiting, and
        hosts, as the cluster sees them at the time.
        """
        proxy = ProxyHarness(self)
        cluster = proxy.cluster
        self.assertEqual(
            cluster.gauges(),
            dict.fromkeys(
                ["upstream_cx_active", "upstream_rq_active", "upstream_rq_pending_active",
                 "membership_total", "membership_healthy"], 0),
        )
        channel, client = proxy.client()
        channel.dataReceived(GET)
        gauges = cluster.gauges()
        self.assertEqual(
            (gauges["upstream_cx_active"], gauges["upstream_rq_active"], gauges["upstream_rq_pending_active"]),
            (1, 0, 1),
        )
        upstream = proxy.accept_upstream()
        gauges = cluster.gauges()
        self.assertEqual(
            (gauges["upstream_cx_active"], gauges["upstream_rq_active"], gauges["upstream_rq_pending_active"]),
            (1, 1, 0),
        )
        upstream.protocol.dataReceived(OK)
        self.assertEqual(cluster.gauges()["upstream_rq_active"], 0)
        self.assertEqual((cluster.gauges()["membership_total"], cluster.gauges()["membership_healthy"]), (1, 1))

    def test_membership_change_on_sweep(self):
        """
        Adding a host is a membership change, and so is each sweep that
        removes hosts.
        """
        proxy = ProxyHarness(self)
        cluster = proxy.cluster
        cluster.host("10.250.0.3", 80)
        cluster.host("10.250.0.3", 81)
        self.assertEqual(cluster.stats.membership_change, 2)
        cluster.sweep()
        self.assertEqual(cluster.stats.membership_change, 2)
        cluster.sweep()
        self.assertEqual((cluster.stats.membership_change, cluster.gauges()["membership_total"]), (3, 0))


class FormatTests(unittest.TestCase):
    """
    The stats in Envoy's three forms.
    """

    def collected(self, **kwargs):
        stats = Stats(started=10)
        stats.downstream_rq_total = 12
        stats.downstream_rq_xx[2] = 11
        stats.downstream_rq_xx[5] = 1
        stats.upstream_rq_total = 11
        stats.upstream_rq_xx[2] = 11
        stats.no_original_dst = 2
        stats.state = statsmodule.LIVE
        gauges = {"upstream_cx_active": 1, "membership_total": 1}
        return collect(stats, 25.5, "original_dst", gauges, **kwargs)

    def test_text(self):
        """
        C{name: value} lines sorted by name, with Envoy's names.
        """
        text = statsmodule.as_text(self.collected(listener="0.0.0.0_4999"))
        lines = text.splitlines()
        self.assertEqual(lines, sorted(lines))
        for line in [
            "http.origdst.downstream_rq_total: 12",
            "http.origdst.downstream_rq_2xx: 11",
            "http.origdst.downstream_rq_5xx: 1",
            "http.origdst.downstream_cx_active: 0",
            "listener.0.0.0.0_4999.downstream_cx_total: 0",
            "cluster.original_dst.upstream_rq_total: 11",
            "cluster.original_dst.upstream_rq_2xx: 11",
            "cluster.original_dst.upstream_cx_active: 1",
            "cluster.original_dst.membership_total: 1",
            "cluster.original_dst.upstream_rq_pending_overflow: 0",
            "origdst.no_original_dst: 2",
            "origdst.redirect_loop: 0",
            "server.uptime: 15",
            "server.state: 0",
            "server.live: 1",
        ]:
            self.assertIn(line, lines)

    def test_no_listener(self):
        """
        Before listening there are no listener stats.
        """
        self.assertFalse([s for s in self.collected() if s.name.startswith("listener.")])

    def test_select(self):
        """
        C{filter} is a regular expression searched in the name; C{usedonly}
        keeps non-zero values.
        """
        names = [s.name for s in statsmodule.select(self.collected(), r"rq_2xx$")]
        self.assertEqual(names, ["cluster.original_dst.upstream_rq_2xx", "http.origdst.downstream_rq_2xx"])
        used = statsmodule.select(self.collected(), "^cluster", used_only=True)
        self.assertEqual(
            [s.name for s in used],
            ["cluster.original_dst.membership_total", "cluster.original_dst.upstream_cx_active",
             "cluster.original_dst.upstream_rq_2xx", "cluster.original_dst.upstream_rq_total"],
        )

    def test_json(self):
        """
        Envoy's JSON form.
        """
        data = json.loads(statsmodule.as_json(self.collected()))
        # The last element is Envoy's histograms one (see test_histogram).
        self.assertEqual(list(data["stats"][-1]), ["histograms"])
        values = {s["name"]: s["value"] for s in data["stats"][:-1]}
        self.assertEqual(values["http.origdst.downstream_rq_total"], 12)

    def test_prometheus(self):
        """
        One TYPE line per metric, then its samples, named as Envoy's
        exposition names them; the code class is a label.
        """
        text = statsmodule.as_prometheus(self.collected(listener="[__]_4999"))
        lines = text.splitlines()
        self.assertIn("# TYPE envoy_cluster_upstream_rq_total counter", lines)
        self.assertIn('envoy_cluster_upstream_rq_total{envoy_cluster_name="original_dst"} 11', lines)
        self.assertIn("# TYPE envoy_cluster_upstream_cx_active gauge", lines)
        self.assertIn(
            'envoy_http_downstream_rq_xx{envoy_response_code_class="5",'
            'envoy_http_conn_manager_prefix="origdst"} 1',
            lines,
        )
        self.assertEqual(lines.count("# TYPE envoy_http_downstream_rq_xx counter"), 1)
        self.assertIn('envoy_listener_downstream_cx_total{envoy_listener_address="[__]_4999"} 0', lines)
        self.assertIn("envoy_origdst_no_original_dst 2", lines)
        self.assertIn("envoy_server_live 1", lines)
        # Every sample line is NAME{LABELS} VALUE or NAME VALUE, under its
        # TYPE; a histogram's are NAME_bucket, NAME_sum and NAME_count.
        current = kind = None
        for line in lines:
            if line.startswith("# TYPE "):
                current, kind = line.split()[2:4]
                continue
            if kind == "histogram":
                match = re.match(r'^([a-z_]+)(\{([a-z_]+="[^"]*",?)*\})? -?\d+(\.\d+)?$', line)
                self.assertTrue(match, line)
                self.assertIn(match.group(1), [current + "_bucket", current + "_sum", current + "_count"])
                continue
            match = re.match(r'^([a-z_]+)(\{([a-z_]+="[^"]*",?)*\})? -?\d+$', line)
            self.assertTrue(match, line)
            self.assertEqual(match.group(1), current)

    def test_label_escaping(self):
        """
        Label values are escaped as the exposition format requires.
        """
        stats = collect(Stats(), 0, 'a"b\\c', {})
        text = statsmodule.as_prometheus(stats)
        self.assertIn('envoy_cluster_name="a\\"b\\\\c"', text)

    def test_reset(self):
        """
        Resetting zeroes the counters and keeps the gauges and the state.
        """
        stats = Stats()
        stats.downstream_rq_total = 3
        stats.downstream_rq_xx[2] = 3
        stats.downstream_cx_active = 2
        stats.state = statsmodule.LIVE
        stats.reset()
        self.assertEqual((stats.downstream_rq_total, stats.downstream_rq_xx[2]), (0, 0))
        self.assertEqual((stats.downstream_cx_active, stats.state), (2, statsmodule.LIVE))
