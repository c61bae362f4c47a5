"""
Accepting redirected connections.

Each accepted connection is asked where it was really going; one that was not
redirected, or that was addressed to the proxy itself, is answered locally and
never connected anywhere, so a wrong iptables rule cannot make the proxy dial
itself.
"""

import itertools

from twisted.internet.protocol import ServerFactory

from origdst.http import NO_HEALTHY_UPSTREAM, ProxyChannel, Refusal
from origdst.logs import debug_enabled, logger
from origdst.policy import Policy
from origdst.sockopt import NoOriginalDestination, host_key, original_destination, socket_ip

log = logger("origdst.listener")

NOT_REDIRECTED = Refusal(503, NO_HEALTHY_UPSTREAM)
LOOP = Refusal(508, b"redirect loop detected")
SOURCE_DENIED = Refusal(403, b"source not allowed to use this proxy")


class ListenerFactory(ServerFactory):
    """
    Builds a L{ProxyChannel} for each accepted connection.
    """

    noisy = False

    def __init__(
        self,
        cluster,
        settings,
        reactor,
        original_destination=original_destination,
        access_log=None,
        marker=None,
    ):
        """
        @param original_destination: reads C{(ip, port)} from an accepted
            socket; replaceable so tests can run without iptables.
        @param access_log: the L{origdst.accesslog.AccessLog}, or C{None}.
        @param marker: the loop marker shared by all workers, if any.
        """
        self.cluster = cluster
        self.settings = settings
        self.reactor = reactor
        self.original_destination = original_destination
        self.policy = Policy(settings, marker)
        self.access_log = access_log
        self._ids = itertools.count(1)

    def buildProtocol(self, addr):
        channel = ProxyChannel(
            self.cluster,
            self.settings,
            self.reactor,
            f"[C{next(self._ids)}]",
            self.resolve_for,
            self.policy,
        )
        if self.access_log is not None:
            channel.access_log = self.access_log
        return channel

    def resolve_for(self, channel):
        """
        @return: the destination of C{channel}'s connection, or why there is
            none, as L{ProxyChannel} expects from its C{resolve} argument.
        """
        transport = channel.transport
        if not self.policy.source_allowed(channel.peer[0]):
            log.info(
                "{tag} connection from {peer} refused: not in --allow-source.",
                tag=channel.tag,
                peer=host_key(*channel.peer),
            )
            return None, SOURCE_DENIED
        try:
            ip, port = self.original_destination(transport.getHandle())
        except NoOriginalDestination as e:
            self.cluster.stats.no_original_dst += 1
            log.warn(
                "{tag} connection from {peer} has no original destination ({error}): "
                "it was not redirected; is the iptables REDIRECT rule in place? "
                "Answering 503.",
                tag=channel.tag,
                peer=host_key(*channel.peer),
                error=e,
            )
            return None, NOT_REDIRECTED
        local = transport.getHost()
        if (ip, port) == (socket_ip(local.host), local.port):
            log.warn(
                "{tag} redirect loop: the connection from {peer} was addressed to "
                "origdst's own listening address {local}; only redirected traffic "
                "can be proxied. Answering 508.",
                tag=channel.tag,
                peer=host_key(*channel.peer),
                local=host_key(ip, port),
            )
            return None, LOOP
        if debug_enabled():
            log.debug(
                "{tag} new connection from {peer} to original destination {dest}.",
                tag=channel.tag,
                peer=host_key(*channel.peer),
                dest=host_key(ip, port),
            )
        return (ip, port), None
