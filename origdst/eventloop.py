"""
A leaner dispatch of reactor events.

Twisted's epoll reactor wraps every ready socket's read or write in
C{log.callWithLogger}, which builds a logging context (a few dict copies and
calls) per event: about a seventh of the proxy's CPU per request. origdst
logs through its own loggers and does not need that context, so the reactor
it runs on gets a poll loop that dispatches directly and logs any error the
way Twisted would.

The loop uses three private attributes of Twisted's C{EPollReactor}
(L{REACTOR_ATTRIBUTES}). A Twisted release without them leaves the reactor
as it is, with a warning, and fails C{tests/test_eventloop.py}.
"""

import errno
import sys

from twisted.logger import Logger
from twisted.python import log

_log = Logger()

#: The private attributes of Twisted's epoll reactor that the lean loop uses.
REACTOR_ATTRIBUTES = ("_poller", "_selectables", "_doReadOrWrite")

#: Whether the lean loop is used, per runtime (C{sys.implementation.name}).
LEAN_DISPATCH = {"cpython": True, "pypy": True}


def missing_attributes(reactor):
    """
    @return: the names in L{REACTOR_ATTRIBUTES} that C{reactor} lacks.
    """
    return [name for name in REACTOR_ATTRIBUTES if getattr(reactor, name, None) is None]


def tune(reactor, runtime=None):
    """
    Give an epoll reactor the lean poll loop (where L{LEAN_DISPATCH} says so
    for this runtime); leave any other reactor as it is.

    @param runtime: the runtime's name; C{sys.implementation.name} by default.
    @return: whether the reactor got the lean loop.
    """
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:
        return False
    if not isinstance(reactor, EPollReactor):
        return False
    if runtime is None:
        runtime = sys.implementation.name
    if not LEAN_DISPATCH.get(runtime, False):
        return False
    missing = missing_attributes(reactor)
    if missing:
        _log.warn(
            "This Twisted's epoll reactor has no {missing}: using its own poll loop "
            "(slower; origdst.eventloop needs updating).", missing=", ".join(missing))
        return False
    poller = reactor._poller
    selectables = reactor._selectables
    dispatch = reactor._doReadOrWrite

    def doPoll(timeout):
        if timeout is None:
            timeout = -1
        try:
            events = poller.poll(timeout, len(selectables))
        except OSError as e:
            if e.errno == errno.EINTR:
                return
            raise
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:
                try:
                    dispatch(selectable, fd, event)
                except KeyboardInterrupt:
                    raise
                except BaseException:
                    log.err(None, "Unhandled error dispatching an event to %r" % (selectable,))

    doPoll.lean = True
    reactor.doPoll = reactor.doIteration = doPoll
    return True
