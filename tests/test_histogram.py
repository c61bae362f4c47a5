"""
Tests for L{origdst.histogram} and the latency histograms the data path
records: buckets, percentiles, Envoy's text, JSON and Prometheus forms, and
the times measured on a L{MemoryReactorClock}.
"""

import json
import math

from twisted.trial import unittest

from origdst import histogram, stats as statsmodule
from origdst.histogram import BOUNDS, ENVOY_BOUNDS, QUANTILES, Histogram

from tests.helpers import GET, OK, ProxyHarness, capture_log


def recorded(*values):
    h = Histogram()
    for value in values:
        h.record(value)
    return h


class BucketTests(unittest.TestCase):
    def test_bounds(self):
        """
        The buckets are sorted, finer than Envoy's, and include each of
        Envoy's default bounds exactly.
        """
        self.assertEqual(list(BOUNDS), sorted(set(BOUNDS)))
        for bound in ENVOY_BOUNDS:
            self.assertIn(float(bound), BOUNDS)
        self.assertGreater(len(BOUNDS), 3 * len(ENVOY_BOUNDS))
        self.assertEqual(ENVOY_BOUNDS[0], 0.5)
        self.assertEqual(ENVOY_BOUNDS[-1], 3600000)
        self.assertEqual(len(ENVOY_BOUNDS), 19)

    def test_record(self):
        """
        A value counts in the first bucket whose bound is not below it (the
        Prometheus C{le}); the sum adds up; one above every bound counts in
        the last bucket.
        """
        h = recorded(0.5, 0.51, 1e9)
        self.assertEqual(h.counts[BOUNDS.index(0.5)], 1)
        self.assertEqual(h.counts[BOUNDS.index(0.5) + 1], 1)
        self.assertEqual(h.counts[-1], 1)
        self.assertEqual(h.count, 3)
        self.assertEqual(h.sum, 0.5 + 0.51 + 1e9)
        self.assertTrue(h)
        self.assertFalse(Histogram())

    def test_quantiles(self):
        """
        Percentiles are interpolated within a bucket, so they are within the
        bucket's width of the values recorded; none is NaN unless empty.
        """
        h = recorded(*([2.0] * 50 + [20.0] * 49 + [400.0]))
        p = dict(zip(QUANTILES, histogram.quantiles(h.counts)))
        self.assertTrue(1.6 <= p[0] <= 2.0, p)
        self.assertTrue(1.6 <= p[25] <= 2.0, p)
        self.assertTrue(16 <= p[75] <= 20, p)
        self.assertTrue(320 <= p[100] <= 400, p)
        self.assertEqual(sorted(p.values()), [p[q] for q in QUANTILES])
        self.assertTrue(all(math.isnan(v) for v in histogram.quantiles(Histogram().counts)))
        self.assertTrue(all(math.isnan(v) for v in histogram.quantiles(None)))

    def test_flush(self):
        """
        A flush makes what was recorded since the previous one the interval;
        the cumulative counts keep everything.
        """
        h = recorded(3.0)
        self.assertIsNone(h.interval)
        h.flush()
        self.assertEqual(sum(h.interval), 1)
        h.record(7.0)
        h.record(8.0)
        h.flush()
        self.assertEqual(sum(h.interval), 2)
        self.assertEqual(h.interval_sum, 15.0)
        self.assertEqual(h.count, 3)
        h.flush()
        self.assertEqual(sum(h.interval), 0)

    def test_add(self):
        """
        Another process's snapshot adds bucket by bucket, through JSON.
        """
        mine, theirs = recorded(1.0, 100.0), recorded(100.0)
        mine.flush()
        theirs.flush()
        theirs.record(5.0)
        mine.add(json.loads(json.dumps(theirs.snapshot())))
        self.assertEqual(mine.count, 4)
        self.assertEqual(mine.sum, 206.0)
        self.assertEqual(mine.counts[BOUNDS.index(100.0)], 2)
        self.assertEqual(sum(mine.interval), 3)
        fresh = Histogram()
        fresh.add(mine.snapshot())
        self.assertEqual(fresh.counts, mine.counts)
        self.assertEqual(fresh.interval, mine.interval)


class FormatTests(unittest.TestCase):
    def test_text(self):
        """
        Envoy's C{/stats} line: P<q>(interval,cumulative) for each of
        Envoy's quantiles, nan for an interval with nothing; or C{No
        recorded values}.
        """
        self.assertEqual(histogram.as_text("x.t", Histogram()), "x.t: No recorded values\n")
        h = recorded(0.3)
        line = histogram.as_text("x.t", h)
        self.assertRegex(
            line, r"^x\.t: P0\(nan,[\d.]+\) P25\(nan,[\d.]+\) P50\(nan,[\d.]+\) P75\(nan,[\d.]+\) "
            r"P90\(nan,[\d.]+\) P95\(nan,[\d.]+\) P99\(nan,[\d.]+\) P99\.5\(nan,[\d.]+\) "
            r"P99\.9\(nan,[\d.]+\) P100\(nan,[\d.]+\)\n$",
        )
        h.flush()
        self.assertIn("P100(0.32,0.32)", histogram.as_text("x.t", h))

    def test_json(self):
        """
        Envoy's C{histograms} element: supported quantiles, then the values
        of each histogram, an interval without values as null.
        """
        data = histogram.as_json([("x.t", recorded(10.0))])
        self.assertEqual(data["histograms"]["supported_quantiles"], [0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100])
        (one,) = data["histograms"]["computed_quantiles"]
        self.assertEqual(one["name"], "x.t")
        self.assertEqual(len(one["values"]), 10)
        self.assertEqual(one["values"][-1], {"interval": None, "cumulative": 10})
        json.dumps(data, allow_nan=False)

    def test_prometheus(self):
        """
        Cumulative C{_bucket} samples at Envoy's bounds and +Inf, with the
        stat's labels before C{le}, then C{_sum} and C{_count}.
        """
        text = histogram.as_prometheus("m", 'a="b"', recorded(0.2, 3.0, 3.0, 70000.0, 1e8))
        lines = text.splitlines()
        self.assertEqual(len(lines), len(ENVOY_BOUNDS) + 3)
        self.assertEqual(lines[0], 'm_bucket{a="b",le="0.5"} 1')
        self.assertEqual(lines[1], 'm_bucket{a="b",le="1"} 1')
        self.assertEqual(lines[2], 'm_bucket{a="b",le="5"} 3')
        self.assertIn('m_bucket{a="b",le="60000"} 3', lines)
        self.assertIn('m_bucket{a="b",le="300000"} 4', lines)
        self.assertEqual(lines[18], 'm_bucket{a="b",le="3600000"} 4')
        self.assertEqual(lines[19], 'm_bucket{a="b",le="+Inf"} 5')
        self.assertEqual(lines[20], 'm_sum{a="b"} 100070006.2')
        self.assertEqual(lines[21], 'm_count{a="b"} 5')
        counts = [int(line.rsplit(" ", 1)[1]) for line in lines[:20]]
        self.assertEqual(counts, sorted(counts))
        self.assertEqual(histogram.as_prometheus("m", "", Histogram()).splitlines()[-2:], ["m_sum 0", "m_count 0"])


class RecordingTests(unittest.TestCase):
    """
    The times the data path records, on the harness's clock.
    """

    def setUp(self):
        capture_log(self)
        self.proxy = ProxyHarness(self)
        self.stats = self.proxy.cluster.stats

    def test_upstream_and_downstream(self):
        """
        downstream_rq_time runs from the request's start to the response's
        last byte; upstream_rq_time from the whole request having been read
        to the same moment (here both 250 ms, the connect included).
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        self.proxy.reactor.advance(0.1)
        upstream = self.proxy.accept_upstream()
        self.proxy.reactor.advance(0.15)
        upstream.protocol.dataReceived(OK)
        for h in (self.stats.downstream_rq_time, self.stats.upstream_rq_time):
            self.assertEqual(h.count, 1)
            self.assertAlmostEqual(h.sum, 250.0, places=6)

    def test_body_streams(self):
        """
        A request whose body takes 2 s to arrive: downstream_rq_time counts
        those 2 s, upstream_rq_time starts once the body is complete.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
        upstream = self.proxy.accept_upstream()
        self.proxy.reactor.advance(2)
        channel.dataReceived(b"cd")
        self.proxy.reactor.advance(0.5)
        upstream.protocol.dataReceived(OK)
        self.assertAlmostEqual(self.stats.downstream_rq_time.sum, 2500.0, places=6)
        self.assertAlmostEqual(self.stats.upstream_rq_time.sum, 500.0, places=6)

    def test_local_reply(self):
        """
        A local reply counts in downstream_rq_time, not in upstream_rq_time
        (Envoy records that only for upstream responses).
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        self.proxy.reactor.advance(3)
        self.proxy.refuse_upstream()
        self.assertEqual(self.stats.downstream_rq_time.count, 1)
        self.assertAlmostEqual(self.stats.downstream_rq_time.sum, 3000.0, places=6)
        self.assertFalse(self.stats.upstream_rq_time)
        channel, client = self.proxy.client()
        channel.dataReceived(b"BAD\r\n\r\n")
        self.assertEqual(self.stats.downstream_rq_time.count, 2)

    def test_in_stats(self):
        """
        Both histograms come out of L{statsmodule.collect} under Envoy's
        names, sorted among the other figures, in every format.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        self.proxy.reactor.advance(0.004)
        self.proxy.accept_upstream().protocol.dataReceived(OK)
        collected = statsmodule.collect(self.stats, 0, "original_dst", {})
        names = [s.name for s in collected]
        self.assertEqual(names, sorted(names))
        self.assertEqual(
            [s.name for s in collected if s.kind == histogram.HISTOGRAM],
            ["cluster.original_dst.upstream_rq_time", "http.origdst.downstream_rq_time"],
        )
        text = statsmodule.as_text(collected)
        self.assertRegex(text, r"\ncluster\.original_dst\.upstream_rq_time: P0\(nan,[\d.]+\) ")
        prom = statsmodule.as_prometheus(collected).splitlines()
        self.assertIn("# TYPE envoy_cluster_upstream_rq_time histogram", prom)
        self.assertIn('envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="original_dst",le="5"} 1', prom)
        self.assertIn('envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="original_dst",le="1"} 0', prom)
        self.assertIn('envoy_cluster_upstream_rq_time_count{envoy_cluster_name="original_dst"} 1', prom)
        self.assertIn(
            'envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix="origdst",le="+Inf"} 1', prom
        )
        data = json.loads(statsmodule.as_json(collected))
        self.assertEqual(
            [q["name"] for q in data["stats"][-1]["histograms"]["computed_quantiles"]],
            ["cluster.original_dst.upstream_rq_time", "http.origdst.downstream_rq_time"],
        )
        self.assertTrue(all("name" in s for s in data["stats"][:-1]))
        used = statsmodule.select(collected, "rq_time", used_only=True)
        self.assertEqual(len(used), 2)
        self.assertEqual(statsmodule.select(statsmodule.collect(statsmodule.Stats(), 0, "c", {}), "rq_time", True), [])

    def test_reset_keeps_histograms(self):
        """
        /reset_counters zeroes counters, not histograms, as in Envoy.
        """
        self.stats.downstream_rq_time.record(1.0)
        self.stats.reset()
        self.assertEqual(self.stats.downstream_rq_time.count, 1)
