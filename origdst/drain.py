"""
Graceful drain: stop taking connections, let the ones open finish.

On SIGTERM (twistd's shutdown) or C{POST /drain_listeners}, the proxy stops
listening, so new connections are refused and go to another instance; it
answers C{/ready} with C{503 DRAINING}, so a load balancer or the kubelet
stops sending; it closes idle client connections at once and answers the
request under way on each other one with C{connection: close}; and what is
still open after C{--drain-timeout} is closed, with one log line saying how
many. Only then does twistd's shutdown go on, so a restart drops no request
that was already being answered.
"""

from twisted.internet import defer

from origdst.logs import logger
from origdst.stats import DRAINING

log = logger("origdst.drain")


class Connections(set):
    """
    The open client connections of one listener (each removes itself when
    it ends); tells a drain when the last one has gone.

    @ivar on_empty: called, without arguments, when the set becomes empty by
        a L{discard}; C{None} while no drain waits.
    """

    on_empty = None

    def discard(self, channel):
        set.discard(self, channel)
        if not self and self.on_empty is not None:
            self.on_empty()


class Drain:
    """
    One drain of the whole proxy; started at most once, by whichever comes
    first (L{start} may be called again and waits for the same end).

    @ivar listeners: objects with C{stop_listening()} (returning a
        L{Deferred} or C{None}), the ports to close.
    @ivar connections: the L{Connections} to drain.
    @ivar workers: an object with C{drain(timeout)} returning a L{Deferred}
        that fires when the other worker processes have ended, or C{None}.
    @ivar started: when the drain began (the reactor's time), or C{None}.
    """

    def __init__(self, reactor, stats, timeout, listeners, connections, workers=None):
        """
        @param timeout: seconds open connections may take to finish.
        """
        self.reactor = reactor
        self.stats = stats
        self.timeout = timeout
        self.listeners = list(listeners)
        self.connections = connections
        self.workers = workers
        self.started = None
        self.finished = False
        self._waiting = []
        self._pending = []
        self._timer = None

    def start(self):
        """
        Begin draining (unless already begun).

        @return: a L{Deferred} firing with C{None} once every connection of
            this process has closed (or been closed at the timeout), every
            port has stopped listening, and the other workers have ended.
        """
        waiting = defer.Deferred()
        self._waiting.append(waiting)
        if self.started is None:
            self._begin()
        elif self.finished:
            self._fire()
        return waiting

    def _begin(self):
        self.started = self.reactor.seconds()
        self.stats.state = DRAINING
        for listener in self.listeners:
            self._pending.append(defer.maybeDeferred(listener.stop_listening))
        if self.workers is not None:
            self._pending.append(self.workers.drain(self.timeout))
        open_before = len(self.connections)
        for channel in list(self.connections):
            channel.drain()
        log.info(
            "Draining: stopped listening; {active} of {total} client connections "
            "still open, waiting up to {timeout:g} s for them.",
            active=len(self.connections),
            total=open_before,
            timeout=self.timeout,
        )
        if self.connections:
            self.connections.on_empty = self._all_closed
            self._timer = self.reactor.callLater(self.timeout, self._timed_out)
        else:
            self._all_closed()

    def _all_closed(self):
        if self._pending is None:
            return
        self.connections.on_empty = None
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
            log.info(
                "Drained: the last client connection closed after {seconds:.1f} s.",
                seconds=self.reactor.seconds() - self.started,
            )
        pending, self._pending = self._pending, None
        done = defer.DeferredList(pending, consumeErrors=True)
        done.addCallback(self._done)

    def _timed_out(self):
        self._timer = None
        left = list(self.connections)
        log.warn(
            "Drain timeout ({timeout:g} s): closing {count} client connections still open.",
            timeout=self.timeout,
            count=len(left),
        )
        for channel in left:
            channel.close()
            abort = getattr(channel.transport, "abortConnection", None)
            if abort is not None:
                abort()
        if not self.connections:
            # Otherwise the last one to close reports through discard.
            self._all_closed()

    def _done(self, _):
        self.finished = True
        self._fire()

    def _fire(self):
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)
