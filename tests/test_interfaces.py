"""
The halves of the data path provide the interfaces they are used through
(L{origdst.interfaces}), checked on live objects of an in-memory proxy.
"""

from twisted.trial import unittest
from zope.interface.verify import verifyObject

from origdst.interfaces import IClientChannel, IExchange, ITunnel, IUpstreamConnection

from tests.helpers import GET, UPGRADE, SWITCH, ProxyHarness


class InterfaceTests(unittest.TestCase):
    def setUp(self):
        self.proxy = ProxyHarness(self)

    def test_exchange_halves(self):
        """
        The client connection, its exchange and the upstream connection.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        upstream = self.proxy.accept_upstream()
        self.assertTrue(verifyObject(IClientChannel, channel))
        self.assertTrue(verifyObject(IExchange, channel.exchange))
        self.assertTrue(verifyObject(IUpstreamConnection, upstream.protocol))

    def test_tunnel(self):
        """
        The tunnel an upgrade opens.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(UPGRADE)
        upstream = self.proxy.accept_upstream()
        upstream.protocol.dataReceived(SWITCH)
        self.assertIs(channel.tunnel, upstream.protocol.tunnel)
        self.assertTrue(verifyObject(ITunnel, channel.tunnel))
