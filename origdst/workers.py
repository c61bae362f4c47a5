"""
Several proxy processes on one port (C{--workers N}).

One CPython process uses one core. With N workers, the twistd process starts
N-1 more copies of itself; each listens on the proxy's port through a
L{ReusePortEndpoint}, and the kernel spreads new connections across them. They
share nothing: a redirect loop is still recognised by the worker whose own
upstream connection comes back to it (each hop that reaches another worker is
forwarded once more, from that worker), and with C{--via} by the name, which
they share as they share every setting.

The main process is worker 0. Its admin shows the sum over all of them: it
asks each worker for its figures over a pipe when a page is requested
(L{origdst.workerstats}). A worker that dies is started again after a delay
that doubles while it keeps dying soon after starting (a crash loop does not
spin), and each restart is counted (C{server.worker_restarts}) and logged.
"""

import os
import signal
import socket
import sys

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import ProcessProtocol
from zope.interface import implementer

from origdst import workerstats
from origdst.logs import logger

log = logger("origdst.workers")

# Set in a worker's environment: its number (1..N-1).
WORKER = "ORIGDST_WORKER"

# Set in a worker's environment: the descriptor it answers stats requests on.
STATS_FD = "ORIGDST_STATS_FD"

# The listen backlog of the proxy's port when its description sets none
# (also for a single process: L{origdst.tap.with_backlog}).
BACKLOG = 1024

TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"


class UnsupportedEndpoint(ValueError):
    """
    C{--workers} needs a plain C{tcp:} or C{tcp6:} endpoint description.
    """


def parse_tcp(description):
    """
    @return: C{(family, interface, port)} of a C{tcp:} / C{tcp6:} endpoint
        description.
    @raise UnsupportedEndpoint: for any other kind, or other parameters.
    """
    parts, part, escaped = [], "", False
    for c in description:
        if escaped:
            part, escaped = part + c, False
        elif c == "\\":
            escaped = True
        elif c == ":":
            parts.append(part)
            part = ""
        else:
            part += c
    parts.append(part)
    kind, args = parts[0].lower(), parts[1:]
    if kind not in ("tcp", "tcp6") or not args or not args[0].isdigit():
        raise UnsupportedEndpoint(description)
    family = socket.AF_INET6 if kind == "tcp6" else socket.AF_INET
    interface = "::" if kind == "tcp6" else "0.0.0.0"
    for arg in args[1:]:
        name, _, value = arg.partition("=")
        if name == "interface":
            interface = value
        elif name != "backlog":
            raise UnsupportedEndpoint(description)
    return family, interface, int(args[0])


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """
    A TCP server endpoint whose socket has C{SO_REUSEPORT}, so that every
    worker can bind the same port and the kernel spreads new connections
    over them.

    Twisted's TCP endpoints set C{SO_REUSEADDR} only (before 26.10, which
    origdst does not require), so this one binds a socket of its own and
    hands it to the reactor (L{IReactorSocket.adoptStreamPort}). A
    C{tcp6:} one accepts IPv4 too, as Twisted's does.
    """

    def __init__(self, reactor, family, interface, port, backlog=BACKLOG):
        self.reactor = reactor
        self.family = family
        self.interface = interface
        self.port = port
        self.backlog = backlog

    @classmethod
    def from_description(cls, reactor, description):
        """
        @param description: a C{tcp:} or C{tcp6:} endpoint description.
        @raise UnsupportedEndpoint: for any other (see L{parse_tcp}).
        """
        return cls(reactor, *parse_tcp(description))

    def listen(self, factory):
        """
        @return: a L{Deferred} firing with the listening port, or failing
            with L{CannotListenError} when the address cannot be bound.
        """
        return defer.execute(self._listen, factory)

    def _listen(self, factory):
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if self.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            try:
                sock.bind((self.interface, self.port))
                sock.listen(self.backlog)
            except OSError as e:
                raise CannotListenError(self.interface, self.port, e)
            sock.setblocking(False)
            return self.reactor.adoptStreamPort(sock.fileno(), self.family, factory)
        finally:
            # The reactor's port holds a duplicate of the descriptor.
            sock.close()


def worker_argv(twistd_options, worker_options):
    """
    The command line of a worker: the same origdst options, in the
    foreground, without a pid file, logging where the parent logs.

    @param twistd_options: the parent's twistd options (may be C{None}).
    @param worker_options: the origdst options as given on the command line.
    """
    logfile = (twistd_options or {}).get("logfile") or "-"
    return [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "--logfile=" + logfile, "origdst"] + list(
        worker_options
    )


class Worker(ProcessProtocol):
    """
    One worker process, seen from the main one: its end, and the answers to
    stats requests on its descriptor L{workerstats.ANSWER_FD}.
    """

    def __init__(self, pool, number):
        self.pool = pool
        self.number = number
        self.asker = workerstats.Asker(self._write)

    def _write(self, data):
        self.transport.writeToChild(0, data)

    def childDataReceived(self, fd, data):
        if fd == workerstats.ANSWER_FD:
            self.asker.received(data)

    def processEnded(self, reason):
        self.asker.lost()
        self.pool.ended(self, reason)


class WorkerPool(Service):
    """
    Starts the other workers, restarts one that dies, stops them all with
    the proxy, and gathers their figures for the admin.

    @ivar delays: the next restart delay of each worker that died soon after
        starting.
    """

    #: The first restart delay; it doubles, up to L{MAX_RESTART_DELAY}, for
    #: each death within L{STABLE} seconds of the worker's start.
    RESTART_DELAY = 1.0
    MAX_RESTART_DELAY = 30.0
    STABLE = 30.0

    def __init__(self, reactor, count, argv, stats=None):
        """
        @param stats: the main process's L{origdst.stats.Stats}, which counts
            the restarts.
        """
        self.reactor = reactor
        self.count = count
        self.argv = argv
        self.stats = stats
        self.processes = {}
        self.protocols = {}
        self.started = {}
        self.delays = {}

    def startService(self):
        Service.startService(self)
        for number in range(1, self.count):
            self.spawn(number)

    def spawn(self, number):
        if not self.running:
            return
        env = dict(os.environ)
        env[WORKER] = str(number)
        env[STATS_FD] = str(workerstats.ANSWER_FD)
        protocol = Worker(self, number)
        fds = {0: "w", 1: 1, 2: 2, workerstats.ANSWER_FD: "r"}
        self.processes[number] = process = self.reactor.spawnProcess(
            protocol, self.argv[0], self.argv, env=env, childFDs=fds
        )
        self.protocols[number] = protocol
        self.started[number] = self.reactor.seconds()
        log.info("Started worker {number} (pid {pid}).", number=number, pid=process.pid)

    def ended(self, worker, reason):
        self.processes.pop(worker.number, None)
        self.protocols.pop(worker.number, None)
        self._check_stopped()
        if self.running and not self.draining:
            number = worker.number
            lived = self.reactor.seconds() - self.started.get(number, 0)
            delay = self.RESTART_DELAY
            if lived < self.STABLE:
                delay = self.delays.get(number, delay)
            self.delays[number] = min(delay * 2, self.MAX_RESTART_DELAY)
            restarts = None
            if self.stats is not None:
                self.stats.worker_restarts += 1
                restarts = self.stats.worker_restarts
            log.warn(
                "Worker {number} ended ({reason}) after {lived:.1f} s; restarting it in {delay:g} s"
                " (worker restarts: {restarts}).",
                number=number,
                reason=reason.getErrorMessage(),
                lived=lived,
                delay=delay,
                restarts=restarts,
            )
            self.reactor.callLater(delay, self.spawn, number)

    def gather(self, timeout=workerstats.ANSWER_TIMEOUT):
        """
        Ask every running worker for its figures.

        @return: a L{defer.Deferred} firing with C{(answers, missing)} (see
            L{workerstats.gather}).
        """
        askers = {number: protocol.asker for number, protocol in self.protocols.items()}
        return workerstats.gather(self.reactor, askers, range(1, self.count), timeout)

    draining = False

    # How long after its drain timeout a worker is waited for.
    DRAIN_GRACE = 5.0

    def drain(self, timeout):
        """
        Drain every worker: each gets SIGTERM and drains as this process does
        (L{origdst.drain}); none is restarted any more.

        @param timeout: the workers' drain timeout, in seconds.
        @return: a L{Deferred} firing when they have all ended, or at most
            C{timeout} plus L{DRAIN_GRACE} seconds later.
        """
        self.draining = True
        return self._terminate(timeout + self.DRAIN_GRACE)

    def stopService(self):
        """
        Stop the workers and wait (at most 10 s) for them to end.
        """
        Service.stopService(self)
        return self._terminate(10)

    def _terminate(self, wait):
        for process in list(self.processes.values()):
            try:
                process.signalProcess(signal.SIGTERM)
            except Exception:
                pass
        if not self.processes:
            return defer.succeed(None)
        done = getattr(self, "_stopped", None)
        if done is None or done.called:
            done = self._stopped = defer.Deferred()
            self.reactor.callLater(wait, lambda: done.called or done.callback(None))
        result = defer.Deferred()
        done.addBoth(lambda value: result.callback(None))
        return result

    def _check_stopped(self):
        done = getattr(self, "_stopped", None)
        if done is not None and not self.processes and not done.called:
            done.callback(None)
