"""
The network-namespace test bed that the end-to-end tests, the benchmark and the demo share.

Two throwaway namespaces joined by a veth pair, built like Envoy's original-destination
tutorial (L{testbed.topology}); pid-unique names and the sweep of leftovers
(L{testbed.names}); bounded commands and process groups (L{testbed.process}); trial test
cases sharing one topology per class (L{testbed.trial}).  The bed's own client and backend,
C{netclient.py} and C{backend.py}, run inside the namespaces as scripts.

Importing this package changes nothing and needs only the standard library (the trial
names load on first use); building a L{Topology} needs root and the tools in
L{REQUIRED_TOOLS} (L{unavailable_reason} says what is missing).
"""

from testbed.names import (
    CLIENT_UID,
    CLIENT_V4,
    CLIENT_V6,
    PREFIX,
    SERVER_V4,
    SERVER_V6,
    UNASSIGNED_V4,
    list_namespaces,
    our_namespaces,
    remove_stale_namespaces,
)
from testbed.process import (
    REQUIRED_TOOLS,
    TWISTD,
    ManagedProcess,
    descendants,
    TopologyError,
    unavailable_reason,
    wait_for,
)
from testbed.topology import BACKEND_SCRIPT, CLIENT_SCRIPT, REPO_ROOT, Topology

__all__ = [
    "BACKEND_SCRIPT", "CLIENT_SCRIPT", "CLIENT_UID", "CLIENT_V4", "CLIENT_V6", "PREFIX",
    "REPO_ROOT", "REQUIRED_TOOLS", "SERVER_V4", "SERVER_V6", "TWISTD", "UNASSIGNED_V4",
    "ManagedProcess", "Topology", "TopologyError", "TopologyTestCase", "descendants",
    "list_namespaces",
    "our_namespaces", "remove_stale_namespaces", "suite", "unavailable_reason", "wait_for",
]


def __getattr__(name):
    """
    L{TopologyTestCase} and L{suite} come from L{testbed.trial}, imported only when asked for:
    the benchmark and the demo need no trial.
    """
    if name in ("TopologyTestCase", "suite"):
        from testbed import trial

        return getattr(trial, name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
