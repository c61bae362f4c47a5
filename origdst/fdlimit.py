"""
File descriptors: the limit raised at start, and running out of them handled quietly.

Every client and upstream connection holds a descriptor, and distributions start services with a
soft limit (often 1024) far below the hard one; the soft limit is raised to the hard limit at
start, as far as the process may.

When the limit is reached anyway, Twisted's listening port already fails new connections
cleanly: on C{EMFILE} it closes a descriptor it keeps in reserve, accepts every waiting
connection and closes it at once (the client sees its connection closed), then takes the
reserve back.  But it logs three lines per event and one per connection closed (the issue saw
424 lines in 6 s for 400 connections), and on C{ENFILE}, C{ENOBUFS} or C{ENOMEM} (or C{EMFILE}
with no reserve) it leaves the connection in the backlog, so a level-triggered poller calls it
again at once: a busy loop.  L{AcceptErrors} takes those events: one warning at most every
second with the count of connections refused since the last, and a short pause of accepting
after an error that left the connection waiting.
"""

import errno

from twisted.internet.error import ConnectBindError
from twisted.logger import Logger, globalLogPublisher

from origdst.logs import logger

log = logger("origdst.fdlimit")

try:
    import resource
except ImportError:  # not POSIX
    resource = None

#: Twisted's accept messages (twisted.internet.tcp._accept), by what each means.
_REFUSED = "EMFILE recovery: Closed socket from {address}"
_LEFT_WAITING = "Could not accept new connection ({acceptError})"
_QUIET = (
    "EMFILE encountered; releasing reserved file descriptor.",
    "Re-reserving EMFILE recovery file descriptor.",
)


def raise_limit(resource=resource):
    """
    Raise the soft limit on open files to the hard limit, and log the outcome.

    @return: the soft and hard limit afterwards, or L{None} where there are none.
    """
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        log.info("File descriptor limit: {soft}.", soft=soft)
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as e:
        log.warn("File descriptor limit left at {soft} (hard limit {hard}): {error}.",
                 soft=soft, hard=hard, error=e)
        return soft, hard
    log.info("File descriptor limit raised from {soft} to {hard}.", soft=soft, hard=hard)
    return hard, hard


class AcceptErrors:
    """
    A log observer for a listening port's own logger: accept errors become one warning a
    second at most; everything else passes to C{observer}.

    @ivar refused: connections refused (or left waiting) since the last warning.
    """

    INTERVAL = 1.0
    PAUSE = 0.1

    def __init__(self, reactor, port, observer=globalLogPublisher):
        self.reactor = reactor
        self.port = port
        self.observer = observer
        self.refused = 0
        self.total = 0
        self._last = None
        self._flush = None
        self._paused = False

    def __call__(self, event):
        fmt = event.get("log_format")
        if fmt in _QUIET:
            return
        if fmt == _REFUSED:
            self._count()
        elif fmt == _LEFT_WAITING:
            self._count()
            self._pause()
        else:
            self.observer(event)

    def _count(self):
        self.refused += 1
        self.total += 1
        now = self.reactor.seconds()
        if self._last is None or now - self._last >= self.INTERVAL:
            self.report()
        elif self._flush is None:
            self._flush = self.reactor.callLater(self._last + self.INTERVAL - now, self.report)

    def report(self):
        """
        Log the connections refused since the last report, if any.
        """
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush = None
        if not self.refused:
            return
        self._last = self.reactor.seconds()
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0] if resource else "?"
        log.warn(
            "Out of file descriptors (limit {limit}): {count} new connection(s) refused "
            "since the last report, {total} in all.",
            limit=limit, count=self.refused, total=self.total,
        )
        self.refused = 0

    def _pause(self):
        # The connection is still in the backlog, so the port is readable at once again:
        # stop reading it for a moment instead of spinning.
        if self._paused or not hasattr(self.port, "stopReading"):
            return
        self._paused = True
        self.port.stopReading()

        def resume():
            self._paused = False
            if getattr(self.port, "connected", True):
                self.port.startReading()

        self.reactor.callLater(self.PAUSE, resume)


# The guards of this process's listening ports (see guard).
_guards = []


def guard(reactor, port):
    """
    Route the accept errors of a listening Twisted port through L{AcceptErrors}.  (Twisted's
    C{tcp.Port} logs them through its C{_logger}, the one hook it offers.)
    """
    if hasattr(port, "_logger"):
        errors = AcceptErrors(reactor, port)
        _guards.append(errors)
        port._logger = Logger(namespace=port._logger.namespace, observer=errors)


def count_refused(reason):
    """
    Count a client connection closed because its upstream connection found no
    descriptor (a relayed connection dials at once) in the listening port's
    report, instead of a line of its own per connection.

    @param reason: the upstream connection's failure.
    @return: whether it was counted: a descriptor shortage, with a guarded port.
    """
    if not _guards or not reason.check(ConnectBindError):
        return False
    if reason.value.osError not in (errno.EMFILE, errno.ENFILE):
        return False
    _guards[-1]._count()
    return True
