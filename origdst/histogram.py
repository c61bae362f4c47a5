"""
Latency histograms, shown as Envoy shows its own: percentiles in C{/stats},
buckets in C{/stats/prometheus}, so that dashboards made for Envoy's
C{upstream_rq_time} and C{downstream_rq_time} read origdst's too.

Recording must cost the data path next to nothing: a value goes into a fixed
list of bucket counts found by one bisection, with no allocation. The buckets
are finer than Envoy's default Prometheus bounds (about ten a decade, and
every one of Envoy's bounds among them), so the percentiles interpolated
from them are within a bucket's width (about 25 %) of the truth, and Envoy's
bounds are exact sums of them. Counts of several processes (C{--workers})
add bucket by bucket.

As in Envoy, each percentile is shown twice: for the last completed interval
(L{Histogram.flush}, every L{FLUSH_INTERVAL} seconds, Envoy's
C{stats_flush_interval}) and cumulatively since the start.

It imports nothing of origdst: a leaf.
"""

import math
from bisect import bisect_left

#: Envoy's default histogram bucket bounds, in milliseconds: the C{le}
#: values of the Prometheus output.
ENVOY_BOUNDS = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
    60000, 300000, 600000, 1800000, 3600000,
)

#: Envoy's default quantiles, in percent.
QUANTILES = (0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100)

#: Seconds between interval flushes (Envoy's default stats flush interval).
FLUSH_INTERVAL = 5.0

HISTOGRAM = "histogram"


def _bounds():
    steps = (1, 1.25, 1.6, 2, 2.5, 3.2, 4, 5, 6.3, 8)
    fine = {round(step * 10.0 ** exponent, 6) for exponent in range(-2, 7) for step in steps}
    return tuple(sorted(fine | {float(bound) for bound in ENVOY_BOUNDS}))


#: The upper bounds of the recorded buckets, in milliseconds, 0.01 ms to
#: 8e6 ms; a last bucket counts anything above.
BOUNDS = _bounds()

# Where each of Envoy's bounds is among BOUNDS.
_ENVOY_INDEXES = tuple(BOUNDS.index(float(bound)) for bound in ENVOY_BOUNDS)


class Histogram:
    """
    Counts of values by bucket of L{BOUNDS}, cumulative and for the last
    flushed interval.

    @ivar counts: values recorded since the start, by bucket (C{counts[i]}
        counts values in C{(BOUNDS[i-1], BOUNDS[i]]}).
    @ivar sum: their sum.
    @ivar interval: the counts of the last completed interval, or C{None}
        before the first flush.
    """

    __slots__ = ("counts", "sum", "interval", "interval_sum", "_flushed", "_flushed_sum")

    def __init__(self):
        self.counts = [0] * (len(BOUNDS) + 1)
        self.sum = 0.0
        self.interval = None
        self.interval_sum = 0.0
        self._flushed = list(self.counts)
        self._flushed_sum = 0.0

    def record(self, ms, _bisect=bisect_left, _bounds=BOUNDS):
        """
        Count one value, in milliseconds.
        """
        self.counts[_bisect(_bounds, ms)] += 1
        self.sum += ms

    def flush(self):
        """
        End an interval: what was recorded since the previous flush becomes
        L{interval}.
        """
        counts = list(self.counts)
        self.interval = [now - then for now, then in zip(counts, self._flushed)]
        self.interval_sum = self.sum - self._flushed_sum
        self._flushed, self._flushed_sum = counts, self.sum

    @property
    def count(self):
        return sum(self.counts)

    def __bool__(self):
        # Envoy's "used": something was recorded at least once.
        return any(self.counts)

    def snapshot(self):
        """
        @return: the histogram as JSON-able data, for L{add}.
        """
        return {"counts": self.counts, "sum": self.sum, "interval": self.interval, "interval_sum": self.interval_sum}

    def add(self, snapshot):
        """
        Add another process's L{snapshot} to this one, bucket by bucket.
        """
        self.counts = [a + b for a, b in zip(self.counts, snapshot["counts"])]
        self.sum += snapshot["sum"]
        other = snapshot["interval"]
        if other is not None:
            mine = self.interval or [0] * len(other)
            self.interval = [a + b for a, b in zip(mine, other)]
            self.interval_sum += snapshot["interval_sum"]


def quantile(counts, q):
    """
    The C{q}th percentile of bucket C{counts}, interpolated linearly within
    its bucket (as Prometheus's C{histogram_quantile} does); NaN when empty.
    """
    total = sum(counts)
    if not total:
        return math.nan
    target = total * q / 100.0
    below = 0
    last = len(counts) - 1
    for index, count in enumerate(counts):
        if count and below + count >= target:
            lower = BOUNDS[index - 1] if index else 0.0
            upper = BOUNDS[index] if index < last else lower
            return lower + (upper - lower) * max(0.0, target - below) / count
        below += count
    return BOUNDS[-1]


def quantiles(counts):
    """
    @return: the L{QUANTILES} of C{counts} (NaN for each when C{None} or
        empty).
    """
    if counts is None:
        return [math.nan] * len(QUANTILES)
    return [quantile(counts, q) for q in QUANTILES]


def _number(value):
    """
    A number as Envoy's fmt prints it: C{nan}, C{1.05}, C{5}.
    """
    if math.isnan(value):
        return "nan"
    value = round(value, 6)
    return str(int(value)) if value == int(value) else repr(value)


def as_text(name, histogram):
    """
    Envoy's C{/stats} line: C{name: P0(interval,cumulative) P25(...) ...},
    or C{name: No recorded values}.
    """
    if not histogram:
        return f"{name}: No recorded values\n"
    pairs = zip(QUANTILES, quantiles(histogram.interval), quantiles(histogram.counts))
    return name + ": " + " ".join(f"P{_number(q)}({_number(i)},{_number(c)})" for q, i, c in pairs) + "\n"


def as_json(histograms):
    """
    Envoy's C{histograms} element of C{/stats?format=json}, for C{(name,
    histogram)} pairs; an interval without values is C{null}, as in Envoy.
    """

    def value(number):
        return None if math.isnan(number) else round(number, 6)

    computed = []
    for name, histogram in histograms:
        pairs = zip(quantiles(histogram.interval), quantiles(histogram.counts))
        computed.append({"name": name, "values": [{"interval": value(i), "cumulative": value(c)} for i, c in pairs]})
    return {"histograms": {"supported_quantiles": list(QUANTILES), "computed_quantiles": computed}}


def as_prometheus(metric, labels, histogram):
    """
    The samples of one histogram in the Prometheus exposition, as Envoy
    writes them: C{<metric>_bucket{<labels>,le="0.5"}} for each of
    L{ENVOY_BOUNDS} and C{+Inf}, then C{_sum} and C{_count}.

    @param labels: the C{k="v"} labels, joined, or C{""}.
    """
    counts = histogram.counts
    lines = []
    prefix = labels + "," if labels else ""
    below, done = 0, 0
    for bound, index in zip(ENVOY_BOUNDS, _ENVOY_INDEXES):
        below += sum(counts[done : index + 1])
        done = index + 1
        lines.append(f'{metric}_bucket{{{prefix}le="{_number(bound)}"}} {below}\n')
    total = sum(counts)
    lines.append(f'{metric}_bucket{{{prefix}le="+Inf"}} {total}\n')
    braces = "{" + labels + "}" if labels else ""
    lines.append(f"{metric}_sum{braces} {_number(histogram.sum)}\n")
    lines.append(f"{metric}_count{braces} {total}\n")
    return "".join(lines)
