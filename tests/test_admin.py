"""
Tests for L{origdst.admin}, the wiring in L{origdst.tap} and the JSON log
format: the endpoints rendered in memory over a proxy carrying traffic, then
the whole service on loopback ports, then twistd itself.
"""

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

from twisted.application.service import Application
from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.python import usage
from twisted.trial import unittest
from twisted.web.client import Agent, readBody

import origdst
from origdst import admin, logs, stats
from origdst.tap import AdminService, Options, makeService

import testbed
from tests.helpers import CHANGE, DEST, GET, OK, ProxyHarness, capture_log, fetch


class EndpointTests(unittest.TestCase):
    """
    Each endpoint over a proxy that carried one request to 10.250.0.3:80.
    """

    def setUp(self):
        capture_log(self)
        self.proxy = ProxyHarness(self)
        self.proxy.reactor.advance(1000)
        self.stats = self.proxy.cluster.stats
        self.stats.started = 1000
        self.admin = admin.Admin(self.proxy.settings, self.proxy.cluster, self.proxy.reactor, config_path="/etc/o.conf")
        self.site = admin.site(self.admin)
        self.proxy.reactor.advance(42)
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        self.upstream = self.proxy.accept_upstream()
        self.upstream.protocol.dataReceived(OK)

    def get(self, url, method=b"GET", headers=None):
        return fetch(self.site, url, method, headers)

    def test_ready(self):
        """
        503 with the state until the proxy is live, 200 LIVE while it is,
        503 DRAINING once it stops.
        """
        for state, code in [(stats.PRE_INITIALIZING, 503), (stats.LIVE, 200), (stats.DRAINING, 503)]:
            self.stats.state = state
            response = self.get("/ready")
            self.assertEqual((response.code, response.text()), (code, state + "\n"))
            self.assertEqual(response.header(b"content-type"), "text/plain; charset=UTF-8")

    def test_stats_text(self):
        """
        C{name: value} lines counting the request sent.
        """
        response = self.get("/stats")
        self.assertEqual(response.code, 200)
        lines = response.text().splitlines()
        for line in [
            "http.origdst.downstream_rq_total: 1",
            "http.origdst.downstream_rq_2xx: 1",
            "http.origdst.downstream_cx_active: 1",
            "cluster.original_dst.upstream_rq_total: 1",
            "cluster.original_dst.upstream_rq_2xx: 1",
            "cluster.original_dst.upstream_cx_total: 1",
            "cluster.original_dst.upstream_cx_active: 1",
            "cluster.original_dst.membership_total: 1",
            "cluster.original_dst.membership_healthy: 1",
            "cluster.original_dst.membership_change: 1",
            "server.uptime: 42",
        ]:
            self.assertIn(line, lines)
        for line in lines:
            if line.startswith(("cluster.original_dst.upstream_rq_time:", "http.origdst.downstream_rq_time:")):
                # A histogram: Envoy's percentiles (see test_histogram).
                self.assertRegex(line, r"^[\w.]+: (P[\d.]+\((nan|[\d.]+),[\d.]+\) ?){10}$")
            else:
                self.assertRegex(line, r"^[\w.\[\]]+: \d+$")

    def test_stats_filter_and_json(self):
        """
        C{filter} selects by regular expression, C{format=json} is Envoy's
        JSON, a bad pattern or format is a 400.
        """
        response = self.get("/stats?filter=upstream_rq_2xx$")
        self.assertEqual(response.text(), "cluster.original_dst.upstream_rq_2xx: 1\n")
        response = self.get("/stats?format=json&filter=^http")
        self.assertEqual(response.header(b"content-type"), "application/json")
        # The last element is Envoy's histograms one, its names filtered too.
        *figures, histograms = response.json()["stats"]
        names = [s["name"] for s in figures]
        names += [q["name"] for q in histograms["histograms"]["computed_quantiles"]]
        self.assertIn("http.origdst.downstream_rq_time", names)
        self.assertTrue(names and all(n.startswith("http.origdst.") for n in names), names)
        used = self.get("/stats?usedonly").text()
        self.assertNotIn(": 0\n", used)
        self.assertIn("cluster.original_dst.upstream_rq_total: 1\n", used)
        self.assertEqual(self.get("/stats?filter=(").code, 400)
        self.assertEqual(self.get("/stats?format=xml").code, 400)

    def test_prometheus(self):
        """
        C{/stats/prometheus} (and C{/stats?format=prometheus}) is the text
        exposition with Envoy's names.
        """
        response = self.get("/stats/prometheus")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header(b"content-type"), "text/plain; version=0.0.4; charset=UTF-8")
        lines = response.text().splitlines()
        self.assertIn('envoy_cluster_upstream_rq_total{envoy_cluster_name="original_dst"} 1', lines)
        self.assertIn(
            'envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="original_dst"} 1',
            lines,
        )
        self.assertEqual(self.get("/stats?format=prometheus").body, response.body)

    def test_clusters_text(self):
        """
        One line per host and figure, as Envoy prints them.
        """
        response = self.get("/clusters")
        lines = response.text().splitlines()
        sent = len(self.upstream.value())
        for line in [
            "original_dst::observability_name::original_dst",
            "original_dst::default_priority::max_connections::1024",
            "original_dst::added_via_api::false",
            "original_dst::10.250.0.3:80::rq_total::1",
            "original_dst::10.250.0.3:80::rq_success::1",
            "original_dst::10.250.0.3:80::rq_error::0",
            "original_dst::10.250.0.3:80::cx_total::1",
            "original_dst::10.250.0.3:80::cx_active::1",
            "original_dst::10.250.0.3:80::rq_active::0",
            "original_dst::10.250.0.3:80::cx_tx_bytes_total::%d" % sent,
            "original_dst::10.250.0.3:80::cx_rx_bytes_total::%d" % len(OK),
            "original_dst::10.250.0.3:80::health_flags::healthy",
            "original_dst::10.250.0.3:80::last_used::1042.000",
        ]:
            self.assertIn(line, lines)
        for line in lines:
            self.assertTrue(line.startswith("original_dst::"), line)

    def test_clusters_ipv6(self):
        """
        IPv6 hosts are named in brackets.
        """
        self.proxy.cluster.host("fd00:250::3", 8080)
        self.assertIn("original_dst::[fd00:250::3]:8080::rq_total::0", self.get("/clusters").text())

    def test_clusters_json(self):
        """
        Envoy's C{cluster_statuses}, with origdst's C{key} and C{last_used}.
        """
        data = self.get("/clusters?format=json").json()
        [cluster] = data["cluster_statuses"]
        self.assertEqual(cluster["name"], "original_dst")
        [host] = cluster["host_statuses"]
        self.assertEqual(host["address"], {"socket_address": {"address": "10.250.0.3", "port_value": 80}})
        self.assertEqual((host["key"], host["last_used"]), ("10.250.0.3:80", 1042))
        figures = {s["name"]: s["value"] for s in host["stats"]}
        self.assertEqual((figures["rq_total"], figures["cx_active"]), (1, 1))
        self.assertEqual(self.get("/clusters?format=yaml").code, 400)

    def test_logging(self):
        """
        GET lists the level; changing it takes a POST (with the header a
        shell sends; a GET with a level is 405); a bad level is a 400.
        """
        self.addCleanup(logs.set_level, logs.level())
        self.assertEqual(self.get("/logging").text(), "active loggers:\n  origdst: debug\n")
        response = self.get("/logging?level=info")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.header(b"allow"), "POST")
        self.assertEqual(logs.level(), "debug")
        response = self.get("/logging?level=warn", b"POST", CHANGE)
        self.assertEqual((response.code, response.text()), (200, "active loggers:\n  origdst: warn\n"))
        self.assertEqual(logs.level(), "warn")
        self.assertEqual(self.get("/logging?level=loud", b"POST", CHANGE).code, 400)
        self.assertEqual(logs.level(), "warn")

    def test_reset_counters(self):
        """
        POST only; zeroes the counters of the process and of the hosts.
        """
        self.assertEqual(self.get("/reset_counters").code, 405)
        self.assertEqual(self.stats.downstream_rq_total, 1)
        self.assertEqual(self.get("/reset_counters", b"POST", CHANGE).code, 200)
        self.assertEqual((self.stats.downstream_rq_total, self.stats.upstream_rq_xx[2]), (0, 0))
        self.assertIn("original_dst::10.250.0.3:80::rq_total::0", self.get("/clusters").text())
        self.assertIn("http.origdst.downstream_cx_active: 1", self.get("/stats").text())

    def test_server_info(self):
        """
        Version, state, uptime and the options in effect.
        """
        self.stats.state = stats.LIVE
        info = self.get("/server_info").json()
        self.assertEqual(info["version"], origdst.__version__)
        self.assertEqual((info["state"], info["uptime_current_epoch"]), ("LIVE", "42s"))
        options = info["command_line_options"]
        self.assertEqual((options["port"], options["cleanup-interval"]), ("tcp:4999", 5.0))
        self.assertEqual((options["admin"], options["config"]), ("tcp:9901:interface=127.0.0.1", "/etc/o.conf"))

    def test_config_dump(self):
        """
        The effective settings, by option name.
        """
        dump = self.get("/config_dump").json()
        self.assertEqual(dump["settings"], json.loads(json.dumps(self.admin.settings_by_option())))
        self.assertEqual(dump["settings"]["max-connections"], 1024)

    def test_page(self):
        """
        C{/} is a self-contained HTML page: no external scripts, styles or
        fonts, and a content security policy that allows none.
        """
        response = self.get("/")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header(b"content-type"), "text/html; charset=UTF-8")
        self.assertIn("default-src 'none'", response.header(b"content-security-policy"))
        page = response.text()
        self.assertIn("<script>", page)
        self.assertNotRegex(page, r"(src|href)=\"(https?:)?//")
        self.assertNotIn("innerHTML", page)
        self.assertIn("/clusters?format=json", page)

    def test_not_found_and_help(self):
        """
        An unknown path is a 404 listing the endpoints, as C{/help} does.
        """
        response = self.get("/nothing")
        self.assertEqual(response.code, 404)
        help = self.get("/help").text()
        self.assertTrue(response.text().endswith(help))
        for path in ["/", "/ready", "/stats", "/stats/prometheus", "/clusters", "/logging", "/reset_counters"]:
            self.assertIn("\n  %s: " % path, help)
        self.assertEqual(self.get("/stats/nothing").code, 404)

    def test_methods(self):
        """
        Only GET, HEAD and POST.
        """
        response = self.get("/stats", b"PUT")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.header(b"cache-control"), "no-cache, max-age=0")

    def test_listener_stats(self):
        """
        Once listening, the listener's connections count under its address.
        """
        self.admin.listening = lambda: IPv4Address("TCP", "0.0.0.0", 4999)
        self.assertIn("listener.0.0.0.0_4999.downstream_cx_total: 1\n", self.get("/stats").text())


class OptionTests(unittest.TestCase):
    def parse(self, *argv):
        options = Options()
        options.parseOptions(list(argv))
        return options.settings

    def test_admin(self):
        """
        The admin endpoint is on loopback by default; a bare port stays on
        loopback; none disables it; a bad description is a usage error.
        """
        self.assertEqual(self.parse().admin, "tcp:9901:interface=127.0.0.1")
        self.assertEqual(self.parse("--admin", "9902").admin, "tcp:9902:interface=127.0.0.1")
        self.assertEqual(
            self.parse("--admin", "tcp6:9902", "--admin-allow-remote").admin, "tcp6:9902"
        )
        self.assertEqual(self.parse("--admin", "None").admin, "none")
        e = self.assertRaises(usage.UsageError, self.parse, "--admin", "nosuch:9")
        self.assertIn("--admin", str(e))

    def test_log_format(self):
        """
        text or json.
        """
        self.assertEqual(self.parse().log_format, "text")
        self.assertEqual(self.parse("--log-format", "JSON").log_format, "json")
        e = self.assertRaises(usage.UsageError, self.parse, "--log-format", "xml")
        self.assertIn("--log-format", str(e))


class ServiceTests(unittest.TestCase):
    """
    The service as twistd builds it, on loopback ports with the real reactor.
    """

    def make(self, *argv):
        options = Options()
        options.parseOptions(["--port", "tcp:0:interface=127.0.0.1"] + list(argv))
        service = makeService(options)
        application = Application("origdst")
        service.setServiceParent(application)
        return service, application

    def test_ready_and_stats_over_http(self):
        """
        The admin endpoint answers on its own port: 200 LIVE once the proxy
        listens, the listener's stats under its address, and DRAINING once
        the proxy stops.
        """
        service, _ = self.make("--admin", "tcp:0:interface=127.0.0.1")
        self.assertEqual(service.stats.state, stats.PRE_INITIALIZING)
        service.privilegedStartService()
        service.startService()
        stopped = []
        self.addCleanup(lambda: stopped or service.stopService())
        [admin_service] = [s for s in service if isinstance(s, AdminService)]
        admin_port = admin_service.port.getHost().port
        proxy_port = service.services[-1].port.getHost().port
        agent = Agent(global_reactor)

        def get(path):
            d = agent.request(b"GET", b"http://127.0.0.1:%d%s" % (admin_port, path))
            return d.addCallback(lambda r: readBody(r).addCallback(lambda body: (r.code, body)))

        d = get(b"/ready")
        d.addCallback(self.assertEqual, (200, b"LIVE\n"))
        d.addCallback(lambda _: get(b"/stats?filter=^listener"))

        def listener(result):
            code, body = result
            self.assertIn(b"listener.127.0.0.1_%d.downstream_cx_total: 0\n" % proxy_port, body)
            stopped.append(True)
            stopping = service.stopService()
            self.assertEqual(service.stats.state, stats.DRAINING)
            return stopping

        return d.addCallback(listener)

    def test_unix_socket(self):
        """
        C{--admin unix:PATH}: the socket is made mode 660, answers a request
        for localhost (what C{curl --unix-socket} sends), refuses another
        Host, and is removed once the service stops.
        """
        directory = tempfile.mkdtemp(prefix="od-admin-")
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "admin.sock")
        service, _ = self.make("--admin", "unix:" + path)
        service.privilegedStartService()
        service.startService()
        stopped = []
        self.addCleanup(lambda: stopped or service.stopService())
        mode = os.stat(path).st_mode
        self.assertTrue(stat.S_ISSOCK(mode))
        self.assertEqual(stat.S_IMODE(mode), 0o660)

        class Socket:
            def endpointForURI(self, uri):
                return UNIXClientEndpoint(global_reactor, path)

        agent = Agent.usingEndpointFactory(global_reactor, Socket())

        def get(url):
            d = agent.request(b"GET", url)
            return d.addCallback(lambda r: readBody(r).addCallback(lambda body: (r.code, body)))

        d = get(b"http://localhost/ready")
        d.addCallback(self.assertEqual, (200, b"LIVE\n"))
        d.addCallback(lambda _: get(b"http://evil.example/config_dump"))
        d.addCallback(lambda result: self.assertEqual(result[0], 421))

        def stop(_):
            stopped.append(True)
            return service.stopService()

        d.addCallback(stop)
        d.addCallback(lambda _: self.assertFalse(os.path.exists(path)))
        return d

    def test_admin_none(self):
        """
        C{--admin none}: no admin port at all.
        """
        service, _ = self.make("--admin", "none")
        self.assertEqual([s for s in service if isinstance(s, AdminService)], [])

    def test_json_observer_given_to_twistd(self):
        """
        With C{--log-format json} the application carries the JSON observer
        twistd logs with; with text it carries none, and twistd keeps its own.
        """
        _, application = self.make("--admin", "none", "--log-format", "json")
        self.assertIsNotNone(application.getComponent(ILogObserver, None))
        _, application = self.make("--admin", "none")
        self.assertIsNone(application.getComponent(ILogObserver, None))


class JSONLogTests(unittest.TestCase):
    def test_format(self):
        """
        One line of JSON: time, level, namespace, message and the event's
        fields.
        """
        events = []
        Logger(namespace="origdst.http", observer=events.append).info(
            "{tag} upstream {key}: {reason}.", tag="[C4][S9]", key="10.250.0.3:80", reason="overflow"
        )
        events[0]["log_time"] = 0
        line = logs.format_json(events[0])
        self.assertTrue(line.endswith("\n"))
        self.assertEqual(line.count("\n"), 1)
        record = json.loads(line)
        self.assertEqual(
            record,
            {
                "time": "1970-01-01T00:00:00.000Z",
                "level": "info",
                "namespace": "origdst.http",
                "message": "[C4][S9] upstream 10.250.0.3:80: overflow.",
                "tag": "[C4][S9]",
                "key": "10.250.0.3:80",
                "reason": "overflow",
            },
        )

    def test_failure(self):
        """
        An event with a failure carries its traceback.
        """
        events = []
        log = Logger(namespace="origdst.x", observer=events.append)
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("it broke")
        record = json.loads(logs.format_json(events[0]))
        self.assertEqual((record["level"], record["message"]), ("critical", "it broke"))
        self.assertIn("ZeroDivisionError", record["traceback"])

    def test_log_file_choice(self):
        """
        The JSON log goes where twistd's own would.
        """
        self.assertIs(logs.twistd_log_file(None), sys.stdout)
        self.assertIs(logs.twistd_log_file({"nodaemon": True, "logfile": None}), sys.stdout)
        self.assertIs(logs.twistd_log_file({"nodaemon": True, "logfile": "-"}), sys.stdout)
        self.assertIsNone(logs.twistd_log_file({"nodaemon": False, "logfile": "-"}))
        self.assertIsNone(logs.twistd_log_file({"syslog": True}))
        path = self.mktemp()
        out = logs.twistd_log_file({"nodaemon": True, "logfile": path})
        self.addCleanup(out.close)
        self.assertEqual(os.path.abspath(out.path), os.path.abspath(path))


class TwistdLogTests(unittest.TestCase):
    """
    twistd itself, as a subprocess on loopback ports: C{--logfile} works with
    both formats.
    """

    def run_twistd(self, *args):
        path = os.path.abspath(self.mktemp())
        env = dict(os.environ)
        env["PYTHONPATH"] = testbed.REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        argv = [sys.executable, "-c", testbed.TWISTD, "-n", "--pidfile=", "--logfile", path, "origdst",
                "--port", "tcp:0:interface=127.0.0.1", "--admin", "tcp:0:interface=127.0.0.1"] + list(args)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)

        def stop():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()

        self.addCleanup(stop)
        deadline = time.monotonic() + 20
        text = ""
        while time.monotonic() < deadline and proc.poll() is None:
            if os.path.exists(path):
                with open(path) as f:
                    text = f.read()
                if "origdst listening on" in text:
                    break
            time.sleep(0.1)
        else:
            self.fail("twistd did not start: %r\n%s" % (text, proc.communicate()[0]))
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        with open(path) as f:
            return f.read()

    def test_json(self):
        """
        Every line of the log file is a JSON object, twistd's own included.
        """
        text = self.run_twistd("--log-format", "json")
        records = [json.loads(line) for line in text.splitlines()]
        messages = [r["message"] for r in records]
        self.assertTrue(any(m.startswith("origdst admin listening on tcp:0") for m in messages), messages)
        self.assertTrue(any(m.startswith("origdst listening on tcp:0") for m in messages), messages)
        self.assertTrue(any("Server Shut Down" in m for m in messages), messages)
        self.assertTrue(all(re.match(r"^\d{4}-\d\d-\d\dT", r["time"]) for r in records))

    def test_text(self):
        """
        The text format is twistd's own, in the file given.
        """
        text = self.run_twistd()
        self.assertIn("origdst listening on tcp:0", text)
        self.assertRaises(ValueError, json.loads, text.splitlines()[0])


class LevelTests(unittest.TestCase):
    def test_level_names(self):
        """
        The levels /logging accepts are the ones --log-level does.
        """
        self.assertEqual(set(logs.LEVELS), {"debug", "info", "warn", "error"})
        self.assertEqual(logs.LEVELS["warn"], LogLevel.warn)


class HostFiguresTests(unittest.TestCase):
    def test_hosts_sorted(self):
        """
        Hosts are listed in address order.
        """
        proxy = ProxyHarness(self)
        for port in (81, 80):
            proxy.cluster.host(DEST[0], port)
        state = admin.Admin(proxy.settings, proxy.cluster, proxy.reactor)
        self.assertEqual([h.key for h, _, _ in state.hosts()], ["10.250.0.3:80", "10.250.0.3:81"])
