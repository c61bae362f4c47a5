"""
What the admin endpoints read: the settings, the cluster and its counters,
and with C{--workers} the sum over every worker (L{origdst.workerstats}).
"""

import dataclasses
import re

from twisted.internet import defer

from origdst import addresses, adminguard, clusterstatus, config, stats, workerstats
from origdst.adminguard import AdminGuard


class Admin:
    """
    What the endpoints read.

    @ivar settings: the effective L{config.Settings}.
    @ivar cluster: the L{origdst.cluster.OriginalDstCluster}.
    @ivar reactor: for the time (uptime, last used).
    @ivar listening: returns the proxy's listening address (an C{IAddress}),
        or C{None} while it is not listening.
    @ivar config_path: the config file read, if any.
    @ivar root: the site's root resource, for the list of endpoints.
    """

    def __init__(self, settings, cluster, reactor, listening=lambda: None, config_path=None, drain=None, workers=None):
        """
        @param drain: starts the proxy's drain (L{origdst.drain.Drain.start}).
        @param workers: the L{origdst.workers.WorkerPool} whose figures are
            added to this process's, or C{None}.
        """
        self.drain = drain
        self.workers = workers
        self.settings = settings
        self.cluster = cluster
        self.stats = cluster.stats
        self.reactor = reactor
        self.listening = listening
        self.config_path = config_path
        self.root = None
        self.guard = AdminGuard(settings.admin_host, reactor)

    def figures(self):
        """
        @return: a L{defer.Deferred} firing with the L{workerstats.Figures}
            to show: this process's, or the sum over every worker.
        """
        if self.workers is None:
            return defer.succeed(workerstats.own(self.stats, self.cluster))
        return self.workers.gather().addCallback(lambda got: workerstats.merge(self.stats, self.cluster, *got))

    def collect(self, figures):
        """
        @return: every stat of L{figures}, as L{stats.Stat}s.
        """
        address = self.listening()
        listener = None
        if address is not None:
            if hasattr(address, "port"):
                listener = addresses.stat_name(address.host, address.port)
            else:
                listener = re.sub(r"[^\w.\-\[\]]", "_", str(getattr(address, "name", address)))
        return stats.collect(figures.stats, self.reactor.seconds(), self.settings.cluster_name, figures.gauges, listener)

    def settings_by_option(self):
        """
        @return: the effective settings by option name, as JSON values, with
            secrets redacted (L{adminguard.redact}).
        """
        values = dataclasses.asdict(self.settings)
        return adminguard.redact({option: values[config.attribute(option)] for option in config.OPTIONS})

    def hosts(self):
        """
        @return: C{(host, counters, gauges)} for each current host (see
            L{clusterstatus.hosts}).
        """
        return clusterstatus.hosts(self.cluster)
