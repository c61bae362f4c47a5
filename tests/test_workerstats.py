"""
Tests for L{origdst.workerstats} and the parts of L{origdst.workers} that
gather, restart and count: workers that report as one, on a L{task.Clock}.
"""

import json

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport, StringTransportWithDisconnection
from twisted.python.failure import Failure
from twisted.internet.error import ProcessTerminated
from twisted.trial import unittest

from origdst import admin, logs, workers, workerstats
from origdst.stats import Stats

from tests.helpers import DEST, GET, OK, ProxyHarness, capture_log, fetch


def busy_proxy(test, requests=1, port=80):
    """
    @return: a L{ProxyHarness} that carried C{requests} GETs to C{DEST[0]}:port.
    """
    proxy = ProxyHarness(test)
    for n in range(requests):
        channel, client = proxy.client(peer=("10.250.0.2", 40000 + n), destination=(DEST[0], port))
        channel.dataReceived(GET)
    proxy.reactor.advance(0.002)
    connected = []
    for n, (host, p, factory, timeout, bind) in enumerate(proxy.new_attempts()):
        protocol = factory.buildProtocol(None)
        transport = StringTransportWithDisconnection(
            hostAddress=IPv4Address("TCP", "10.250.0.2", 50000 + n), peerAddress=IPv4Address("TCP", host, p)
        )
        transport.protocol = protocol
        protocol.makeConnection(transport)
        connected.append(protocol)
    # Answered once all are connected, so no pending request takes a
    # connection released before the next one is accepted.
    for protocol in connected:
        protocol.dataReceived(OK)
    return proxy


class Wire:
    """
    A worker's L{workerstats.Reporter} and its parent's L{workerstats.Asker},
    joined in memory; C{deliver} carries what the worker wrote.
    """

    def __init__(self, proxy, number):
        self.reporter = workerstats.Reporter(proxy.cluster.stats, proxy.cluster, number)
        self.out = StringTransport()
        self.reporter.makeConnection(self.out)
        self.asker = workerstats.Asker(self.reporter.dataReceived)

    def deliver(self):
        data, self.out.io = self.out.value(), type(self.out.io)()
        self.asker.received(data)


class MergeTests(unittest.TestCase):
    def setUp(self):
        capture_log(self)

    def test_sum(self):
        """
        Counters, gauges and histograms of two processes add up; hosts are
        merged by address, their counters summed.
        """
        main, other = busy_proxy(self, 2), busy_proxy(self, 3)
        busy_proxy_81 = busy_proxy(self, 1, port=81)
        snapshots = [json.loads(json.dumps(workerstats.snapshot(p.cluster.stats, p.cluster))) for p in (other, busy_proxy_81)]
        figures = workerstats.merge(main.cluster.stats, main.cluster, snapshots)
        total = figures.stats
        self.assertEqual(total.downstream_rq_total, 6)
        self.assertEqual(total.upstream_rq_xx[2], 6)
        self.assertEqual(total.downstream_cx_active, 6)
        self.assertEqual(total.upstream_rq_time.count, 6)
        self.assertEqual(total.downstream_rq_time.count, 6)
        self.assertEqual(total.workers, 3)
        self.assertEqual(figures.gauges["membership_total"], 3)
        self.assertEqual(figures.gauges["upstream_cx_active"], 6)
        keys = [host.key for host, _, _ in figures.hosts]
        self.assertEqual(keys, ["10.250.0.3:80", "10.250.0.3:81"])
        counters = dict(figures.hosts[0][1])
        self.assertEqual((counters["rq_total"], counters["rq_success"], counters["cx_total"]), (5, 5, 5))
        self.assertEqual(dict(figures.hosts[0][2])["cx_active"], 5)
        # The process's own figures are left as they were.
        self.assertEqual(main.cluster.stats.downstream_rq_total, 2)
        self.assertEqual(main.cluster.stats.upstream_rq_time.count, 2)

    def test_tls_names_apart(self):
        """
        An originated TLS host is merged with the same address and name of
        another worker only, not with the plain host on that address.
        """
        main, other = busy_proxy(self, 2), busy_proxy(self, 3)
        snapshot = json.loads(json.dumps(workerstats.snapshot(other.cluster.stats, other.cluster)))
        named = json.loads(json.dumps(snapshot))
        for host in named["hosts"]:
            host["tls_name"] = "a.example"
        figures = workerstats.merge(main.cluster.stats, main.cluster, [snapshot, named, named])
        apart = [(host.key, host.tls_name, dict(counters)["rq_total"]) for host, counters, _ in figures.hosts]
        self.assertEqual(apart, [("10.250.0.3:80", None, 5), ("10.250.0.3:80", "a.example", 6)])

    def test_state_kept(self):
        """
        The sum keeps the main process's state and start, and names the
        workers missing.
        """
        stats = Stats(started=7)
        stats.state = "LIVE"
        proxy = ProxyHarness(self)
        figures = workerstats.merge(stats, proxy.cluster, [], missing=[2, 1])
        self.assertEqual((figures.stats.state, figures.stats.started), ("LIVE", 7))
        self.assertEqual(figures.missing, (1, 2))
        self.assertEqual(figures.stats.workers_missing, (1, 2))


class AskTests(unittest.TestCase):
    def setUp(self):
        capture_log(self)
        self.clock = task.Clock()

    def test_answer(self):
        """
        A worker answers a stats request with its snapshot, matched by id.
        """
        proxy = busy_proxy(self, 2)
        wire = Wire(proxy, 1)
        got = wire.asker.ask()
        self.assertNoResult(got)
        wire.deliver()
        figures = self.successResultOf(got)
        self.assertEqual(figures["stats"]["downstream_rq_total"], 2)
        self.assertEqual(figures["hosts"][0]["key"], "10.250.0.3:80")
        self.assertEqual(wire.asker.pending, {})

    def test_gather_and_timeout(self):
        """
        gather waits for every worker at most the timeout; one that did not
        answer, or is not running, is named as missing.
        """
        fast, slow = Wire(busy_proxy(self, 1), 1), Wire(busy_proxy(self, 1), 2)
        result = workerstats.gather(self.clock, {1: fast.asker, 2: slow.asker}, [1, 2, 3], timeout=1.0)
        fast.deliver()
        self.assertNoResult(result)
        self.clock.advance(1.0)
        answers, missing = self.successResultOf(result)
        self.assertEqual(len(answers), 1)
        self.assertEqual(missing, [2, 3])
        # A late answer is dropped quietly.
        slow.deliver()
        self.assertEqual(slow.asker.pending, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_gather_all_answer(self):
        """
        When all answer, nothing waits for the timeout.
        """
        one = Wire(busy_proxy(self, 1), 1)
        result = workerstats.gather(self.clock, {1: one.asker}, [1])
        one.deliver()
        answers, missing = self.successResultOf(result)
        self.assertEqual((len(answers), missing), (1, []))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_worker_lost(self):
        """
        A worker that ends with a request pending counts as missing at once.
        """
        asker = workerstats.Asker(lambda data: None)
        result = workerstats.gather(self.clock, {1: asker}, [1])
        asker.lost()
        self.assertEqual(self.successResultOf(result), ([], [1]))

    def test_bad_answer(self):
        """
        A line that is not JSON is logged and skipped; answers split over
        reads are put together.
        """
        asker = workerstats.Asker(lambda data: None)
        got = asker.ask()
        asker.received(b"garbage\n{\"id\": \"1\", ")
        asker.received(b"\"figures\": {\"x\": 1}}\n")
        self.assertEqual(self.successResultOf(got), {"x": 1})


class FakeProcess:
    def __init__(self, pid):
        self.pid = pid
        self.written = []
        self.signals = []

    def writeToChild(self, fd, data):
        self.written.append((fd, data))

    def signalProcess(self, name):
        self.signals.append(name)


class ProcessClock(task.Clock):
    """
    A clock that also "spawns" processes, recording them.
    """

    def __init__(self):
        task.Clock.__init__(self)
        self.spawned = []

    def spawnProcess(self, protocol, executable, args, env=None, childFDs=None):
        process = FakeProcess(1000 + len(self.spawned))
        protocol.makeConnection(process)
        self.spawned.append((protocol, env, childFDs))
        return process


class PoolTests(unittest.TestCase):
    def setUp(self):
        self.log = capture_log(self)
        self.clock = ProcessClock()
        self.stats = Stats()
        self.pool = workers.WorkerPool(self.clock, 3, ["python"], self.stats)
        self.pool.startService()

    def kill(self, number):
        protocol = self.pool.protocols[number]
        protocol.processEnded(Failure(ProcessTerminated(signal=9)))

    def test_pipes(self):
        """
        Each worker gets its number, the answer descriptor in its
        environment, and a pipe to read on it.
        """
        self.assertEqual(len(self.clock.spawned), 2)
        protocol, env, fds = self.clock.spawned[0]
        self.assertEqual(env[workers.WORKER], "1")
        self.assertEqual(env[workers.STATS_FD], "3")
        self.assertEqual(fds, {0: "w", 1: 1, 2: 2, 3: "r"})

    def test_restart_counted_with_back_off(self):
        """
        A worker that dies is restarted after a delay that doubles while it
        keeps dying young, and each restart is counted and logged; one that
        ran long enough is restarted after the first delay again.
        """
        delays = []
        for _ in range(4):
            self.kill(1)
            (call,) = self.clock.getDelayedCalls()
            delays.append(call.getTime() - self.clock.seconds())
            self.clock.advance(delays[-1])
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0])
        self.assertEqual(self.stats.worker_restarts, 4)
        self.assertEqual(len(self.clock.spawned), 6)
        self.clock.advance(workers.WorkerPool.STABLE)
        self.kill(1)
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime() - self.clock.seconds(), 1.0)
        self.assertEqual(self.stats.worker_restarts, 5)
        messages = [e for e in self.log if "restarting it in" in e]
        self.assertEqual(len(messages), 5)
        self.assertIn("Worker 1 ended", messages[0])
        self.assertIn("(worker restarts: 5)", messages[-1])

    def test_no_restart_while_stopping(self):
        """
        Workers that end because the proxy stops are not restarted or counted.
        """
        self.pool.stopService()
        self.kill(1)
        self.kill(2)
        self.assertEqual(self.stats.worker_restarts, 0)
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.func == self.pool.spawn], [])
        self.assertEqual(len(self.clock.spawned), 2)

    def test_gather(self):
        """
        The pool asks each running worker over its stdin; a dead one is
        missing.
        """
        self.kill(2)
        result = self.pool.gather(timeout=0.5)
        process = self.pool.processes[1]
        self.assertEqual(process.written, [(0, b"stats 1\n")])
        self.pool.protocols[1].childDataReceived(3, b'{"id": "1", "figures": {"n": 1}}\n')
        self.assertEqual(self.successResultOf(result), ([{"n": 1}], [2]))


class TagTests(unittest.TestCase):
    def test_tagged(self):
        """
        Each event says which worker logged it, in the system of the text
        line and as a JSON field, without changing the original event.
        """
        seen = []
        observe = logs.tagged(seen.append, 2)
        event = {"log_format": "x", "log_system": "-"}
        observe(event)
        observe({"log_format": "y", "log_system": "HTTPChannel,1,127.0.0.1"})
        observe({"log_format": "z"})
        self.assertEqual(
            [e["log_system"] for e in seen], ["worker 2", "worker 2,HTTPChannel,1,127.0.0.1", "worker 2"]
        )
        self.assertEqual({e["worker"] for e in seen}, {2})
        self.assertEqual(event, {"log_format": "x", "log_system": "-"})
        self.assertIn('"worker": 2', logs.format_json(dict(seen[0], log_time=0)))


class Later:
    """
    A stand-in pool whose gather answers when told to.
    """

    def __init__(self):
        self.calls = []

    def gather(self):
        waiting = defer.Deferred()
        self.calls.append(waiting)
        return waiting


class AdminSumTests(unittest.TestCase):
    """
    The admin of the main process shows the sum, once the workers answered.
    """

    def setUp(self):
        capture_log(self)
        self.main = busy_proxy(self, 1)
        self.other = busy_proxy(self, 2)
        self.pool = Later()
        state = admin.Admin(self.main.settings, self.main.cluster, self.main.reactor, workers=self.pool)
        self.site = admin.site(state)

    def answer(self, missing=()):
        snapshot = json.loads(json.dumps(workerstats.snapshot(self.other.cluster.stats, self.other.cluster)))
        self.pool.calls.pop().callback(([snapshot], list(missing)))

    def test_stats_later(self):
        """
        /stats waits for the workers and then shows the sum.
        """
        request, body = self.render("/stats")
        self.assertEqual(body, 1)  # NOT_DONE_YET
        self.answer()
        text = b"".join(request.written).decode()
        self.assertIn("http.origdst.downstream_rq_total: 3\n", text)
        self.assertIn("server.workers: 2\n", text)
        self.assertIn("server.workers_missing: 0\n", text)
        self.assertIn("server.worker_restarts: 0\n", text)
        self.assertEqual(request.finished, 1)

    def render(self, url):
        from tests.helpers import DummyRequest, parse_qs

        path, _, query = url.partition("?")
        request = DummyRequest(path.encode("ascii").split(b"/")[1:])
        request.uri = url.encode("ascii")
        request.args = parse_qs(query.encode("ascii"), keep_blank_values=True)
        return request, self.site.getResourceFor(request).render(request)

    def test_prometheus_and_missing(self):
        """
        /stats/prometheus shows the sum, histograms merged, and names a
        worker that did not answer.
        """
        request, _ = self.render("/stats/prometheus")
        self.answer(missing=[2])
        text = b"".join(request.written).decode()
        lines = text.splitlines()
        self.assertIn('envoy_cluster_upstream_rq_total{envoy_cluster_name="original_dst"} 3', lines)
        self.assertIn('envoy_cluster_upstream_rq_time_count{envoy_cluster_name="original_dst"} 3', lines)
        self.assertIn("# origdst: the sum leaves out worker 2, which did not answer in time", lines)
        self.assertIn("envoy_server_workers 3", lines)
        self.assertIn("envoy_server_workers_missing 1", lines)

    def test_clusters(self):
        """
        /clusters (text and JSON, which the page reads) merges hosts.
        """
        request, _ = self.render("/clusters")
        self.answer(missing=[2])
        lines = b"".join(request.written).decode().splitlines()
        self.assertIn("original_dst::10.250.0.3:80::rq_total::3", lines)
        self.assertIn("original_dst::workers_missing::2", lines)
        request, _ = self.render("/clusters?format=json")
        self.answer()
        data = json.loads(b"".join(request.written))
        [host] = data["cluster_statuses"][0]["host_statuses"]
        self.assertIn({"name": "rq_total", "value": 3}, host["stats"])
        self.assertNotIn("workers_missing", data)

    def test_errors_answer_at_once(self):
        """
        A bad filter or format is refused without asking the workers.
        """
        response = fetch(self.site, "/stats?filter=(")
        self.assertEqual(response.code, 400)
        self.assertEqual(fetch(self.site, "/clusters?format=xml").code, 400)
        self.assertEqual(self.pool.calls, [])

    def test_failure(self):
        """
        A gathering that fails is a 500 and a log line, not a hung request.
        """
        request, _ = self.render("/stats")
        self.pool.calls.pop().errback(RuntimeError("boom"))
        self.assertEqual(request.responseCode, 500)
        self.assertEqual(request.finished, 1)
        self.flushLoggedErrors(RuntimeError)
