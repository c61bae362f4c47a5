"""
Accepting redirected connections.

Each accepted connection is asked where it was really going; one that was not
redirected, or that was addressed to the proxy itself, is answered locally and
never connected anywhere, so a wrong iptables rule cannot make the proxy dial
itself. Then its first bytes choose the HTTP proxy or the TCP relay
(L{origdst.detect}).
"""

import itertools

from twisted.internet.protocol import ServerFactory

from origdst import replies
from origdst.addresses import host_port, socket_ip
from origdst.admission import Admission
from origdst.detect import Detector, Waiting
from origdst.downstream import ProxyChannel
from origdst.drain import Connections
from origdst.logs import debug_enabled, logger
from origdst.policy import Policy
from origdst.readers import parse_ports
from origdst.sockopt import NoOriginalDestination, original_destination
from origdst.tcp import Relay

log = logger("origdst.listener")


class ListenerFactory(ServerFactory):
    """
    Builds a L{Detector} for each accepted connection, which hands it to a
    L{ProxyChannel} (L{http_channel}) or a L{Relay} (L{relay}).
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
        self.tcp_ports = parse_ports(settings.tcp_ports) if settings.tcp_ports else frozenset()
        self.http_ports = parse_ports(settings.http_ports) if settings.http_ports else frozenset()
        # The detectors waiting for their first bytes, under one timer.
        self.waiting = Waiting(reactor, settings.detect_timeout)
        self._ids = itertools.count(1)
        # The open client connections, for a drain.
        self.connections = Connections()

    def buildProtocol(self, addr):
        return Detector(self, f"[C{next(self._ids)}]")

    def http_channel(self, tag=None, resolved=None):
        """
        @param resolved: C{(destination, refusal)} already read by the
            L{Detector}; looked up when the channel connects if C{None}.
        @return: a L{ProxyChannel} for a connection that speaks HTTP.
        """
        channel = ProxyChannel(
            self.cluster,
            self.settings,
            self.reactor,
            tag or f"[C{next(self._ids)}]",
            self.resolve_for if resolved is None else (lambda channel: resolved),
            self.admission,
        )
        if self.access_log is not None:
            channel.access_log = self.access_log
        channel.connections = self.connections
        self.connections.add(channel)
        return channel

    def relay(self, tag, peer, destination, hello=None):
        """
        @return: a L{Relay} to C{destination}; C{hello} is the
            L{origdst.tls.ClientHello} of a TLS connection.
        """
        return Relay(
            self.cluster, self.settings, self.reactor, self.policy, tag, peer, destination,
            hello, self.access_log,
        )

    def resolve(self, transport, tag):
        """
        @return: C{(peer, destination, refusal)} of an accepted connection:
            where it was going, or why it is not proxied (a reply).
        """
        address = transport.getPeer()
        peer = (socket_ip(address.host), address.port)
        destination, refusal = self._resolve(transport, tag, peer)
        return peer, destination, refusal

    def resolve_for(self, channel):
        """
        @return: the destination of C{channel}'s connection, or why there is
            none, as L{ProxyChannel} expects from its C{resolve} argument.
        """
        return self._resolve(channel.transport, channel.tag, channel.peer)

    def _resolve(self, transport, tag, peer):
        if not self.policy.source_allowed(peer[0]):
            log.info(
                "{tag} connection from {peer} refused: not in --allow-source.",
                tag=tag,
                peer=host_port(*peer),
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
                tag=tag,
                peer=host_port(*peer),
                error=e,
            )
            return None, replies.NO_HEALTHY_UPSTREAM
        local = transport.getHost()
        if (ip, port) == (socket_ip(local.host), local.port):
            log.warn(
                "{tag} redirect loop: the connection from {peer} was addressed to "
                "origdst's own listening address {local}; only redirected traffic "
                "can be proxied. Answering 508.",
                tag=tag,
                peer=host_port(*peer),
                local=host_port(ip, port),
            )
            return None, replies.REDIRECT_LOOP
        if debug_enabled():
            log.debug(
                "{tag} new connection from {peer} to original destination {dest}.",
                tag=tag,
                peer=host_port(*peer),
                dest=host_port(ip, port),
            )
        return (ip, port), None
