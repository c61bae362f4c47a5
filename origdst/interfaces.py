"""
The contracts between the halves of the data path.

A client connection (L{origdst.downstream}) hands each admitted request to an
exchange (L{origdst.exchange}), which a pool attaches to an upstream
connection (L{origdst.upstream}); after an upgrade or CONNECT both
connections are joined by a tunnel (L{origdst.tunnel}). Each side sees the
other only through these interfaces, and the tests check the
implementations with L{zope.interface.verify.verifyObject}.

This module is a leaf: it imports no sibling.
"""

from zope.interface import Attribute, Interface


class IClientChannel(Interface):
    """
    The client connection, as its exchange sees it.
    """

    transport = Attribute("The client's transport: responses are written to it.")
    pauser = Attribute("The L{origdst.flow.Pauser} of the client's transport.")
    reactor = Attribute("The reactor, for the time and timers.")
    settings = Attribute("The L{origdst.config.Settings}.")
    tag = Attribute("The connection's log tag, C{[C<n>]}.")
    server = Attribute("The C{server} header value, bytes.")
    prefix = Attribute("The header prefix, bytes (C{x-envoy}).")
    read_closed = Attribute("The client has shut down its sending side.")

    def local_reply(reply, extra=b"", method=b"GET"):
        """
        Answer the current request with the L{origdst.replies.Reply}
        C{reply} and close, or cut the connection if a response had begun.
        """

    def exchange_done(exchange):
        """
        The response to the current request is complete.
        """

    def start_tunnel(conn):
        """
        The server agreed to an upgrade or CONNECT: relay bytes between the
        client and the L{IUpstreamConnection} C{conn} from now on.
        """

    def close():
        """
        Close the client connection, ending the exchange under way.
        """


class IExchange(Interface):
    """
    One request and its response, as the client connection, the pool and
    the upstream connection see it.
    """

    method = Attribute("The request method, bytes.")
    upstream_head = Attribute("The request head to send upstream, bytes.")
    tag = Attribute("The log tag, C{[C<n>][S<m>]}.")

    # From the client connection.

    def body_data(data):
        """
        A piece of the request body (decoded), to be sent upstream.
        """

    def request_received(trailers):
        """
        The whole request has been read from the client.
        """

    def check_deadlines(now):
        """
        End the exchange if a timeout passed; @return: the next deadline.
        """

    def abort():
        """
        End the exchange before its response is complete; idempotent.
        """

    def finish():
        """
        End the exchange without dropping its upstream connection (the
        response is complete, or a tunnel takes the connection over).
        """

    # From the pool.

    def attached(conn):
        """
        The L{IUpstreamConnection} C{conn} carries the exchange from now on.
        """

    def failed(reply):
        """
        No upstream connection could be had; C{reply} says why.
        """

    # From the upstream connection.

    def informational(status, reason, fields, index):
        """
        A 1xx response arrived.
        """

    def response_head(status, reason, fields, index, kind, length, body=None):
        """
        The final response head arrived; C{body}, when not C{None}, is the
        whole body of a C{Content-Length} response that came with it (sent
        with the head, with no L{response_data}).
        """

    def response_data(data):
        """
        A piece of the response body (decoded).
        """

    def response_sink():
        """
        @return: the client's transport, when the body arriving now goes to
            it unchanged (a length-framed body) and may be moved raw
            (L{origdst.rawcopy}); else C{None}.
        """

    def response_forward(n):
        """
        The next C{n} bytes of the body are in the raw buffer
        (L{origdst.rawcopy}): L{response_data}, without bytes.
        """

    def response_end(trailers):
        """
        The response is complete.
        """

    def upstream_lost(response_started, reused):
        """
        The upstream connection closed before the response was complete.
        """

    def upstream_failed(error):
        """
        The upstream sent something that is not a valid response.
        """


class IUpstreamConnection(Interface):
    """
    One upstream connection, as the exchange and the tunnel see it.
    """

    transport = Attribute("The upstream transport.")
    pauser = Attribute("The L{origdst.flow.Pauser} of the upstream transport.")

    def send(pieces):
        """
        Send request bytes, already framed, counting them.
        """

    def request_complete():
        """
        The whole request has been written.
        """

    def bad_response(error):
        """
        Give up on the response: the server broke the protocol.
        """

    def abort():
        """
        Drop the connection and its exchange.
        """

    def start_tunnel(tunnel):
        """
        Relay bytes through the L{ITunnel} C{tunnel} from now on.
        """


class ITunnel(Interface):
    """
    The byte relay joining a client connection and an upstream connection,
    as each of the two calls it.
    """

    def from_client(data):
        """
        Bytes from the client, for the server.
        """

    def from_server(data):
        """
        Bytes from the server, for the client.
        """

    def client_read_closed():
        """
        The client shut down its sending side.
        """

    def server_read_closed():
        """
        The server shut down its sending side.
        """

    def client_lost():
        """
        The client connection is gone.
        """

    def server_lost():
        """
        The upstream connection is gone.
        """
