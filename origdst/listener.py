"""
Accepting redirected connections.

Each accepted connection is asked where it was really going; one that was not
redirected, or that was addressed to the proxy itself, is answered locally and
never connected anywhere, so a wrong iptables rule cannot make the proxy dial
itself.
"""

import itertools

from twisted.internet.protocol import ServerFactory

from origdst import replies
from origdst.addresses import host_port, socket_ip
from origdst.admission import Admission
from origdst.downstream import ProxyChannel
from origdst.logs import debug_enabled, logger
from origdst.policy import Policy
from origdst.sockopt import NoOriginalDestination, original_destination

log = logger("origdst.listener")


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
    ):
        """
        @param original_destination: reads C{(ip, port)} from an accepted
            socket; replaceable so tests can run without iptables.
        @param access_log: the L{origdst.accesslog.AccessLog}, or C{None}.
        """
        self.cluster = cluster
        self.settings = settings
        self.reactor = reactor
        self.original_destination = original_destination
        self.policy = Policy(settings)
        self.admission = Admission(settings, self.policy)
        self.access_log = access_log
        self._ids = itertools.count(1)

    def buildProtocol(self, addr):
        channel = ProxyChannel(
            self.cluster,
            self.settings,
            self.reactor,
            f"[C{next(self._ids)}]",
            self.resolve_for,
            self.admission,
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
                peer=host_port(*channel.peer),
            )
            return None, replies.SOURCE_DENIED
        try:
            ip, port = self.original_destination(transport.getHandle())
        except NoOriginalDestination as e:
            self.cluster.stats.no_original_dst += 1
            log.warn(
                "{tag} connection from {peer} has no original destination ({error}): "
                "it was not redirected; is the iptables REDIRECT rule in place? "
                "Answering 503.",
                tag=channel.tag,
                peer=host_port(*channel.peer),
                error=e,
            )
            return None, replies.NO_HEALTHY_UPSTREAM
        local = transport.getHost()
        if (ip, port) == (socket_ip(local.host), local.port):
            log.warn(
                "{tag} redirect loop: the connection from {peer} was addressed to "
                "origdst's own listening address {local}; only redirected traffic "
                "can be proxied. Answering 508.",
                tag=channel.tag,
                peer=host_port(*channel.peer),
                local=host_port(ip, port),
            )
            return None, replies.REDIRECT_LOOP
        if debug_enabled():
            log.debug(
                "{tag} new connection from {peer} to original destination {dest}.",
                tag=channel.tag,
                peer=host_port(*channel.peer),
                dest=host_port(ip, port),
            )
        return (ip, port), None
