"""
Accounting under faults (issue 12, item 3): a bounded load through the proxy in the test
namespaces, with the ledger backend (L{testbed.ledger}) resetting some connections before the
headers, closing some at the moment of reuse and cutting some bodies short, counted per request
id at the client, at the backend and in the proxy's C{/stats}.  L{testbed.accounting} holds the
load and the rules the books must obey; C{make soak} runs the same for minutes.

C{ORIGDST_ACCOUNTING_REQUESTS} sets the size of the load (default L{REQUESTS}).
"""

import os

from twisted.trial import unittest

import testbed
from testbed import accounting

#: About 6 s on CPython on two shared cores, with some 250 faults in it.
REQUESTS = int(os.environ.get("ORIGDST_ACCOUNTING_REQUESTS", "20000"))
CONNECTIONS = 50
SECONDS = 120


class AccountingTests(testbed.TopologyTestCase):
    """
    One load, its books settled at both ends and in C{/stats}.
    """

    tag = "ac"

    @classmethod
    def build(cls, topology):
        cls.ledger = accounting.build(topology, fault_fraction=0.3)

    def test_books_balance(self):
        """
        Every request got exactly one answer, its own, and the one the backend's events call
        for; the backend served each good request once, no POST twice, a GET twice only as a
        retry after a reused connection failed; the proxy's counters moved by what both ends
        counted; no request went around the proxy; nothing is left active.
        """
        run = accounting.Accounting(self.topology, self.ledger)
        books = run.round(REQUESTS, CONNECTIONS, SECONDS)
        self.assertEqual(books.problems, [], books.summary())
        kinds = books.kinds()
        faults = books.faults()
        # The load did meet every fault, and the proxy recovered what it could.
        for fault in ("reset", "drop", "cut"):
            self.assertGreater(faults[fault], 0, books.summary())
        self.assertGreater(books.delta[accounting.CLUSTER + "upstream_rq_retry"], 0,
                           books.summary())
        self.assertGreater(kinds["ok"], REQUESTS * 0.9, books.summary())
        self.assertEqual(len(books.outcomes), REQUESTS)


H, C = accounting.HTTP, accounting.CLUSTER


def books(outcomes, events, moved, accepts=1):
    """
    L{accounting.Books} for a made-up load whose counters moved by C{moved}.
    """
    after = dict(moved)
    after.setdefault(H + "downstream_cx_active", 0)
    after.setdefault(C + "upstream_rq_active", 0)
    return accounting.Books(outcomes, events, accepts, {}, after, 1.0)


#: A balanced load: a GET served, a GET retried after a drop at reuse, a POST reset before its
#: headers (503, not retried), a GET whose body was cut.
OUTCOMES = {"a": ["GET", 200, "ok"], "b": ["GET", 200, "ok"], "c": ["POST", 503, "status:connection termination"],
            "d": ["GET", 200, "cut"]}
EVENTS = {
    "a": [("served", "GET", 1, 1, "proxied")],
    "b": [("drop", "GET", 1, 2, "proxied"), ("served", "GET", 2, 1, "proxied")],
    "c": [("reset", "POST", 2, 2, "proxied")],
    "d": [("cut", "GET", 3, 1, "proxied")],
}
MOVED = {H + "downstream_rq_total": 4, H + "downstream_rq_2xx": 3, H + "downstream_rq_5xx": 1,
         C + "upstream_rq_2xx": 3, C + "upstream_rq_5xx": 1, C + "upstream_rq_total": 5,
         C + "upstream_rq_retry": 1, C + "upstream_rq_rx_reset": 3, C + "upstream_cx_total": 3}


class BooksTests(unittest.TestCase):
    """
    The rules L{accounting.Books} holds a load to, each shown to catch its breach.
    """

    def check(self, outcomes=None, events=None, moved=None, accepts=3):
        return books(dict(OUTCOMES, **(outcomes or {})), dict(EVENTS, **(events or {})),
                     dict(MOVED, **(moved or {})), accepts).problems

    def test_balanced(self):
        self.assertEqual(self.check(), [])

    def test_no_answer(self):
        problems = self.check(outcomes={"a": ["GET", None, "error:ConnectionResetError"]},
                              moved={H + "downstream_rq_2xx": 2, C + "upstream_rq_2xx": 3})
        self.assertIn("GET a got no answer: error:ConnectionResetError", problems)

    def test_wrong_answer(self):
        problems = self.check(outcomes={"a": ["GET", 200, "mismatch"]})
        self.assertIn("GET a got an answer that is not its own", problems)
        self.assertTrue(any("calls for 200 ok" in p for p in problems), problems)

    def test_other_local_reply(self):
        problems = self.check(outcomes={"c": ["POST", 503, "status:overflow"]})
        self.assertEqual(problems, [
            "POST c: the backend's reset calls for 503 status:connection termination, "
            "the client got 503 status:overflow"])

    def test_post_twice(self):
        problems = self.check(
            outcomes={"c": ["POST", 200, "ok"]},
            events={"c": [("reset", "POST", 2, 2, "proxied"), ("served", "POST", 4, 1, "proxied")]},
            moved={H + "downstream_rq_2xx": 4, H + "downstream_rq_5xx": 0,
                   C + "upstream_rq_2xx": 4, C + "upstream_rq_5xx": 0, C + "upstream_rq_total": 6,
                   C + "upstream_rq_retry": 2})
        self.assertIn("the backend saw POST c 2 times: ['reset', 'served']", problems)

    def test_get_retried_after_a_fresh_connection_failed(self):
        problems = self.check(events={"b": [("reset", "GET", 1, 1, "proxied"),
                                            ("served", "GET", 2, 1, "proxied")]},
                              moved={C + "upstream_rq_retry": 0})
        self.assertTrue(any(p.startswith("GET b reached the backend 2 times") for p in problems),
                        problems)

    def test_served_twice(self):
        problems = self.check(events={"a": [("served", "GET", 1, 1, "proxied"),
                                            ("served", "GET", 1, 2, "proxied")]},
                              moved={C + "upstream_rq_total": 6, C + "upstream_rq_2xx": 4})
        self.assertIn("the backend answered GET a 2 times", problems)

    def test_bypass(self):
        problems = self.check(events={"a": [("served", "GET", 1, 1, "direct")]})
        self.assertEqual(problems, ["GET a reached the backend around the proxy"])

    def test_never_reached_backend(self):
        problems = self.check(events={"a": []}, moved={C + "upstream_rq_total": 4})
        self.assertEqual(problems, ["GET a was answered 200 (ok) but never reached the backend"])

    def test_unknown_id(self):
        problems = self.check(events={"z": [("served", "GET", 1, 3, "proxied")]},
                              moved={C + "upstream_rq_total": 6})
        self.assertEqual(problems, ["the backend saw z, which the client never sent"])

    def test_counter_off(self):
        for name in sorted(MOVED):
            problems = self.check(moved={name: MOVED[name] + 1})
            self.assertEqual(len(problems), 1, (name, problems))
            self.assertIn(name, problems[0])

    def test_connections_counted(self):
        problems = self.check(accepts=2)
        self.assertEqual(problems, [
            "/stats %supstream_cx_total moved by 3; both ends counted 2" % (C,)])

    def test_left_active(self):
        moved = dict(MOVED, **{H + "downstream_cx_active": 1})
        self.assertEqual(books(OUTCOMES, EVENTS, moved, 3).problems,
                         ["/stats %sdownstream_cx_active is 1 after the load" % (H,)])


def testSuite():
    from twisted.trial import runner

    tests = runner.TestSuite()
    tests.addTests(BooksTests(n) for n in sorted(dir(BooksTests)) if n.startswith("test_"))
    tests.addTest(testbed.suite(AccountingTests))
    return tests
