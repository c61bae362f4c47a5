"""
The hostile-input corpus (tests/hostile.json) replayed end to end: malformed
and adversarial requests from an unprivileged client through the iptables
REDIRECT to origdst, and malformed responses from a raw upstream server.

Every rejected request must get its status and a closed connection, none of
them (nor a request smuggled inside one) may reach the backend, and the proxy
must go on serving afterwards, on a connection that carried odd but legal
requests and on a new one.
"""

import json
import os
import sys

import testbed

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hostile.json")
PROXY_PORT = 15002
BACKEND_PORT = 80
RAW_PORT = 82
#: Redirected like the others, but denied by the proxy's egress policy.
DENIED_PORT = 81

with open(CORPUS) as _f:
    _corpus = json.load(_f)
REQUESTS = _corpus["requests"]
RESPONSES = _corpus["responses"]


def raw(data, read_timeout=5):
    return {"host": testbed.SERVER_V4, "port": BACKEND_PORT, "raw": data, "read_timeout": read_timeout}


class HostileInputTests(testbed.TopologyTestCase):
    """
    The corpus through a real proxy, one fixture for the whole class.
    """

    tag = "h"

    @classmethod
    def build(cls, topology):
        topology.add_redirect(testbed.SERVER_V4, [BACKEND_PORT, RAW_PORT, DENIED_PORT], PROXY_PORT)
        topology.start_backend(BACKEND_PORT)
        topology.start_server(
            "rawserver",
            [sys.executable, os.path.join(os.path.dirname(__file__), "rawserver.py"),
             "--port", str(RAW_PORT), "--corpus", CORPUS],
            RAW_PORT,
        )
        topology.start_proxy(
            ["--port", "tcp:%d" % PROXY_PORT, "--log-level", "debug",
             "--deny", "%s:%d" % (testbed.SERVER_V4, DENIED_PORT)],
            PROXY_PORT,
        )

    def test_corpus_size(self):
        """
        The corpus has at least 60 requests that must be refused.
        """
        refused = [r for r in REQUESTS if r["expect"] not in (200, "any", "relayed")]
        self.assertGreaterEqual(len(refused), 60)
        self.assertEqual(len({r["name"] for r in REQUESTS}), len(REQUESTS))

    def test_requests(self):
        """
        Each request gets the expected answer; each refused one also has its
        connection closed; bytes that are not HTTP at all are relayed; nothing
        under /h/ or /smuggled/ reaches the
        backend, and every legal one reaches it exactly once.
        """
        result = self.topology.run_client(
            {"connections": [raw(r["raw"], read_timeout=10) for r in REQUESTS]}, timeout=120
        )
        problems = []
        for entry, got in zip(REQUESTS, result["connections"]):
            expect = entry["expect"]
            if got["error"]:
                problems.append("%s: client error %s" % (entry["name"], got["error"]))
            elif expect == "relayed":
                # Not HTTP: the destination answers, never the proxy.
                if "server: origdst" in got["raw_response"].lower():
                    problems.append("%s: answered by the proxy: %r" % (entry["name"], got["raw_response"][:200]))
                continue
            elif expect != "any" and got["status"] != expect:
                problems.append("%s: expected %s, got %s: %r" % (
                    entry["name"], expect, got["status"], got["raw_response"][:200]))
            elif expect not in (200, "any") and not got["closed"]:
                problems.append("%s: connection left open after %s" % (entry["name"], expect))
            if got["status"] is not None and "server: origdst" not in got["raw_response"].lower():
                problems.append("%s: answer did not come through the proxy" % entry["name"])
        if any(r["expect"] == "relayed" for r in REQUESTS):
            if "malformed ClientHello" not in self.topology.proxy_log():
                problems.append("the proxy did not log relaying the malformed ClientHello")
        seen = self.topology.backend_log()
        for marker in ("/h/", "/smuggled/"):
            if marker in seen:
                problems.append("the backend saw %s:\n%s" % (marker, seen))
        for entry in REQUESTS:
            if entry["expect"] == 200:
                count = seen.count("case=%s " % entry["name"])
                if count != 1:
                    problems.append("%s reached the backend %d times" % (entry["name"], count))
        self.assertEqual(problems, [], "\n".join(problems) + "\nproxy log:\n" + self.topology.proxy_log()[-3000:])

    def test_still_serving(self):
        """
        After the corpus, the proxy serves an odd-but-legal request followed
        by a valid one on the same connection, and a request on a new one; its
        log holds no traceback.
        """
        self.topology.run_client(
            {"connections": [raw(r["raw"], read_timeout=2) for r in REQUESTS[:20]]}, timeout=120
        )
        pipelined = (
            "POST /echo?case=same-1 HTTP/1.1\r\nHost: 10.250.0.3\r\nContent-Length: 5, 5\r\n\r\nhello"
            "GET /echo?case=same-2 HTTP/1.1\r\nHost: 10.250.0.3\r\nConnection: close\r\n\r\n"
        )
        same = self.topology.run_client(raw(pipelined))
        self.assertEqual(same["raw_response"].count("HTTP/1.1 200 OK"), 2, same)
        fresh = self.topology.run_client(
            {"host": testbed.SERVER_V4, "port": BACKEND_PORT, "requests": [{"path": "/echo?case=fresh"}]}
        )
        self.assertEqual(fresh["responses"][0]["status"], 200, fresh)
        self.assertTrue(self.topology.proxy.running())
        log = self.topology.proxy_log()
        self.assertNotIn("Traceback", log)
        self.assertNotIn("Unhandled", log)

    def test_malformed_responses(self):
        """
        A malformed response becomes a 502 (or, once its head was forwarded, a
        cut connection), never a desynchronised one; the proxy goes on.
        """
        problems = []
        for entry in RESPONSES:
            got = self.topology.run_client({
                "host": testbed.SERVER_V4, "port": RAW_PORT, "read_timeout": 10,
                "raw": "GET /r/%s HTTP/1.1\r\nHost: 10.250.0.3:82\r\n\r\n" % entry["name"],
            })
            expect = entry["expect"]
            if expect == "truncated":
                if got["status"] != 200 or not got["closed"]:
                    problems.append("%s: expected a cut 200, got %r" % (entry["name"], got))
            elif got["status"] != expect:
                problems.append("%s: expected %s, got %r" % (entry["name"], expect, got["raw_response"][:300]))
            elif expect != 200 and not got["closed"]:
                problems.append("%s: connection left open after %s" % (entry["name"], expect))
        self.assertEqual(problems, [], "\n".join(problems) + "\nproxy log:\n" + self.topology.proxy_log()[-3000:])
        ok = self.topology.run_client(
            {"host": testbed.SERVER_V4, "port": BACKEND_PORT, "requests": [{"path": "/echo?case=after-responses"}]}
        )
        self.assertEqual(ok["responses"][0]["status"], 200)


    def test_denied_destination(self):
        """
        A destination the egress policy denies gets 403 and one log line, and
        is never connected to.
        """
        got = self.topology.run_client({
            "host": testbed.SERVER_V4, "port": DENIED_PORT, "read_timeout": 10,
            "raw": "GET /h/denied HTTP/1.1\r\nHost: 10.250.0.3:81\r\n\r\n",
        })
        self.assertEqual(got["status"], 403, got)
        self.assertTrue(got["raw_response"].endswith("destination denied by egress policy"), got)
        log = self.topology.proxy_log()
        self.assertEqual(log.count("denied by --deny 10.250.0.3:81"), 1, log[-2000:])
        self.assertNotIn("Created host 10.250.0.3:81.", log)


def testSuite():
    return testbed.suite(HostileInputTests)
