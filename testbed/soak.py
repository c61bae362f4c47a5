"""
The soak: mixed traffic with faults through the proxy for a set time, watching for leaks.

C{python -m testbed.soak [--seconds 600]} (root; C{make soak}, C{SOAK_SECONDS=}) builds the
accounting set-up of L{testbed.accounting} in throwaway namespaces and runs its load in rounds of
about C{--interval} seconds (the same mix, faults and books as C{tests/test_accounting.py}, 50
keep-alive connections per round, new ones each round).  After every round it prints the
requests so far, the answers that were not C{ok} by kind, the backend's faults, and the
proxy's RSS and open fds.  It fails (exit status 1, with the reasons on the last lines) when:

  - any round's books do not balance (L{testbed.accounting.Books.problems});
  - the fds do not come back: once the load has stopped and the pooled upstream connections
    have timed out, the proxy must hold no more than it held before the first round, plus
    L{FD_MARGIN} (an admin connection being closed);
  - the RSS grows without bound: after the warm-up (the first third of the run, at least two
    rounds), the least-squares slope of the RSS over the second half of the run exceeds
    L{SLOPE_LIMIT} MiB a minute I{and} the last RSS exceeds the warm-up's peak by more than
    L{RSS_MARGIN} MiB plus L{RSS_MARGIN_RATIO} of that peak.  Both must hold: a slope alone is
    noise over a short run (a garbage collection, a pool that filled), a margin alone is
    warm-up that came late; a leak shows as both.
"""

import argparse
import collections
import os
import platform
import sys
import time

from testbed import accounting
from testbed.process import TopologyError, unavailable_reason, wait_for
from testbed.topology import Topology

FD_MARGIN = 2
SLOPE_LIMIT = 2.0
RSS_MARGIN = 16.0
RSS_MARGIN_RATIO = 0.10
#: origdst's default --upstream-idle-timeout, and some slack: after it the pool is empty.
IDLE_CLOSE = 4 + 6


def slope(points):
    """
    @param points: C{(x, y)} pairs.
    @return: the least-squares slope of C{y} over C{x}, or 0.0 for fewer than two points.
    """
    if len(points) < 2:
        return 0.0
    n = float(len(points))
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if not sxx:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def rss_verdict(samples, seconds):
    """
    Judge the RSS samples of a run of C{seconds}.

    @param samples: C{(seconds since start, RSS in MiB)} after each round.
    @return: C{(reason or None, description)}.
    """
    warm_end = max(seconds / 3.0, samples[1][0] if len(samples) > 1 else 0)
    warm = [rss for t, rss in samples if t <= warm_end] or [samples[0][1]]
    peak = max(warm)
    second_half = [(t / 60.0, rss) for t, rss in samples if t >= seconds / 2.0]
    per_minute = slope(second_half)
    last = samples[-1][1]
    allowed = peak + RSS_MARGIN + RSS_MARGIN_RATIO * peak
    text = ("RSS warm-up peak %.1f MiB, last %.1f MiB (allowed %.1f), slope over the second "
            "half %+.2f MiB/min (limit %.1f)" % (peak, last, allowed, per_minute, SLOPE_LIMIT))
    if per_minute > SLOPE_LIMIT and last > allowed:
        return "the RSS grows without bound: " + text, text
    return None, text


def parse(argv):
    parser = argparse.ArgumentParser(prog="python -m testbed.soak",
                                     description=__doc__.splitlines()[1])
    parser.add_argument("--seconds", type=float,
                        default=float(os.environ.get("SOAK_SECONDS") or 600),
                        help="how long the load runs (default 600, or $SOAK_SECONDS)")
    parser.add_argument("--interval", type=float, default=5.0,
                        help="seconds per round, between reports (default 5)")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--fault-fraction", type=float, default=0.3,
                        help="share of the backend's connections that fail (default 0.3)")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


def run(options, out=sys.stdout):
    """
    Build, soak, judge, tear down.

    @return: the list of reasons the soak failed (empty: it passed).
    """
    def say(text):
        out.write(text + "\n")
        out.flush()

    topology = Topology(tag="sk")
    topology.start()
    try:
        ledger = accounting.build(topology, options.fault_fraction, options.seed)
        load = accounting.Accounting(topology, ledger, seed=options.seed)
        pid = accounting.proxy_pid(topology)
        rss0, fds0 = accounting.resources(pid)
        say("soak: %s (%s), proxy pid %d, %.0f s in rounds of ~%.0f s, %d connections, "
            "faults on %.0f %% of backend connections; at start RSS %.1f MiB, %d fds" % (
                platform.python_implementation(), topology.python, pid, options.seconds,
                options.interval, options.connections, options.fault_fraction * 100,
                rss0 / 1024.0, fds0))
        failures = []
        samples = []
        answers = collections.Counter()
        faults = collections.Counter()
        total = 0
        count = 1000
        began = time.monotonic()
        while time.monotonic() - began < options.seconds:
            books = load.round(count, options.connections, seconds=max(30, options.interval * 6))
            total += len(books.outcomes)
            answers.update(books.kinds())
            faults.update(books.faults())
            rss, fds = accounting.resources(pid)
            now = time.monotonic() - began
            samples.append((now, rss / 1024.0))
            errors = dict(sorted((k, v) for k, v in answers.items() if k != "ok"))
            say("[%5.0f s] requests %d (+%d, %.0f/s), not ok %s, backend faults %s, "
                "RSS %.1f MiB, fds %d" % (
                    now, total, len(books.outcomes), len(books.outcomes) / max(books.elapsed, 0.01),
                    errors, dict(sorted(faults.items())), rss / 1024.0, fds))
            if books.problems:
                say("  round %d: %s" % (load.rounds, books.summary()))
                failures.append("round %d: %d accounting problems, the first: %s" % (
                    load.rounds, len(books.problems), books.problems[0]))
                for problem in books.problems[:10]:
                    say("  accounting: " + problem)
            rate = len(books.outcomes) / max(books.elapsed, 0.01)
            count = max(200, min(50000, int(rate * options.interval)))
        say("soak: load done after %.0f s, %d requests; waiting for the pool to empty" % (
            time.monotonic() - began, total))
        try:
            wait_for(lambda: not load.stats()[accounting.CLUSTER + "upstream_cx_active"],
                     IDLE_CLOSE, interval=0.5, what="the upstream connections to close")
        except TopologyError as e:
            failures.append(str(e))
        time.sleep(0.5)
        rss, fds = accounting.resources(pid)
        say("soak: at rest RSS %.1f MiB, %d fds (at start %d)" % (rss / 1024.0, fds, fds0))
        if fds > fds0 + FD_MARGIN:
            failures.append("the proxy holds %d fds at rest, %d at start: %d leaked" % (
                fds, fds0, fds - fds0))
        reason, text = rss_verdict(samples, options.seconds)
        say("soak: " + text)
        if reason:
            failures.append(reason)
        if not topology.proxy.running():
            failures.append("the proxy exited: %s" % (topology.proxy_log()[-2000:],))
        return failures
    finally:
        topology.stop()


def main(argv=None):
    options = parse(sys.argv[1:] if argv is None else argv)
    reason = unavailable_reason()
    if reason:
        sys.stderr.write("soak: cannot run: %s\n" % (reason,))
        return 2
    failures = run(options)
    if failures:
        for failure in failures:
            sys.stdout.write("soak FAILED: %s\n" % (failure,))
        return 1
    sys.stdout.write("soak passed\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
