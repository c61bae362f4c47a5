"""
Tests for L{origdst.adminguard}: the admin site fed raw HTTP requests over a
L{StringTransport}, as a browser on the host would send them (a DNS-rebinding
page, a cross-site form, a CORS preflight) and as a shell would (curl).
"""

import json
import re

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.testing import StringTransport
from twisted.python import usage
from twisted.trial import unittest

from origdst import admin, adminguard, config, logs, stats
from origdst.tap import Options

from tests.helpers import GET, OK, ProxyHarness, capture_log
from tests.helpers import fetch

EVIL = b"http://evil.example"
FORM = b"application/x-www-form-urlencoded"


class Answer:
    def __init__(self, raw):
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = lines[0]
        self.code = int(lines[0].split()[1])
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers.setdefault(name.strip().lower(), []).append(value.strip())

    def text(self):
        return self.body.decode("utf-8")


class Harness:
    """
    An admin site over a proxy that carried one request, on a memory reactor.
    """

    def __init__(self, test, **settings):
        self.messages = capture_log(test)
        self.proxy = ProxyHarness(test, **settings)
        self.stats = self.proxy.cluster.stats
        self.stats.state = stats.LIVE
        self.admin = admin.Admin(self.proxy.settings, self.proxy.cluster, self.proxy.reactor)
        self.site = admin.site(self.admin)
        channel, _ = self.proxy.client()
        channel.dataReceived(GET)
        self.proxy.accept_upstream().protocol.dataReceived(OK)

    def request(self, method, path, headers=(), version=b"HTTP/1.1", local=None, body=b""):
        """
        Send one request on a connection of its own.

        @param headers: C{(name, value)} byte pairs, C{Host} included if wanted.
        @param local: the address the connection came to.
        @return: the L{Answer}.
        """
        local = local or IPv4Address("TCP", "127.0.0.1", 9901)
        transport = StringTransport(hostAddress=local, peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        channel = self.site.buildProtocol(None)
        channel.makeConnection(transport)
        lines = [method + b" " + path + b" " + version]
        lines += [name + b": " + value for name, value in headers]
        if body:
            lines.append(b"content-length: %d" % len(body))
        channel.dataReceived(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        answer = Answer(transport.value())
        channel.connectionLost(None)
        return answer

    def refusals(self):
        return [m for m in self.messages if m.startswith("Refused admin request")]


def host(value=b"127.0.0.1:9901"):
    return (b"host", value)


class HostTests(unittest.TestCase):
    """
    DNS rebinding: only a C{Host} naming the admin itself is answered.
    """

    def setUp(self):
        self.admin = Harness(self, admin_host=("admin.example", "*.corp.example"))

    def test_own_names(self):
        """
        localhost, 127.0.0.1, [::1] (any spelling, with or without a port),
        the address the connection came to, and the --admin-host names.
        """
        for value in [b"127.0.0.1:9901", b"127.0.0.1", b"localhost", b"LocalHost.:9901", b"[::1]:9901",
                      b"[0:0::1]", b"admin.example:9901", b"ADMIN.example", b"a.b.corp.example:80"]:
            answer = self.admin.request(b"GET", b"/ready", [host(value)])
            self.assertEqual((answer.code, answer.body), (200, b"LIVE\n"), value)
        answer = self.admin.request(b"GET", b"/ready", [host(b"10.250.0.1:9901")],
                                    local=IPv4Address("TCP", "10.250.0.1", 9901))
        self.assertEqual(answer.code, 200)
        answer = self.admin.request(b"GET", b"/ready", [host(b"[fd00:250::1]:9901")],
                                    local=IPv6Address("TCP", "fd00:250::1", 9901))
        self.assertEqual(answer.code, 200)
        # A dual-stack socket reached over IPv4 sees an IPv4-mapped address.
        answer = self.admin.request(b"GET", b"/ready", [host(b"10.250.0.1")],
                                    local=IPv6Address("TCP", "::ffff:10.250.0.1", 9901))
        self.assertEqual(answer.code, 200)
        self.assertEqual(self.admin.refusals(), [])

    def test_rebinding_config_dump(self):
        """
        A page on evil.example whose name now resolves to 127.0.0.1 sends
        Host evil.example:9901: 421, and no configuration in the body.
        """
        answer = self.admin.request(b"GET", b"/config_dump", [host(b"evil.example:9901")])
        self.assertEqual(answer.status, "HTTP/1.1 421 Misdirected Request")
        self.assertIn("Misdirected request: Host 'evil.example:9901' is not this admin interface", answer.text())
        self.assertIn("--admin-host", answer.text())
        self.assertNotIn("max-connections", answer.text())
        self.assertEqual(answer.headers["content-type"], ["text/plain; charset=UTF-8"])
        [line] = self.admin.refusals()
        self.assertIn("GET /config_dump from 127.0.0.1 with 421: Misdirected request: Host 'evil.example:9901'", line)

    def test_other_names(self):
        """
        Any other name is refused, on every endpoint and method: names that
        merely contain an allowed one, another loopback address than the one
        connected to, the wildcard's bare domain.
        """
        for value in [b"evil.example", b"localhost.evil.example", b"evil.localhost", b"127.0.0.2:9901",
                      b"corp.example", b"admin.example.evil.example", b"[::2]"]:
            for method, path in [(b"GET", b"/ready"), (b"GET", b"/"), (b"POST", b"/reset_counters")]:
                answer = self.admin.request(method, path, [host(value), (b"x-origdst-admin", b"1")])
                self.assertEqual(answer.code, 421, (value, path))
        self.assertEqual(self.admin.stats.downstream_rq_total, 1)

    def test_missing_and_bad_host(self):
        """
        HTTP/1.0 without Host is answered (no browser sends one; a health
        check may); HTTP/1.1 without Host, two Host headers or a malformed
        one are 400.
        """
        self.assertEqual(self.admin.request(b"GET", b"/ready", version=b"HTTP/1.0").code, 200)
        self.assertEqual(self.admin.request(b"GET", b"/ready").code, 400)
        self.assertEqual(self.admin.request(b"GET", b"/ready", [host(), host()]).code, 400)
        for value in [b"", b"a b", b"127.0.0.1:99x", b"[::1", b"a@b"]:
            self.assertEqual(self.admin.request(b"GET", b"/ready", [host(value)]).code, 400, value)

    def test_log_rate(self):
        """
        One log line a second at most; the next one counts those left out.
        """
        for _ in range(5):
            self.admin.request(b"GET", b"/stats", [host(b"evil.example")])
        self.assertEqual(len(self.admin.refusals()), 1)
        self.admin.proxy.reactor.advance(0.5)
        self.admin.request(b"GET", b"/stats", [host(b"evil.example")])
        self.assertEqual(len(self.admin.refusals()), 1)
        self.admin.proxy.reactor.advance(0.5)
        self.admin.request(b"GET", b"/stats", [host(b"evil.example")])
        lines = self.admin.refusals()
        self.assertEqual(len(lines), 2)
        self.assertTrue(lines[1].endswith("(5 more refused since the last such line)"), lines[1])
        self.admin.proxy.reactor.advance(1)
        self.admin.request(b"GET", b"/stats", [host(b"evil.example")])
        self.assertNotIn("more refused", self.admin.refusals()[2])

    def test_log_escapes(self):
        """
        What a client sent is logged escaped, never as raw control bytes.
        """
        answer = self.admin.request(b"POST", b"/reset_counters", [host(), (b"origin", b"http://e\xff\x7f.example")])
        self.assertEqual(answer.code, 403)
        [line] = self.admin.refusals()
        self.assertIn("Origin 'http://e\\xff\\x7f.example'", line)
        self.assertNotIn("\x7f", line + answer.text())


class CrossSiteTests(unittest.TestCase):
    """
    Every endpoint the table marks as changing something: a POST is refused
    unless it carries X-Origdst-Admin: 1 and no foreign Origin or Referer.
    """

    def setUp(self):
        self.admin = Harness(self)
        self.addCleanup(logs.set_level, logs.level())
        logs.set_level("info")

    def changing(self):
        return [path for path, _, changes in admin.ENDPOINTS if changes]

    def unchanged(self):
        """
        Assert that nothing changed: the log level, and the counters.
        """
        self.assertEqual(logs.level(), "info")
        self.assertEqual(self.admin.stats.downstream_rq_total, 1)

    def post(self, path, *headers):
        return self.admin.request(b"POST", b"/" + path.encode("ascii") + b"?level=debug", [host()] + list(headers))

    def test_table(self):
        """
        The state-changing endpoints are /logging, /reset_counters and
        /drain_listeners, and
        an endpoint implements L{admin.Endpoint.change} if and only if the
        table marks it.
        """
        self.assertEqual(self.changing(), ["logging", "reset_counters", "drain_listeners"])
        for path, kind, changes in admin.ENDPOINTS:
            self.assertEqual(kind.change is not admin.Endpoint.change, changes, path)
        help = self.admin.request(b"GET", b"/help", [host()]).text()
        self.assertIn("  /reset_counters: reset all counters to zero (POST) (a POST needs the header "
                      "X-Origdst-Admin: 1)\n", help)
        self.assertIn("  /drain_listeners: stop listening and drain client connections (POST); the "
                      "process keeps running (a POST needs the header X-Origdst-Admin: 1)\n", help)
        self.assertEqual(help.count("X-Origdst-Admin"), 3)

    def test_form_post(self):
        """
        A cross-site form (Origin http://evil.example, a form content type)
        is 403, with or without the header.
        """
        for path in self.changing():
            for extra in [(), ((b"x-origdst-admin", b"1"),)]:
                answer = self.post(path, (b"origin", EVIL), (b"content-type", FORM), *extra)
                self.assertEqual(answer.code, 403, path)
                self.assertIn("Cross-site request refused: Origin 'http://evil.example' is not this admin "
                              "interface (http://127.0.0.1:9901)", answer.text())
                self.assertIn("curl -X POST -H 'X-Origdst-Admin: 1'", answer.text())
        self.unchanged()

    def test_foreign_origins(self):
        """
        Origins that are not exactly the admin's own: another port or
        scheme, another of its names, null (a sandboxed or file page).
        """
        for origin in [b"http://127.0.0.1:8080", b"https://127.0.0.1:9901", b"http://localhost:9901",
                       b"null", b"http://127.0.0.1:9901.evil.example", b"garbage"]:
            for path in self.changing():
                answer = self.post(path, (b"origin", origin), (b"x-origdst-admin", b"1"))
                self.assertEqual(answer.code, 403, origin)
        self.unchanged()

    def test_referer_only(self):
        """
        Without an Origin, a foreign Referer is refused just the same.
        """
        for path in self.changing():
            answer = self.post(path, (b"referer", EVIL + b"/page.html"), (b"x-origdst-admin", b"1"))
            self.assertEqual(answer.code, 403)
            self.assertIn("Referer 'http://evil.example/page.html'", answer.text())
        self.unchanged()

    def test_simple_post(self):
        """
        A POST without the header, what any form or no-cors fetch can send,
        is refused even without Origin and Referer.
        """
        for path in self.changing():
            for extra in [(), ((b"content-type", FORM),), ((b"x-origdst-admin", b"yes"),)]:
                answer = self.admin.request(b"POST", b"/" + path.encode("ascii") + b"?level=debug",
                                            [host()] + list(extra), body=b"level=debug")
                self.assertEqual(answer.code, 403)
                self.assertIn("needs the header X-Origdst-Admin: 1", answer.text())
        self.unchanged()

    def test_fetch_metadata(self):
        """
        Sec-Fetch-Site cross-site or same-site (a page on another port of
        localhost) is refused.
        """
        for site in [b"cross-site", b"same-site"]:
            answer = self.post("reset_counters", (b"sec-fetch-site", site), (b"x-origdst-admin", b"1"))
            self.assertEqual(answer.code, 403)
        self.unchanged()

    def test_preflight(self):
        """
        A CORS preflight gets 405 and no Access-Control-* header, so the
        browser never sends the request it asked about; no answer of any
        endpoint has one either.
        """
        for path in self.changing():
            answer = self.admin.request(b"OPTIONS", b"/" + path.encode("ascii"), [
                host(), (b"origin", EVIL), (b"access-control-request-method", b"POST"),
                (b"access-control-request-headers", b"x-origdst-admin")])
            self.assertEqual(answer.code, 405)
            self.assertEqual([h for h in answer.headers if h.startswith("access-control")], [])
        for path, _, _ in admin.ENDPOINTS:
            for method in (b"GET", b"POST"):
                answer = self.admin.request(method, b"/" + path.encode("ascii"), [host(), (b"origin", EVIL)])
                self.assertEqual([h for h in answer.headers if h.startswith("access-control")], [], path)
        self.unchanged()

    def test_curl(self):
        """
        curl -X POST -H 'X-Origdst-Admin: 1' works; so does the admin's own
        page (its Origin, or a Referer from it) and Sec-Fetch-Site
        same-origin; a GET with the header is still not a POST.
        """
        answer = self.post("logging", (b"x-origdst-admin", b"1"), (b"user-agent", b"curl/8.14.1"))
        self.assertEqual((answer.code, answer.text()), (200, "active loggers:\n  origdst: debug\n"))
        answer = self.admin.request(b"POST", b"/logging?level=info", [
            host(), (b"x-origdst-admin", b"1"), (b"origin", b"http://127.0.0.1:9901"),
            (b"sec-fetch-site", b"same-origin")])
        self.assertEqual((answer.code, logs.level()), (200, "info"))
        answer = self.admin.request(b"POST", b"/logging?level=warn", [
            host(b"localhost:9901"), (b"x-origdst-admin", b"1"), (b"referer", b"http://LOCALHOST:9901/")])
        self.assertEqual((answer.code, logs.level()), (200, "warn"))
        answer = self.admin.request(b"POST", b"/reset_counters", [
            host(b"[::1]"), (b"x-origdst-admin", b"1"), (b"origin", b"http://[::1]:80")])
        self.assertEqual(answer.code, 200)
        self.assertEqual(self.admin.stats.downstream_rq_total, 0)
        answer = self.admin.request(b"GET", b"/reset_counters", [host(), (b"x-origdst-admin", b"1")])
        self.assertEqual((answer.code, answer.headers["allow"]), (405, ["POST"]))

    def test_later_endpoint(self):
        """
        An endpoint added later (such as /drain_listeners) is guarded by its
        row in the table alone.
        """
        calls = []

        class Drain(admin.Endpoint):
            def change(self, request):
                calls.append(request.method)
                return 200, (admin.TEXT, b"draining\n")

        self.patch(admin, "ENDPOINTS", admin.ENDPOINTS + [("drain_listeners", Drain, True)])
        self.admin.site = admin.site(self.admin.admin)
        self.assertEqual(self.post("drain_listeners", (b"origin", EVIL), (b"content-type", FORM)).code, 403)
        self.assertEqual(self.post("drain_listeners").code, 403)
        self.assertEqual(self.admin.request(b"GET", b"/drain_listeners", [host()]).code, 405)
        self.assertEqual(calls, [])
        self.assertEqual(self.post("drain_listeners", (b"x-origdst-admin", b"1")).code, 200)
        self.assertEqual(calls, [b"POST"])


class SecretTests(unittest.TestCase):
    """
    Nothing secret is served: a setting marked secret is redacted wherever
    settings are shown.
    """

    def test_secret_setting_redacted(self):
        """
        With server-name marked secret, its value is on no page of the
        admin, and /config_dump and /server_info say it is redacted.
        """
        self.patch(config.OPTIONS["server-name"], "secret", True)
        state = Harness(self, server_name="hunter2-s3cret")
        for path, _, _ in admin.ENDPOINTS:
            for query in ("", "?format=json"):
                response = fetch(state.site, "/" + path + query)
                self.assertNotIn(b"hunter2", response.body, path)
        dump = fetch(state.site, "/config_dump").json()
        self.assertEqual(dump["settings"]["server-name"], "[redacted]")
        self.assertEqual(dump["settings"]["cluster-name"], "original_dst")
        info = fetch(state.site, "/server_info").json()
        self.assertEqual(info["command_line_options"]["server-name"], "[redacted]")

    def test_names(self):
        """
        A setting named like a credential is secret even if not listed; a
        file's path is not; no setting today holds a credential.
        """
        for name in ["upstream-proxy-password", "api-token", "tls-private-key", "client-secret"]:
            self.assertTrue(adminguard.is_secret(name), name)
        for name in ["password-file", "token-path", "server-name", "admin-host"]:
            self.assertFalse(adminguard.is_secret(name), name)
        self.assertEqual([o for o in config.OPTIONS if adminguard.is_secret(o)], [])

    def test_unset_shown(self):
        """
        An unset secret shows as unset; a set one as redacted.
        """
        self.assertEqual(
            adminguard.redact({"api-token": "none", "x-password": "", "y-password": "pw", "port": "tcp:1"}),
            {"api-token": "none", "x-password": "", "y-password": "[redacted]", "port": "tcp:1"},
        )

    def test_page_reads_no_settings(self):
        """
        The live page reads /stats, /clusters and /server_info (redacted, as
        tested above), and of the settings it shows only cleanup-interval.
        """
        page = fetch(Harness(self).site, "/").text()
        paths = set(re.findall(r"getJSON\(\"([^\"?]+)", page))
        self.assertEqual(paths, {"/stats", "/clusters", "/server_info"})
        self.assertEqual(set(re.findall(r"command_line_options\[\"([^\"]+)", page)), {"cleanup-interval"})


class OptionTests(unittest.TestCase):
    def parse(self, *argv):
        options = Options()
        options.parseOptions(list(argv))
        return options.settings

    def test_admin_host(self):
        """
        --admin-host is repeatable and takes names and *.domain patterns; a
        bad one is a usage error naming the option.
        """
        self.assertEqual(self.parse().admin_host, ())
        settings = self.parse("--admin-host", "Admin.Example", "--admin-host", "*.corp.example")
        self.assertEqual(settings.admin_host, ("admin.example", "*.corp.example"))
        e = self.assertRaises(usage.UsageError, self.parse, "--admin-host", "bad_name!")
        self.assertIn("admin-host", str(e))
        self.assertIn("bad_name!", str(e))

    def test_listen_description(self):
        """
        A unix admin socket is made mode 660 unless its description says
        otherwise; other endpoints are left as given.
        """
        self.assertEqual(adminguard.listen_description("unix:/run/origdst/admin.sock"),
                         "unix:/run/origdst/admin.sock:mode=660")
        self.assertEqual(adminguard.listen_description("unix:/run/a.sock:mode=600"), "unix:/run/a.sock:mode=600")
        self.assertEqual(adminguard.listen_description("unix:address=/run/a\\:mode=x.sock"),
                         "unix:address=/run/a\\:mode=x.sock:mode=660")
        self.assertEqual(adminguard.listen_description("tcp:9901:interface=127.0.0.1"),
                         "tcp:9901:interface=127.0.0.1")

    def test_unix_host(self):
        """
        Over a unix socket the Host rule is the same: curl --unix-socket
        sends localhost.
        """
        state = Harness(self)
        local = UNIXAddress(b"/run/origdst/admin.sock")
        self.assertEqual(state.request(b"GET", b"/ready", [host(b"localhost")], local=local).code, 200)
        self.assertEqual(state.request(b"GET", b"/ready", [host(b"evil.example")], local=local).code, 421)
        dump = json.loads(state.request(b"GET", b"/config_dump", [host(b"localhost")], local=local).body)
        self.assertEqual(dump["settings"]["admin-host"], [])
