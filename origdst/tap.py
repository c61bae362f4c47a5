"""
The twistd plugin's options and service: C{twistd -n origdst --port 4999}.

Wiring only: settings come from L{origdst.config}, behaviour from the modules
down the data path.
"""

import os
import signal

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.endpoints import serverFromString
from twisted.logger import ILogObserver, textFileLogObserver
from twisted.python import usage

from origdst import accesslog, admin, config, drain, eventloop, fdlimit, gcbound, histogram, sourceports, workers
from origdst import workerstats
from origdst.cluster import OriginalDstCluster
from origdst.listener import ListenerFactory
from origdst.logs import json_observer, logger, set_level, tagged, twistd_log_file
from origdst.stats import DRAINING, LIVE, Stats

log = logger("origdst.tap")


def _help(setting):
    if setting.kind == config.FLAG:
        return setting.help
    return f"{setting.help} [default: {setting.shown}]"


class Options(usage.Options):
    """
    Every setting of L{config.SETTINGS} as an option; C{--config FILE} reads
    the same settings from a file, and options given on the command line win.
    A list setting may be given more than once; together, its entries replace
    the config file's.
    """

    optParameters = [["config", "c", None, "Config file ([origdst] section, keys are option names)."]] + [
        [setting.name, None, None, _help(setting)] for setting in config.SETTINGS if setting.kind == config.VALUE
    ]
    optFlags = [[setting.name, None, _help(setting)] for setting in config.SETTINGS if setting.kind == config.FLAG]

    def __init__(self):
        usage.Options.__init__(self)
        self.argv = []
        for setting in config.SETTINGS:
            if setting.kind == config.LIST:
                self[setting.name] = None

    def parseOptions(self, options=None):
        # Kept as given, so that --workers can start copies of this process.
        self.argv = list(options or [])
        usage.Options.parseOptions(self, options)

    def postOptions(self):
        try:
            self.settings = self._settings()
        except config.ConfigError as e:
            raise usage.UsageError(str(e))

    def _settings(self):
        values = {}
        if self["config"] is not None:
            values.update(config.read_file(self["config"]))
        for setting in config.SETTINGS:
            given = self[setting.name]
            if setting.kind == config.FLAG:
                if given:
                    values[setting.name] = True
            elif given is not None:
                try:
                    values[setting.name] = setting.parse(given)
                except config.ConfigError as e:
                    raise config.ConfigError(f"--{e}")
        settings = config.build(values)
        for option in ("port", "admin"):
            description = getattr(settings, option)
            if option == "admin" and description == "none":
                continue
            try:
                serverFromString(None, description)
            except Exception as e:
                if description.lower().startswith("systemd:"):
                    e = f"{e} (no such socket was passed by systemd: start it through origdst.socket)"
                raise config.ConfigError(f"--{option}: invalid endpoint description {description!r}: {e}")
        try:
            config.check_admin(settings)
            config.check_ports(settings)
        except config.ConfigError as e:
            raise config.ConfigError(f"--{e}")
        if settings.workers > 1:
            try:
                workers.parse_tcp(settings.port)
            except workers.UnsupportedEndpoint:
                raise config.ConfigError(
                    f"--workers: {settings.workers} workers need a tcp: or tcp6: "
                    f"--port (with at most interface= and backlog=), not {settings.port!r}"
                )
        return settings


def _list_option(setting):
    def add(self, value):
        given = self[setting.name]
        self[setting.name] = value if given is None else f"{given} {value}"

    add.__doc__ = _help(setting)
    return add


for _setting in config.SETTINGS:
    if _setting.kind == config.LIST:
        setattr(Options, "opt_" + _setting.attribute, _list_option(_setting))


def with_backlog(description, backlog=workers.BACKLOG):
    """
    A C{tcp:} or C{tcp6:} description without C{backlog=} gets one of
    C{backlog}: Twisted's default of 50 drops the SYNs of a burst of new
    connections (every client of a host at once), each then retried a second
    later, where Envoy listens with the system's C{somaxconn}.
    """
    kind = description.split(":", 1)[0].lower()
    if kind in ("tcp", "tcp6") and "backlog=" not in description.lower():
        return f"{description}:backlog={backlog}"
    return description


class ListenerService(Service):
    """
    Listens in the privileged start phase, so twistd's --uid can drop root
    after binding a low port, and stops twistd with a plain message when the
    port cannot be had.

    Twisted's L{StreamServerEndpointService} only logs a failure to listen
    (unless told otherwise through a private attribute); the proxy must not
    run on without its port.
    """

    name = "origdst"

    def __init__(self, description, factory, reactor, endpoint=None):
        """
        @param description: the endpoint description, for messages; also the
            endpoint, parsed with L{serverFromString}, unless C{endpoint} is
            given.
        @param endpoint: the L{IStreamServerEndpoint} to listen on, such as a
            L{workers.ReusePortEndpoint}.
        """
        self.description = description
        self.factory = factory
        self.reactor = reactor
        self.endpoint = endpoint
        self.port = None

    def privilegedStartService(self):
        Service.privilegedStartService(self)
        endpoint = self.endpoint
        if endpoint is None:
            endpoint = serverFromString(self.reactor, with_backlog(self.description))
        outcome = []
        endpoint.listen(self.factory).addBoth(outcome.append)
        if not outcome or not hasattr(outcome[0], "getHost"):
            reason = outcome[0].getErrorMessage() if outcome else "no answer"
            raise SystemExit(f"{self.name}: cannot listen on {self.description}: {reason}")
        self.port = outcome[0]
        fdlimit.guard(self.reactor, self.port)
        log.info("{name} listening on {port}", name=self.name, port=self.description)

    def stopService(self):
        Service.stopService(self)
        return self.stop_listening()

    def stop_listening(self):
        """
        Close the port (new connections are refused); connections already
        accepted stay open. A drain calls this before the service stops.
        """
        if self.port is not None:
            port, self.port = self.port, None
            log.info("{name} stopped listening on {port}.", name=self.name, port=self.description)
            return port.stopListening()
        return None


class AdminService(ListenerService):
    """
    The admin endpoint's port.
    """

    name = "origdst admin"


class ProxyService(MultiService):
    """
    The whole proxy: it keeps the state C{/ready} reports, and hands twistd
    the JSON log observer (twistd takes it from the application this service
    is put in).
    """

    #: The L{origdst.drain.Drain} to run before stopping, if any.
    drain = None

    def __init__(self, stats, log_observer=None):
        MultiService.__init__(self)
        self.stats = stats
        self.log_observer = log_observer

    def setServiceParent(self, parent):
        MultiService.setServiceParent(self, parent)
        if self.log_observer is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.log_observer)

    def startService(self):
        # The ports were bound in the privileged start, before this.
        MultiService.startService(self)
        self.stats.state = LIVE

    def stopService(self):
        self.stats.state = DRAINING
        if self.drain is None:
            return MultiService.stopService(self)
        # twistd's shutdown waits for this; the admin port answers /ready
        # with DRAINING until the drain is over, then the children stop.
        _keep_draining_on_signals(self.drain.reactor)
        draining = self.drain.start()
        draining.addCallback(lambda _: _exit_zero(self.drain.reactor))
        return draining.addCallback(lambda _: MultiService.stopService(self))


def _keep_draining_on_signals(reactor):
    """
    A signal that started a shutdown (twistd's handler records it) is the
    first; another SIGTERM or SIGINT during the drain, such as the one
    systemd sends every worker besides the main process's, is logged, not
    a traceback from stopping a reactor that is already stopping.
    """
    if getattr(reactor, "_exitSignal", None) is None:
        return

    def again(number, frame):
        reactor.callFromThread(
            log.info, "Received signal {number} while draining; the drain goes on (SIGKILL ends it).", number=number
        )

    signal.signal(signal.SIGTERM, again)
    signal.signal(signal.SIGINT, again)


def _exit_zero(reactor):
    """
    After a drain, exit with status 0, as Envoy does: twistd would otherwise
    end by the signal that stopped it (a SIGTERM'd service looks failed).
    """
    if getattr(reactor, "_exitSignal", None) is not None:
        reactor._exitSignal = None


def makeService(options, reactor=None):
    """
    @param options: parsed L{Options}.
    @param reactor: the reactor to use; the global one by default.
    """
    if reactor is None:
        from twisted.internet import reactor
    settings = options.settings
    set_level(settings.log_level)
    eventloop.tune(reactor)
    gcbound.install()
    observer = None
    worker = os.environ.get(workers.WORKER)
    if settings.log_format == "json" or settings.workers > 1:
        out = twistd_log_file(getattr(options, "parent", None))
        if out is not None:
            observer = json_observer(out) if settings.log_format == "json" else textFileLogObserver(out)
            if settings.workers > 1:
                observer = tagged(observer, int(worker or 0))
    top = ProxyService(Stats(reactor.seconds()), observer)
    fdlimit.raise_limit()
    if settings.upstream_source_ports:
        sourceports.check_range(*settings.upstream_source_ports)
    cluster = OriginalDstCluster(settings, reactor, top.stats)
    cluster.setServiceParent(top)
    flusher = TimerService(histogram.FLUSH_INTERVAL, top.stats.flush)
    flusher.clock = reactor
    flusher.setServiceParent(top)
    access_log = accesslog.from_settings(settings)
    if access_log is not None:
        accesslog.AccessLogService(access_log, reactor).setServiceParent(top)
    if worker and os.environ.get(workers.STATS_FD):
        workerstats.serve(reactor, top.stats, cluster, int(worker), int(os.environ[workers.STATS_FD]))
    factory = ListenerFactory(cluster, settings, reactor, access_log=access_log)
    endpoint = None
    if settings.workers > 1:
        endpoint = workers.ReusePortEndpoint.from_description(reactor, settings.port)
    listener = ListenerService(settings.port, factory, reactor, endpoint)
    pool = None
    if settings.workers > 1 and not worker:
        argv = workers.worker_argv(getattr(options, "parent", None), options.argv)
        pool = workers.WorkerPool(reactor, settings.workers, argv, top.stats)
        pool.setServiceParent(top)
    top.drain = drain.Drain(reactor, top.stats, settings.drain_timeout, [listener], factory.connections, pool)
    if settings.admin != "none" and not worker:
        state = admin.Admin(
            settings,
            cluster,
            reactor,
            listening=lambda: listener.port.getHost() if listener.port is not None else None,
            config_path=options["config"],
            drain=top.drain.start,
            workers=pool,
        )
        AdminService(admin.listen_description(settings.admin), admin.site(state), reactor).setServiceParent(top)
    listener.setServiceParent(top)
    return top
