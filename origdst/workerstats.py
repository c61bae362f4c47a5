"""
Workers that report as one: the figures of every C{--workers} process,
summed for the main process's admin.

Each worker answers its parent over a pipe the parent made when it started
it: the parent writes C{stats <id>} lines to the worker's standard input, and
the worker answers on its descriptor 3 with one line of JSON, its
L{snapshot}: counters, gauges and histograms (L{origdst.stats.Stats.snapshot})
and the figures of each host (L{origdst.clusterstatus.hosts}). The admin asks
every worker at once when a page is requested and waits at most
L{ANSWER_TIMEOUT} for their answers; a worker that did not answer in time is
left out of the sum and named in the output (L{Figures.missing}). Nothing is
sent between requests, so the data path pays nothing for it.
"""

import json

from twisted.internet import defer
from twisted.protocols.basic import LineOnlyReceiver

from origdst import clusterstatus
from origdst.logs import logger
from origdst.stats import Stats

log = logger("origdst.workers")

#: The descriptor a worker answers on.
ANSWER_FD = 3

#: How long the admin waits for the workers' answers, in seconds.
ANSWER_TIMEOUT = 1.0

# A worker's answer carries every host; bounded so a stuck line cannot grow.
MAX_LINE = 64 * 1024 * 1024


def snapshot(stats, cluster):
    """
    @return: the figures of this process as JSON-able data.
    """
    hosts = [
        {"key": h.key, "ip": h.ip, "port": h.port, "tls_name": h.tls_name, "last_used": h.last_used,
         "counters": c, "gauges": g}
        for h, c, g in clusterstatus.hosts(cluster)
    ]
    return {"stats": stats.snapshot(cluster.gauges()), "hosts": hosts}


class Figures:
    """
    What the admin shows: the sum over the processes that answered.

    @ivar stats: a L{Stats} holding the sums (its C{workers} says how many
        processes answered).
    @ivar gauges: the cluster's gauges, summed.
    @ivar hosts: C{(host, counters, gauges)} as L{clusterstatus.hosts}
        gives them, merged by address.
    @ivar missing: the numbers of the workers that did not answer, sorted.
    """

    def __init__(self, stats, gauges, hosts, missing=()):
        self.stats = stats
        self.gauges = gauges
        self.hosts = hosts
        self.missing = tuple(sorted(missing))


def own(stats, cluster):
    """
    @return: the L{Figures} of this process alone, read from the live objects.
    """
    return Figures(stats, cluster.gauges(), clusterstatus.hosts(cluster))


def merge(stats, cluster, answers, missing=()):
    """
    Sum this process's figures and the workers' L{snapshot}s.

    @param stats: this process's L{Stats}; its state and start are kept.
    @return: L{Figures}.
    """
    total = Stats(stats.started)
    total.state = stats.state
    total.workers = 0
    gauges = {}
    hosts = {}
    for answer in [snapshot(stats, cluster)] + list(answers):
        for name, value in total.add(answer["stats"]).items():
            gauges[name] = gauges.get(name, 0) + value
        for host in answer["hosts"]:
            hosts.setdefault((host["key"], host.get("tls_name")), []).append(host)
    total.workers_missing = tuple(sorted(missing))
    merged = [_merge_host(parts) for parts in hosts.values()]
    merged.sort(key=lambda figures: figures[0].order)
    return Figures(total, gauges, merged, missing)


def _merge_host(parts):
    first = parts[0]
    host = clusterstatus.HostFigures(
        first["key"], first["ip"], first["port"], max((p["last_used"] or 0) for p in parts) or None,
        first.get("tls_name"),
    )
    counters = _sum_pairs(p["counters"] for p in parts)
    gauges = _sum_pairs(p["gauges"] for p in parts)
    return host, counters, gauges


def _sum_pairs(lists):
    sums = {}
    for pairs in lists:
        for name, value in pairs:
            sums[name] = sums.get(name, 0) + value
    return sorted(sums.items())


class Reporter(LineOnlyReceiver):
    """
    A worker's side: answers each C{stats <id>} line from its parent with
    its L{snapshot}.
    """

    delimiter = b"\n"

    def __init__(self, stats, cluster, number):
        self.stats = stats
        self.cluster = cluster
        self.number = number

    def lineReceived(self, line):
        verb, _, ident = line.decode("ascii", "replace").partition(" ")
        if verb != "stats":
            return
        answer = {"id": ident, "worker": self.number, "figures": snapshot(self.stats, self.cluster)}
        self.transport.write(json.dumps(answer).encode("ascii") + b"\n")


def serve(reactor, stats, cluster, number, fd):
    """
    In a worker: answer the parent's requests, read on standard input, on
    the descriptor C{fd} the parent made for them.

    @return: the L{Reporter}.
    """
    from twisted.internet import stdio

    reporter = Reporter(stats, cluster, number)
    stdio.StandardIO(reporter, stdin=0, stdout=fd, reactor=reactor)
    return reporter


class Asker:
    """
    The parent's side of one worker's pipes: sends requests, matches the
    answers to them by id.

    @ivar write: writes bytes to the worker's standard input.
    """

    def __init__(self, write):
        self.write = write
        self.buffer = b""
        self.pending = {}
        self.next_id = 1

    def ask(self):
        """
        @return: a L{Deferred} firing with the worker's L{snapshot}; it is
            never failed here (the caller times it out).
        """
        ident = str(self.next_id)
        self.next_id += 1
        waiting = self.pending[ident] = defer.Deferred(lambda d: self.pending.pop(ident, None))
        try:
            self.write(b"stats " + ident.encode("ascii") + b"\n")
        except Exception:
            self.pending.pop(ident, None)
            log.failure("Could not ask a worker for its stats.")
        return waiting

    def received(self, data):
        """
        Bytes from the worker's answer descriptor.
        """
        self.buffer += data
        if len(self.buffer) > MAX_LINE:
            log.warn("A worker's stats answer is over {n} bytes; dropped.", n=MAX_LINE)
            self.buffer = b""
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            try:
                answer = json.loads(line)
                waiting = self.pending.pop(str(answer["id"]), None)
            except (ValueError, KeyError, TypeError):
                log.warn("A worker sent a stats answer that is not JSON; ignored.")
                continue
            if waiting is not None:
                waiting.callback(answer["figures"])

    def lost(self):
        """
        The worker ended: nobody will answer what is pending.
        """
        pending, self.pending = self.pending, {}
        self.buffer = b""
        for waiting in pending.values():
            waiting.cancel()


def gather(reactor, askers, configured, timeout=ANSWER_TIMEOUT):
    """
    Ask every worker at once and wait at most C{timeout} seconds.

    @param askers: L{Asker}s by worker number, for the running workers.
    @param configured: every worker number there should be (1..N-1).
    @return: a L{Deferred} firing with C{(answers, missing)}: the snapshots
        that came, and the numbers of the workers that did not answer
        (not running, or too slow).
    """
    numbers = sorted(askers)
    asked = [askers[n].ask() for n in numbers]
    if not asked:
        return defer.succeed(([], sorted(configured)))
    together = defer.DeferredList(asked, consumeErrors=True)
    def too_late():
        for waiting in asked:
            if not waiting.called:
                waiting.cancel()

    timer = reactor.callLater(timeout, too_late)

    def done(results):
        if timer.active():
            timer.cancel()
        answers = [value for ok, value in results if ok]
        answered = {n for n, (ok, _) in zip(numbers, results) if ok}
        return answers, sorted(set(configured) - answered)

    return together.addCallback(done)
