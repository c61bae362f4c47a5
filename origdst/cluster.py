"""
The original-destination cluster: one host per destination seen.

As in Envoy's ORIGINAL_DST cluster, a host is created on the first request to
its C{ip:port} and removed by a mark-and-sweep every cleanup interval: a host
used since the previous sweep, or still carrying a request, is kept and
unmarked; any other is removed and its idle connections closed.
"""

from twisted.application.service import Service
from twisted.internet.task import LoopingCall

from origdst.logs import logger
from origdst.origination import Origination
from origdst.pool import Pool
from origdst.sourceports import SourcePorts
from origdst.addresses import host_port
from origdst.stats import Stats

log = logger("origdst.cluster")


class Host:
    """
    One original destination and its connection pool.

    @ivar used: a request chose this host since the last sweep.
    @ivar last_used: when a request last chose it, in the reactor's seconds.
    @ivar relays: TCP relays (L{origdst.tcp}) open to it.
    @ivar tls_name: the name its TLS connections are verified for
        (L{origdst.origination}), or C{None} for plain ones.
    """

    __slots__ = ("key", "ip", "port", "pool", "used", "last_used", "relays", "tls_name")

    def __init__(self, key, ip, port, pool, tls_name=None):
        self.key = key
        self.ip = ip
        self.port = port
        self.pool = pool
        self.used = False
        self.last_used = None
        self.relays = 0
        self.tls_name = tls_name


class OriginalDstCluster(Service):
    """
    The hosts of this proxy, keyed by C{(ip, port)}, or C{(ip, port, name)}
    for originated TLS (one pool per verified name), and their cleanup sweep.

    @ivar stats: the process's L{Stats}, counted into all along the data path.
    """

    def __init__(self, settings, reactor, stats=None):
        self.settings = settings
        self.reactor = reactor
        self.stats = Stats(reactor.seconds()) if stats is None else stats
        self.hosts = {}
        self.own_addresses = set()
        ports = settings.upstream_source_ports
        self.source_ports = SourcePorts(*ports) if ports else None
        self.origination = Origination(settings, reactor)
        self._sweeper = None

    def host(self, ip, port, tls_name=None):
        """
        @param tls_name: the name to originate TLS for, or C{None}.
        @return: the L{Host} for a destination, created on first use and
            marked as used.
        """
        address = (ip, port) if tls_name is None else (ip, port, tls_name)
        host = self.hosts.get(address)
        if host is None:
            key = host_port(ip, port)
            pool = Pool(
                key, ip, port, self.settings, self.reactor, self.own_addresses, self.stats,
                self.source_ports,
            )
            if tls_name is not None:
                self.origination.originate(pool, tls_name)
            host = self.hosts[address] = Host(key, ip, port, pool, tls_name)
            self.stats.membership_change += 1
            log.debug("Created host {key}{tls}.", key=key,
                      tls="" if tls_name is None else " (TLS for %s)" % tls_name)
        host.used = True
        host.last_used = self.reactor.seconds()
        return host

    def is_own_upstream(self, peer, destination):
        """
        Whether C{peer} and C{destination} (each C{(ip, port)}) are the local
        and remote ends of one of this proxy's upstream connections: a
        redirected connection between them is a loop.
        """
        return (peer, destination) in self.own_addresses

    def sweep(self):
        """
        Remove the hosts nobody used since the previous sweep.
        """
        log.debug("Cleaning up stale original dst hosts.")
        removed = False
        for address, host in list(self.hosts.items()):
            if host.used or host.relays or host.pool.in_use():
                log.debug("Keeping active host {key}.", key=host.key)
                host.used = False
            else:
                log.debug("Removing stale host {key}.", key=host.key)
                del self.hosts[address]
                host.pool.close()
                removed = True
        if removed:
            # One membership update per sweep, as Envoy removes a batch.
            self.stats.membership_change += 1

    def gauges(self):
        """
        The cluster's gauges, by Envoy's leaf names, computed now from the
        pools rather than kept up to date on every request.
        """
        pools = [host.pool for host in self.hosts.values()]
        return {
            "upstream_cx_active": sum(pool.cx_active() for pool in pools),
            "upstream_rq_active": sum(pool.rq_active() for pool in pools),
            "upstream_rq_pending_active": sum(len(pool.pending) for pool in pools),
            "membership_total": len(pools),
            # No health checking: every host is healthy.
            "membership_healthy": len(pools),
        }

    def _sweep(self):
        # A sweep that fails is logged, and the next one still comes: a
        # stopped sweep would keep every host ever seen.
        try:
            self.sweep()
        except Exception:
            log.failure("Cleanup sweep failed.")

    def startService(self):
        # Not a TimerService: that calls at once when started, and Envoy's
        # first sweep, like this one, comes one interval after start.
        Service.startService(self)
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = self.reactor
        self._sweeper.start(self.settings.cleanup_interval, now=False)

    def stopService(self):
        Service.stopService(self)
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        for host in self.hosts.values():
            host.pool.close()
