"""
Accounting under faults (issue 12, item 3): a bounded load through the proxy in the test
namespaces, with the ledger backend (L{testbed.ledger}) resetting some connections before the
headers, closing some at the moment of reuse and cutting some bodies short, counted per request
id at the client, at the backend and in the proxy's C{/stats}.  L{testbed.accounting} holds the
load and the rules the books must obey; C{make soak} runs the same for minutes.

C{ORIGDST_ACCOUNTING_REQUESTS} sets the size of the load (default L{REQUESTS}).
"""

import os

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


def testSuite():
    return testbed.suite(AccountingTests)
