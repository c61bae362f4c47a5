"""
End-to-end tests of the admin endpoint, in network namespaces of their own (tag C{a}).

The proxy runs as in L{tests.test_e2e} (iptables REDIRECT in namespace C, the backend in S),
with its admin endpoint on 127.0.0.1 inside C.  The tests send known traffic as the
unprivileged client and check that C{/stats}, C{/stats/prometheus} and C{/clusters} count
exactly that, then load the live page in a real headless Chromium, running inside C, and
watch a new destination appear on it.
"""

import json
import os
import shutil
import sys

from twisted.trial import unittest

import testbed
from tests import browser
from testbed.figures import stat_values

PROXY_PORT = 15002
ADMIN_PORT = 19901
BACKEND_PORT = 80
#: A second backend, a destination that only the page test uses.
PAGE_PORT = 8080
#: Nothing listens there in S: a refused destination.
CLOSED_PORT = 81

PROXY_ARGS = [
    "--port", "tcp6:%d" % PROXY_PORT,
    "--admin", "tcp:%d:interface=127.0.0.1" % ADMIN_PORT,
    # No host may be swept away while a test counts it.
    "--cleanup-interval", "120",
    "--upstream-idle-timeout", "30",
]

ADMIN = "http://127.0.0.1:%d" % ADMIN_PORT
#: The header that lets a shell's POST change something (origdst.adminguard).
CHANGE = {"X-Origdst-Admin": "1"}
#: A foreign site; Chromium is told it resolves to 127.0.0.1, as after DNS rebinding.
EVIL = "evil.example"

#: Runs in namespace C: one admin request, printed as JSON.
FETCH = """
import json, sys, urllib.error, urllib.request
request = urllib.request.Request(sys.argv[1], method=sys.argv[2], headers=json.loads(sys.argv[3]))
try:
    response = urllib.request.urlopen(request, timeout=10)
except urllib.error.HTTPError as e:
    response = e
print(json.dumps({"status": response.status, "body": response.read().decode("utf-8")}))
"""


class AdminEndToEndTests(testbed.TopologyTestCase):
    """
    The admin endpoint of a proxy carrying real redirected traffic.
    """

    tag = "a"

    @classmethod
    def build(cls, topology):
        try:
            topology.add_redirect(testbed.SERVER_V4, [BACKEND_PORT, CLOSED_PORT, PAGE_PORT], PROXY_PORT)
            # No owner match: the proxy's own connection there comes back to it, a loop.
            topology.add_redirect(testbed.UNASSIGNED_V4, BACKEND_PORT, PROXY_PORT, owner_match=False)
        except testbed.TopologyError as e:
            raise unittest.SkipTest("cannot add the iptables REDIRECT rules: %s" % (e,))
        topology.start_backend(BACKEND_PORT)
        topology.start_server(
            "backend-page",
            [topology.python, testbed.BACKEND_SCRIPT,
             "--port", str(PAGE_PORT)],
            PAGE_PORT,
        )
        topology.start_proxy(PROXY_ARGS, PROXY_PORT)
        testbed.wait_for(lambda: topology.listening(topology.client, ADMIN_PORT), 10,
                         what="the admin endpoint")

    # -- helpers ---------------------------------------------------------------------

    def admin(self, path, method="GET", headers=None):
        """
        One request to the admin endpoint, from inside namespace C.

        @return: C{(status, body text)}.
        """
        proc = self.topology.exec(self.topology.client, [
            sys.executable, "-c", FETCH, ADMIN + path, method, json.dumps(headers or {})])
        answer = json.loads(proc.stdout)
        return answer["status"], answer["body"]

    def stats(self):
        status, body = self.admin("/stats?format=json")
        self.assertEqual(status, 200)
        return stat_values(body)

    def hosts(self):
        status, body = self.admin("/clusters?format=json")
        self.assertEqual(status, 200)
        [cluster] = json.loads(body)["cluster_statuses"]
        return {h["key"]: {s["name"]: s["value"] for s in h["stats"]} for h in cluster["host_statuses"]}

    def client(self, spec, timeout=30):
        return self.topology.run_client(spec, timeout=timeout)

    def one(self, host, port, path="/peer"):
        """
        One GET on a connection of its own; the status it got.
        """
        result = self.client({"host": host, "port": port, "timeout": 15,
                              "requests": [{"path": path}]})
        self.assertIsNone(result["error"], result)
        return result["responses"][0]["status"]

    # -- tests -----------------------------------------------------------------------

    def test_1_counters_match_traffic(self):
        """
        Eight requests to 10.250.0.3:80 on two keep-alive connections (seven 200, one 404),
        one to a closed port (503) and one into a redirect loop (508): the downstream,
        cluster, per-host and origdst counters say exactly that, in every format.
        """
        self.assertEqual(self.admin("/ready"), (200, "LIVE\n"))
        result = self.client({"connections": [
            {"host": testbed.SERVER_V4, "port": BACKEND_PORT, "requests": [{"path": "/peer"}] * 5},
            {"host": testbed.SERVER_V4, "port": BACKEND_PORT,
             "requests": [{"path": "/peer"}, {"path": "/peer"}, {"path": "/nothing"}]},
        ]})
        statuses = [r["status"] for c in result["connections"] for r in c["responses"]]
        self.assertEqual(statuses, [200] * 7 + [404], result)
        received = sum(r["body_len"] for c in result["connections"] for r in c["responses"])
        self.assertEqual(self.one(testbed.SERVER_V4, CLOSED_PORT), 503)
        self.assertEqual(self.one(testbed.UNASSIGNED_V4, BACKEND_PORT), 508)
        # Closed client connections are counted out asynchronously.
        testbed.wait_for(lambda: self.stats()["http.origdst.downstream_cx_active"] == 0, 10,
                         what="no client connection left")

        stats = self.stats()
        http = "http.origdst."
        cluster = "cluster.original_dst."
        expected = {
            # The loop adds a connection and a request: the proxy's own, refused with 508.
            http + "downstream_cx_total": 5,
            http + "downstream_cx_active": 0,
            http + "downstream_rq_total": 11,
            http + "downstream_rq_2xx": 7,
            http + "downstream_rq_4xx": 1,
            # The 503 and both 508s: the local reply and the one passed back.
            http + "downstream_rq_5xx": 3,
            # One pooled connection for the eight, the refused one, the looping one.
            cluster + "upstream_cx_total": 3,
            cluster + "upstream_cx_connect_fail": 1,
            cluster + "upstream_cx_connect_timeout": 0,
            cluster + "upstream_rq_total": 9,
            cluster + "upstream_rq_pending_total": 3,
            cluster + "upstream_rq_pending_overflow": 0,
            cluster + "upstream_rq_2xx": 7,
            cluster + "upstream_rq_4xx": 1,
            # The connect failure's 503 (charged as Envoy does) and the looped 508.
            cluster + "upstream_rq_5xx": 2,
            cluster + "upstream_rq_timeout": 0,
            cluster + "upstream_rq_retry": 0,
            cluster + "membership_total": 3,
            cluster + "membership_healthy": 3,
            cluster + "membership_change": 3,
            cluster + "upstream_rq_active": 0,
            "origdst.no_original_dst": 0,
            "origdst.redirect_loop": 1,
            "listener.[__]_%d.downstream_cx_total" % PROXY_PORT: 5,
            "server.live": 1,
        }
        self.assertEqual({name: stats.get(name) for name in expected}, expected)

        hosts = self.hosts()
        backend = hosts["10.250.0.3:80"]
        self.assertEqual(
            {k: backend[k] for k in ("rq_total", "rq_success", "rq_error", "cx_total", "cx_connect_fail")},
            {"rq_total": 8, "rq_success": 8, "rq_error": 0, "cx_total": 1, "cx_connect_fail": 0},
        )
        self.assertGreater(backend["cx_rx_bytes_total"], received)
        self.assertGreaterEqual(backend["cx_tx_bytes_total"], 8 * len("GET /peer HTTP/1.1\r\n"))
        self.assertEqual(stats[cluster + "upstream_cx_rx_bytes_total"],
                         sum(h["cx_rx_bytes_total"] for h in hosts.values()))
        closed = hosts["10.250.0.3:81"]
        self.assertEqual((closed["rq_total"], closed["cx_connect_fail"], closed["rq_error"]), (0, 1, 1))
        loop = hosts["10.250.0.4:80"]
        self.assertEqual((loop["rq_total"], loop["rq_error"]), (1, 1))

        status, text = self.admin("/clusters")
        self.assertIn("original_dst::10.250.0.3:80::rq_total::8\n", text)
        status, text = self.admin("/stats/prometheus")
        self.assertIn('envoy_cluster_upstream_rq_total{envoy_cluster_name="original_dst"} 9\n', text)
        self.assertIn('envoy_http_downstream_rq_xx{envoy_response_code_class="2",'
                      'envoy_http_conn_manager_prefix="origdst"} 7\n', text)
        self.assertEqual(self.admin("/logging?level=debug")[0], 405)
        self.assertEqual(self.admin("/logging?level=debug", "POST", CHANGE),
                         (200, "active loggers:\n  origdst: debug\n"))
        self.assertEqual(self.admin("/logging?level=info", "POST", CHANGE)[0], 200)

    def test_2_page_shows_new_destination(self):
        """
        The live page, in a headless Chromium inside namespace C, lists the destinations; a
        request to a new one makes it appear with its request count, by itself.
        """
        chromium = browser.find_chromium()
        if chromium is None:
            raise unittest.SkipTest("chromium is not installed (Debian: apt-get install chromium)")
        topology = self.topology
        page = browser.Browser(["ip", "netns", "exec", topology.client], topology.workdir, chromium)
        self.addCleanup(page.stop)
        topology.track(page)
        session = page.open(ADMIN + "/")
        rows = (
            "Array.from(document.querySelectorAll('#hosts tbody tr[data-host]'))"
            ".map(r => [r.dataset.host, Number(r.querySelector('.rq_total').textContent),"
            " Number(r.querySelector('.rq_rate').textContent)])"
        )
        page.wait_for(session, "document.readyState === 'complete' && "
                      "document.getElementById('updated').textContent !== 'never'", 20,
                      what="the page's first update")
        self.assertEqual(page.evaluate(session, "document.getElementById('state').textContent"), "LIVE")
        new = "%s:%d" % (testbed.SERVER_V4, PAGE_PORT)
        self.assertNotIn(new, [row[0] for row in page.evaluate(session, rows)])

        self.assertEqual(self.one(testbed.SERVER_V4, PAGE_PORT), 200)
        found = page.wait_for(
            session, "(%s).filter(r => r[0] === %s && r[1] >= 1)" % (rows, json.dumps(new)), 20,
            what="%s on the page" % new)
        [(host, requests, rate)] = found
        self.assertEqual((host, requests), (new, 1))
        self.assertGreater(rate, 0)
        # The upstream latency tile shows p50 / p99 from the histogram.
        latency = page.wait_for(
            session, "/^\\d+\\.\\d \\/ \\d+\\.\\d$/.test(document.getElementById('latency').textContent)"
            " && document.getElementById('latency').textContent", 20, what="the latency tile")
        p50, p99 = (float(v) for v in latency.split(" / "))
        self.assertLessEqual(p50, p99)
        self.assertEqual(page.evaluate(session, "document.getElementById('missing').textContent"), "")
        if os.environ.get("ORIGDST_SCREENSHOT"):
            page.screenshot(session, os.environ["ORIGDST_SCREENSHOT"])
        # Nothing on the page failed: no error banner.
        self.assertEqual(page.evaluate(session, "document.getElementById('error').style.display"), "none")

    def curl(self, *args):
        """
        One request with curl, from inside namespace C.

        @return: C{(status, headers by lower-case name, body text)}.
        """
        if shutil.which("curl") is None:
            raise unittest.SkipTest("curl is not installed")
        proc = self.topology.exec(self.topology.client, ["curl", "-sS", "-i", "--max-time", "10"] + list(args))
        # Text mode has turned each CRLF into a newline.
        head, _, body = proc.stdout.partition("\n\n")
        lines = head.split("\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(lines[0].split()[1]), headers, body

    def level(self):
        status, body = self.admin("/logging")
        self.assertEqual(status, 200)
        return body.split("origdst: ")[1].strip()

    def test_3_curl_refused_and_allowed(self):
        """
        With curl: a cross-site form POST (Origin http://evil.example) to /logging and
        /reset_counters, the same with only a Referer, a POST without X-Origdst-Admin, a CORS
        preflight and Host evil.example on /config_dump are all refused and change nothing;
        the proxy logs them. curl -X POST -H 'X-Origdst-Admin: 1' changes the level and
        resets the counters.
        """
        before = self.stats()["http.origdst.downstream_rq_total"]
        self.assertGreater(before, 0)
        form = ["-H", "Origin: http://%s" % EVIL, "-H", "Content-Type: application/x-www-form-urlencoded",
                "--data", "level=debug"]
        for path in ("/logging?level=debug", "/reset_counters"):
            status, _, body = self.curl(*form + [ADMIN + path])
            self.assertEqual(status, 403, body)
            self.assertIn("Cross-site request refused: Origin 'http://evil.example'", body)
            status, _, body = self.curl("-X", "POST", "-H", "Referer: http://%s/" % EVIL,
                                        "-H", "X-Origdst-Admin: 1", ADMIN + path)
            self.assertEqual(status, 403, body)
            self.assertIn("Referer 'http://evil.example/'", body)
            status, _, body = self.curl("-X", "POST", ADMIN + path)
            self.assertEqual(status, 403, body)
            self.assertIn("needs the header X-Origdst-Admin: 1", body)
            status, headers, body = self.curl(
                "-X", "OPTIONS", "-H", "Origin: http://%s" % EVIL, "-H", "Access-Control-Request-Method: POST",
                "-H", "Access-Control-Request-Headers: x-origdst-admin", ADMIN + path)
            self.assertEqual(status, 405, body)
            self.assertEqual([h for h in headers if h.startswith("access-control")], [])
        status, _, body = self.curl("-H", "Host: %s:%d" % (EVIL, ADMIN_PORT), ADMIN + "/config_dump")
        self.assertEqual(status, 421, body)
        self.assertNotIn("max-connections", body)
        self.assertEqual(self.level(), "info")
        self.assertEqual(self.stats()["http.origdst.downstream_rq_total"], before)
        testbed.wait_for(lambda: "Refused admin request" in self.topology.proxy_log(), 5,
                       what="a refusal in the proxy's log")

        change = ["-X", "POST", "-H", "X-Origdst-Admin: 1"]
        status, _, body = self.curl(*change + [ADMIN + "/logging?level=debug"])
        self.assertEqual((status, body), (200, "active loggers:\n  origdst: debug\n"))
        self.assertEqual(self.curl(*change + [ADMIN + "/logging?level=info"])[0], 200)
        self.assertEqual(self.curl(*change + [ADMIN + "/reset_counters"])[:1], (200,))
        self.assertEqual(self.stats()["http.origdst.downstream_rq_total"], 0)
        status, _, body = self.curl(ADMIN + "/config_dump")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["settings"]["admin-host"], [])

    def test_4_browser_cross_site_and_rebinding(self):
        """
        In Chromium: a POST from script on the live page itself works. A page on
        evil.example, a name that now resolves to 127.0.0.1, gets 421 for everything it
        reads; its fetch with X-Origdst-Admin is stopped by the refused preflight, its
        no-cors POST and its form POST to 127.0.0.1 are refused; nothing changes.
        """
        chromium = browser.find_chromium()
        if chromium is None:
            raise unittest.SkipTest("chromium is not installed (Debian: apt-get install chromium)")
        self.assertEqual(self.one(testbed.SERVER_V4, BACKEND_PORT), 200)
        before = self.stats()["http.origdst.downstream_rq_total"]
        self.assertGreater(before, 0)
        page = browser.Browser(["ip", "netns", "exec", self.topology.client], self.topology.workdir, chromium,
                               flags=["--host-resolver-rules=MAP %s 127.0.0.1" % EVIL])
        self.addCleanup(page.stop)
        self.topology.track(page)
        post = ("fetch(%s, {method: 'POST', headers: {'X-Origdst-Admin': '1'}})"
                ".then(r => r.text().then(t => r.status + ' ' + t), e => 'blocked: ' + e)")

        own = page.open(ADMIN + "/")
        page.wait_for(own, "document.readyState === 'complete'", 20, what="the live page")
        self.assertEqual(page.evaluate(own, post % json.dumps("/logging?level=debug")),
                         "200 active loggers:\n  origdst: debug\n")
        self.assertEqual(page.evaluate(own, post % json.dumps("/logging?level=info"))[:3], "200")

        evil = page.open("http://%s:%d/" % (EVIL, ADMIN_PORT))
        text = page.wait_for(evil, "document.readyState === 'complete' && document.body.innerText", 20,
                             what="evil.example's page")
        self.assertIn("Misdirected request: Host 'evil.example:%d'" % ADMIN_PORT, text)
        self.assertEqual(page.evaluate(evil, "fetch('/config_dump').then(r => r.status)"), 421)
        self.assertRegex(page.evaluate(evil, post % json.dumps(ADMIN + "/reset_counters")), "^blocked: ")
        self.assertEqual(page.evaluate(evil, (
            "fetch(%s, {method: 'POST', mode: 'no-cors', body: 'level=debug', headers: "
            "{'Content-Type': 'application/x-www-form-urlencoded'}}).then(r => r.type)")
            % json.dumps(ADMIN + "/logging?level=debug")), "opaque")
        page.evaluate(evil, (
            "(() => { const f = document.createElement('form'); f.method = 'POST'; f.action = %s;"
            " document.body.appendChild(f); f.submit(); return true; })()")
            % json.dumps(ADMIN + "/reset_counters"))
        text = page.wait_for(evil, "location.host === '127.0.0.1:%d' && document.readyState === 'complete'"
                             " && document.body.innerText" % ADMIN_PORT, 20, what="the form's answer")
        self.assertIn("Cross-site request refused: Origin 'http://evil.example:%d'" % ADMIN_PORT, text)
        self.assertEqual(self.level(), "info")
        self.assertEqual(self.stats()["http.origdst.downstream_rq_total"], before)


def testSuite():
    """
    The tests in order (the page test needs a destination the counting test did not use),
    then the teardown of their namespaces.
    """
    names = sorted(name for name in dir(AdminEndToEndTests) if name.startswith("test_"))
    return testbed.suite(AdminEndToEndTests, names)
