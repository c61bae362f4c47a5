"""
origdst's counters, and the text formats they are shown in.

The data path increments plain attributes of one L{Stats} object (the cluster
carries it down to every connection), so counting costs an attribute
increment and nothing is looked up by name per request. Gauges (active
connections, hosts) are not kept up to date on the hot path at all: the admin
endpoint derives them from the cluster when asked. Names follow Envoy's, so
dashboards and alerts written for Envoy read origdst too:

  - C{http.origdst.*}: downstream requests and connections (Envoy's HTTP
    connection manager with C{stat_prefix: origdst});
  - C{listener.<address>.*}: accepted connections;
  - C{cluster.<cluster_name>.*}: upstream connections and requests, and
    C{cluster.<cluster_name>.ssl.*} the TLS handshakes of originated ones;
  - C{tcp.origdst.*}: relayed TCP connections (Envoy's tcp_proxy with
    C{stat_prefix: origdst}); C{tls_inspector.*}: the
    ClientHellos read, as Envoy's listener filter counts them;
  - C{server.*}: uptime, state, live, and (with C{--workers}) the workers
    restarted and those that did not answer the admin;
  - C{origdst.*}: what only a transparent proxy has (connections that had no
    original destination, redirect loops refused, what detection chose).

Two latency histograms (L{origdst.histogram}) are recorded on the data path:
C{cluster.<name>.upstream_rq_time}, from the whole request having been read
to the response's last byte, and C{http.origdst.downstream_rq_time}, from
the request's start to its response's last byte (local replies included),
both in milliseconds, as Envoy's.

With C{--workers}, L{snapshot} and L{Stats.add} carry each worker's figures
to the main process's admin, which shows their sum.

It imports only L{origdst.histogram}, another leaf.
"""

import json
import re
from bisect import bisect_left

from origdst import histogram
from origdst.histogram import HISTOGRAM, Histogram

# How admin names a listening address in stats (C{0.0.0.0_4999}).

HTTP_PREFIX = "origdst"

# Server states, with Envoy's numbers for the server.state gauge.
LIVE = "LIVE"
DRAINING = "DRAINING"
PRE_INITIALIZING = "PRE_INITIALIZING"
STATE_NUMBERS = {LIVE: 0, DRAINING: 1, PRE_INITIALIZING: 2}

COUNTER = "counter"
GAUGE = "gauge"

# Response classes shown, as indexes of the *_rq_xx lists (status // 100).
CLASSES = (1, 2, 3, 4, 5)

_COUNTERS = (
    "downstream_cx_total",
    "downstream_rq_total",
    "upstream_cx_total",
    "upstream_cx_connect_fail",
    "upstream_cx_connect_timeout",
    "upstream_cx_rx_bytes_total",
    "upstream_cx_tx_bytes_total",
    "upstream_rq_total",
    "upstream_rq_pending_total",
    "upstream_rq_pending_overflow",
    "upstream_rq_timeout",
    "upstream_rq_retry",
    "upstream_rq_rx_reset",
    "membership_change",
    "no_original_dst",
    "redirect_loop",
    "tcp_cx_total",
    "tcp_cx_denied",
    "tcp_rx_bytes",
    "tcp_tx_bytes",
    "tcp_idle_timeout",
    "tls_found",
    "sni_found",
    "sni_not_found",
    "alpn_found",
    "alpn_not_found",
    "http_found",
    "http_not_found",
    "worker_restarts",
    "ssl_handshake",
    "ssl_connection_error",
    "ssl_fail_verify_san",
    "ssl_fail_verify_error",
)

# Originated TLS (origdst.origination), by the names of Envoy's upstream TLS
# context: cluster.<name>.ssl.<leaf>.
_SSL = ("handshake", "connection_error", "fail_verify_san", "fail_verify_error")

# The relay's counters by Envoy's tcp_proxy names (downstream_cx_denied is
# origdst's own: Envoy's RBAC filter counts those).
_TCP = (
    ("downstream_cx_total", "tcp_cx_total"),
    ("downstream_cx_rx_bytes_total", "tcp_rx_bytes"),
    ("downstream_cx_tx_bytes_total", "tcp_tx_bytes"),
    ("idle_timeout", "tcp_idle_timeout"),
    ("downstream_cx_denied", "tcp_cx_denied"),
)
_INSPECTORS = (
    ("tls_inspector", "tls_found", "tls_found"),
    ("tls_inspector", "sni_found", "sni_found"),
    ("tls_inspector", "sni_not_found", "sni_not_found"),
    ("tls_inspector", "alpn_found", "alpn_found"),
    ("tls_inspector", "alpn_not_found", "alpn_not_found"),
    ("origdst", "detected_http", "http_found"),
    ("origdst", "detected_tcp", "http_not_found"),
)


class Stats:
    """
    The counters of one proxy process.

    @ivar downstream_rq_xx: responses sent to clients, indexed by
        C{status // 100} (local replies included, as in Envoy).
    @ivar upstream_rq_xx: responses from upstream hosts by class, plus the
        local replies an upstream failure caused (connect failure, overflow,
        reset, timeout), as Envoy charges them to the cluster.
    @ivar downstream_cx_active: a gauge, kept by the connections themselves.
    @ivar state: L{PRE_INITIALIZING}, L{LIVE} or L{DRAINING}.
    @ivar started: when the process started, in the reactor's seconds.
    """

    __slots__ = _COUNTERS + (
        "downstream_cx_active",
        "tcp_cx_active",
        "downstream_rq_xx",
        "upstream_rq_xx",
        "state",
        "started",
        "upstream_rq_time",
        "downstream_rq_time",
        "workers",
        "workers_missing",
    )

    def __init__(self, started=0.0):
        self.reset()
        self.downstream_cx_active = 0
        self.tcp_cx_active = 0
        # Not reset by /reset_counters, as Envoy's histograms are not.
        self.upstream_rq_time = Histogram()
        self.downstream_rq_time = Histogram()
        # How many processes these figures are the sum of, and the numbers
        # of the workers that did not answer (set on a merged copy).
        self.workers = 1
        self.workers_missing = ()
        self.state = PRE_INITIALIZING
        self.started = started

    def reset(self):
        """
        Zero the counters (Envoy's C{/reset_counters}); gauges keep counting.
        """
        for name in _COUNTERS:
            setattr(self, name, 0)
        # Ten slots: status // 100 of any three-digit status is an index.
        self.downstream_rq_xx = [0] * 10
        self.upstream_rq_xx = [0] * 10

    def responded(self, start, request_done, now, _bisect=bisect_left, _bounds=histogram.BOUNDS):
        """
        A response's last byte went to the client: record its latencies.

        @param start: when the request began, or C{None} for a request
            answered as soon as it was read (a refusal: 0 ms).
        @param request_done: when the whole request had been read, or
            C{None} for a local reply or a response that came before the
            request's end (Envoy records C{upstream_rq_time} for neither).
        """
        # Histogram.record, inlined: this runs once per request.
        ms = 0.0 if start is None else (now - start) * 1000
        times = self.downstream_rq_time
        times.counts[_bisect(_bounds, ms)] += 1
        times.sum += ms
        if request_done is not None:
            ms = (now - request_done) * 1000
            times = self.upstream_rq_time
            times.counts[_bisect(_bounds, ms)] += 1
            times.sum += ms

    def flush(self):
        """
        End the histograms' interval (every L{histogram.FLUSH_INTERVAL}).
        """
        self.upstream_rq_time.flush()
        self.downstream_rq_time.flush()

    def snapshot(self, gauges=None):
        """
        @param gauges: the cluster's gauges, to carry along.
        @return: the figures as JSON-able data, for L{add} in another process.
        """
        data = {name: getattr(self, name) for name in _COUNTERS + _ADDED}
        data["upstream_rq_time"] = self.upstream_rq_time.snapshot()
        data["downstream_rq_time"] = self.downstream_rq_time.snapshot()
        data["gauges"] = gauges or {}
        return data

    def add(self, snapshot):
        """
        Add another process's L{snapshot}: counters, gauges and classes
        summed, histograms merged bucket by bucket.

        @return: its cluster gauges.
        """
        for name in _COUNTERS + ("downstream_cx_active", "tcp_cx_active"):
            setattr(self, name, getattr(self, name) + snapshot.get(name, 0))
        for name in ("downstream_rq_xx", "upstream_rq_xx"):
            setattr(self, name, [a + b for a, b in zip(getattr(self, name), snapshot[name])])
        self.upstream_rq_time.add(snapshot["upstream_rq_time"])
        self.downstream_rq_time.add(snapshot["downstream_rq_time"])
        self.workers += 1
        return snapshot.get("gauges", {})


# The figures a snapshot carries besides the counters.
_ADDED = ("downstream_cx_active", "tcp_cx_active", "downstream_rq_xx", "upstream_rq_xx")


class Stat:
    """
    One figure, with its Envoy text name and its Prometheus name and labels.
    """

    __slots__ = ("name", "value", "kind", "metric", "labels")

    def __init__(self, name, value, kind, metric, labels=()):
        self.name = name
        self.value = value
        self.kind = kind
        self.metric = metric
        self.labels = labels


def _scoped(scope, label, tag, leaf, value, kind):
    """
    A stat named C{<scope>.<tag>.<leaf>}, in Prometheus
    C{envoy_<scope>_<leaf>{<label>="<tag>"}}; a C{_<N>xx} leaf becomes
    C{envoy_<scope>_<base>_xx{envoy_response_code_class="<N>", ...}} as in
    Envoy's exposition.
    """
    labels = ((label, tag),)
    metric = leaf.replace(".", "_")
    match = re.match(r"^(.*)_([1-5])xx$", leaf)
    if match:
        metric = match.group(1) + "_xx"
        labels = (("envoy_response_code_class", match.group(2)),) + labels
    return Stat(f"{scope}.{tag}.{leaf}", value, kind, f"envoy_{scope}_{metric}", labels)


def collect(stats, now, cluster_name, gauges, listener=None):
    """
    Every figure of the process, as L{Stat}s sorted by name.

    @param now: the reactor's current seconds, for the uptime.
    @param gauges: the cluster's gauges, by leaf name (C{upstream_cx_active},
        C{membership_total}, ...), read from the cluster by the caller.
    @param listener: the listening address as Envoy names it in stats
        (C{0.0.0.0_4999}), or C{None} when not listening.
    """
    out = []
    http = []
    for leaf in ("downstream_cx_total", "downstream_rq_total"):
        http.append((leaf, getattr(stats, leaf), COUNTER))
    http.append(("downstream_cx_active", stats.downstream_cx_active, GAUGE))
    for n in CLASSES:
        http.append((f"downstream_rq_{n}xx", stats.downstream_rq_xx[n], COUNTER))
    for leaf, value, kind in http:
        out.append(_scoped("http", "envoy_http_conn_manager_prefix", HTTP_PREFIX, leaf, value, kind))
    if listener is not None:
        for leaf, value, kind in (
            ("downstream_cx_total", stats.downstream_cx_total + stats.tcp_cx_total, COUNTER),
            ("downstream_cx_active", stats.downstream_cx_active + stats.tcp_cx_active, GAUGE),
        ):
            out.append(_scoped("listener", "envoy_listener_address", listener, leaf, value, kind))
    cluster = [
        (leaf, getattr(stats, leaf), COUNTER)
        for leaf in _COUNTERS
        if leaf.startswith(("upstream_", "membership_"))
    ]
    cluster += [(f"upstream_rq_{n}xx", stats.upstream_rq_xx[n], COUNTER) for n in CLASSES]
    cluster += [(leaf, value, GAUGE) for leaf, value in gauges.items()]
    cluster += [("ssl." + leaf, getattr(stats, "ssl_" + leaf), COUNTER) for leaf in _SSL]
    for leaf, value, kind in cluster:
        out.append(_scoped("cluster", "envoy_cluster_name", cluster_name, leaf, value, kind))
    for leaf, attr in _TCP:
        out.append(_scoped("tcp", "envoy_tcp_prefix", HTTP_PREFIX, leaf, getattr(stats, attr), COUNTER))
    out.append(_scoped("tcp", "envoy_tcp_prefix", HTTP_PREFIX, "downstream_cx_active", stats.tcp_cx_active, GAUGE))
    for scope, leaf, attr in _INSPECTORS:
        out.append(Stat(f"{scope}.{leaf}", getattr(stats, attr), COUNTER, f"envoy_{scope}_{leaf}"))
    for leaf in ("no_original_dst", "redirect_loop"):
        out.append(Stat(f"origdst.{leaf}", getattr(stats, leaf), COUNTER, f"envoy_origdst_{leaf}"))
    state = STATE_NUMBERS[stats.state]
    server = [("uptime", int(now - stats.started)), ("state", state), ("live", int(stats.state == LIVE))]
    if stats.workers > 1 or stats.workers_missing:
        server += [("workers", stats.workers + len(stats.workers_missing)), ("workers_missing", len(stats.workers_missing))]
        out.append(Stat("server.worker_restarts", stats.worker_restarts, COUNTER, "envoy_server_worker_restarts"))
    for leaf, value in server:
        out.append(Stat(f"server.{leaf}", value, GAUGE, f"envoy_server_{leaf}"))
    out.append(
        _scoped("cluster", "envoy_cluster_name", cluster_name, "upstream_rq_time", stats.upstream_rq_time, HISTOGRAM)
    )
    out.append(
        _scoped("http", "envoy_http_conn_manager_prefix", HTTP_PREFIX, "downstream_rq_time", stats.downstream_rq_time, HISTOGRAM)
    )
    out.sort(key=lambda stat: stat.name)
    return out


def select(stats, pattern=None, used_only=False):
    """
    Envoy's C{/stats} query parameters: C{filter} (a regular expression
    searched for in the name) and C{usedonly} (non-zero values only).

    @raise re.error: for a bad pattern.
    """
    if pattern:
        search = re.compile(pattern).search
        stats = [stat for stat in stats if search(stat.name)]
    if used_only:
        stats = [stat for stat in stats if stat.value]
    return stats


def _missing_note(missing):
    if not missing:
        return ""
    numbers = ", ".join(str(number) for number in missing)
    return f"# origdst: the sum leaves out worker {numbers}, which did not answer in time\n"


def as_text(stats, missing=()):
    """
    Envoy's C{/stats}: one C{name: value} line per stat, a line of
    percentiles for a histogram (L{histogram.as_text}).

    @param missing: the numbers of the workers left out of the sum, named
        in a last line.
    """
    lines = [
        histogram.as_text(stat.name, stat.value) if stat.kind == HISTOGRAM else f"{stat.name}: {stat.value}\n"
        for stat in stats
    ]
    return "".join(lines) + _missing_note(missing)


def as_json(stats, missing=()):
    """
    Envoy's C{/stats?format=json}: C{{"stats": [{"name": ..., "value": ...},
    ..., {"histograms": ...}]}}; origdst adds C{workers_missing} when
    workers did not answer.
    """
    out = [{"name": s.name, "value": s.value} for s in stats if s.kind != HISTOGRAM]
    histograms = [(s.name, s.value) for s in stats if s.kind == HISTOGRAM]
    if histograms:
        out.append(histogram.as_json(histograms))
    data = {"stats": out}
    if missing:
        data["workers_missing"] = list(missing)
    return json.dumps(data, indent=1)


def _label_value(value):
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def as_prometheus(stats, missing=()):
    """
    The Prometheus text exposition format (version 0.0.4), named as Envoy's
    C{/stats/prometheus}: one C{# TYPE} line per metric, then its samples;
    a comment names the workers left out of the sum.
    """
    metrics = {}
    for stat in stats:
        metrics.setdefault(stat.metric, []).append(stat)
    lines = []
    for metric in sorted(metrics):
        samples = metrics[metric]
        lines.append(f"# TYPE {metric} {samples[0].kind}\n")
        for stat in samples:
            labels = ",".join(f'{k}="{_label_value(v)}"' for k, v in stat.labels)
            if stat.kind == HISTOGRAM:
                lines.append(histogram.as_prometheus(metric, labels, stat.value))
            else:
                lines.append(f"{metric}{{{labels}}} {stat.value}\n" if labels else f"{metric} {stat.value}\n")
    return _missing_note(missing) + "".join(lines)
