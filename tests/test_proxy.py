"""
Tests of the whole proxy path in memory: a L{ProxyChannel} fed with client
bytes, its pool dialling through a L{MemoryReactorClock}, and upstream
connections on L{StringTransportWithDisconnection}s fed with server bytes.
"""

import re

from twisted.internet.error import TimeoutError
from twisted.trial import unittest

from origdst import replies
from origdst.sockopt import NoOriginalDestination

from tests.helpers import DEST, GET, OK, RESET, ProxyHarness, capture_log, parse_response


class ForwardingTests(unittest.TestCase):
    def setUp(self):
        self.proxy = ProxyHarness(self, request_timeout=15)
        self.log = capture_log(self)

    def test_get(self):
        """
        A request is sent to the original destination with rewritten headers
        and the response comes back with server and service time.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        [(host, port, _, timeout, _)] = self.proxy.new_attempts()
        self.assertEqual((host, port, timeout), ("10.250.0.3", 80, 5.0))
        upstream = self.proxy.accept_upstream()
        head = upstream.value()
        self.assertTrue(head.startswith(b"GET /a?b=1 HTTP/1.1\r\nHost: 10.250.0.3\r\nUser-Agent: t\r\n"))
        self.assertIn(b"x-forwarded-proto: http\r\n", head)
        self.assertIn(b"x-envoy-expected-rq-timeout-ms: 15000\r\n", head)
        self.assertIn(b"x-request-id: ", head)
        self.proxy.reactor.advance(0.012)
        upstream.protocol.dataReceived(OK)
        status, headers, body, rest = parse_response(client.value())
        self.assertEqual((status, body, rest), (200, b"hello", b""))
        self.assertEqual(headers[b"server"], [b"origdst"])
        self.assertEqual(headers[b"x-envoy-upstream-service-time"], [b"12"])
        self.assertTrue(client.connected)
        self.assertTrue(any(re.match(r"^\[C1\]\[S\d+\] response complete\.$", m) for m in self.log))

    def test_keep_alive_reuses_upstream(self):
        """
        The upstream connection goes back to the pool and carries the next
        request, from the same client or another one.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        upstream = self.proxy.accept_upstream()
        upstream.protocol.dataReceived(OK)
        upstream.clear()
        channel.dataReceived(GET)
        other, other_client = self.proxy.client(peer=("10.250.0.2", 40001))
        upstream.protocol.dataReceived(OK)
        other.dataReceived(GET)
        self.assertEqual(self.proxy.new_attempts()[1:], [])
        self.assertEqual(upstream.value().count(b"GET /a?b=1"), 2)
        upstream.protocol.dataReceived(OK)
        self.assertEqual(client.value().count(b"HTTP/1.1 200 OK"), 2)
        self.assertEqual(other_client.value().count(b"HTTP/1.1 200 OK"), 1)
        self.assertTrue(any(re.match(r"^\[C2\]\[S\d+\] reusing connection to 10\.250\.0\.3:80\.$", m) for m in self.log))

    def test_chunked_response_rechunked(self):
        """
        A chunked response streams to the client chunk by chunk.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        upstream = self.proxy.accept_upstream()
        upstream.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        self.assertTrue(client.value().endswith(b"3\r\nabc\r\n"))
        upstream.protocol.dataReceived(b"2\r\nde\r\n0\r\n\r\n")
        status, headers, body, rest = parse_response(client.value())
        self.assertEqual((status, body, rest), (200, b"abcde", b""))
        self.assertEqual(headers[b"transfer-encoding"], [b"chunked"])

    def test_close_delimited_response(self):
        """
        A response that ends with its connection is chunked to an HTTP/1.1
        client, which can keep its connection; the upstream one is not reused.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        upstream = self.proxy.accept_upstream()
        upstream.protocol.dataReceived(b"HTTP/1.1 200 OK\r\n\r\npart1")
        upstream.protocol.dataReceived(b"part2")
        upstream.loseConnection()
        status, headers, body, rest = parse_response(client.value())
        self.assertEqual((status, body), (200, b"part1part2"))
        self.assertTrue(client.connected)
        self.assertEqual(self.proxy.cluster.host(*DEST).pool.idle, [])

    def test_http10_client(self):
        """
        An HTTP/1.0 client without keep-alive gets its response, then the
        connection closes; the upstream connection is still pooled.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        upstream = self.proxy.accept_upstream()
        self.assertIn(b"host: 10.250.0.3\r\n", upstream.value())
        upstream.protocol.dataReceived(OK)
        self.assertIn(b"connection: close\r\n", client.value())
        self.assertFalse(client.connected)
        self.assertEqual(len(self.proxy.cluster.host(*DEST).pool.idle), 1)

    def test_request_body_streams(self):
        """
        A Content-Length body is forwarded as it arrives, with the same length.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n01234")
        upstream = self.proxy.accept_upstream()
        self.assertTrue(upstream.value().endswith(b"content-length: 10\r\n\r\n01234"))
        channel.dataReceived(b"56789")
        self.assertTrue(upstream.value().endswith(b"0123456789"))
        upstream.protocol.dataReceived(OK)
        self.assertEqual(parse_response(client.value())[0], 200)

    def test_chunked_request_body(self):
        """
        A chunked request body is forwarded chunked, trailers included.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(b"POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n")
        upstream = self.proxy.accept_upstream()
        channel.dataReceived(b"0\r\nT: 1\r\n\r\n")
        sent = upstream.value()
        self.assertIn(b"transfer-encoding: chunked\r\n", sent)
        self.assertTrue(sent.endswith(b"\r\n\r\n4\r\nwiki\r\n0\r\nT: 1\r\n\r\n"))

    def test_pipelined_requests_in_order(self):
        """
        Pipelined requests are answered in order; the second waits for the
        first response and the client is paused meanwhile.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET + GET.replace(b"/a?b=1", b"/second"))
        self.assertEqual(client.producerState, "paused")
        upstream = self.proxy.accept_upstream()
        self.assertNotIn(b"/second", upstream.value())
        upstream.protocol.dataReceived(OK)
        self.assertEqual(client.producerState, "producing")
        self.assertIn(b"GET /second", upstream.value())
        upstream.protocol.dataReceived(OK.replace(b"hello", b"world"))
        first = parse_response(client.value())
        second = parse_response(first[3])
        self.assertEqual((first[2], second[2]), (b"hello", b"world"))

    def test_head_keeps_content_length(self):
        """
        A response to HEAD keeps its Content-Length and has no body.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET.replace(b"GET", b"HEAD"))
        upstream = self.proxy.accept_upstream()
        upstream.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")
        self.assertIn(b"content-length: 99\r\n", client.value())
        self.assertTrue(client.value().endswith(b"\r\n\r\n"))
        self.assertEqual(len(self.proxy.cluster.host(*DEST).pool.idle), 1)

    def test_continue_passed_once(self):
        """
        A 100 Continue from the server reaches the client before the final
        response.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        upstream = self.proxy.accept_upstream()
        self.assertIn(b"Expect: 100-continue", upstream.value())
        upstream.protocol.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertEqual(client.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        channel.dataReceived(b"hi")
        upstream.protocol.dataReceived(OK)
        self.assertEqual(client.value().count(b"100 Continue"), 1)
        self.assertEqual(parse_response(client.value().split(b"\r\n\r\n", 1)[1])[0], 200)

    def test_absolute_form_target(self):
        """
        An absolute-form request target is sent in origin-form.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(b"GET http://example.com/x?y HTTP/1.1\r\nHost: example.com\r\n\r\n")
        upstream = self.proxy.accept_upstream()
        self.assertTrue(upstream.value().startswith(b"GET /x?y HTTP/1.1\r\n"))


class FlowControlTests(unittest.TestCase):
    def setUp(self):
        self.proxy = ProxyHarness(self)

    def test_slow_client_pauses_upstream(self):
        """
        While the client's write buffer is full, the upstream connection is
        not read; it reads again when the client catches up.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        upstream = self.proxy.accept_upstream()
        upstream.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nxx")
        self.assertIs(client.producer, upstream.protocol.pauser)
        client.producer.pauseProducing()
        self.assertEqual(upstream.producerState, "paused")
        client.producer.resumeProducing()
        self.assertEqual(upstream.producerState, "producing")
        upstream.protocol.dataReceived(b"y" * 98)
        self.assertIsNone(client.producer)

    def test_slow_server_pauses_client(self):
        """
        While the upstream's write buffer is full, the client is not read.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n")
        self.assertEqual(client.producerState, "paused")
        upstream = self.proxy.accept_upstream()
        self.assertEqual(client.producerState, "producing")
        upstream.producer.pauseProducing()
        self.assertEqual(client.producerState, "paused")
        upstream.producer.resumeProducing()
        channel.dataReceived(b"z" * 100)
        self.assertIsNone(upstream.producer)
        self.assertEqual(client.producerState, "producing")


class FailureTests(unittest.TestCase):
    def setUp(self):
        self.proxy = ProxyHarness(self, request_timeout=15)
        self.log = capture_log(self)

    def assertLocalReply(self, client, status, body):
        got_status, headers, got_body, _ = parse_response(client.value())
        self.assertEqual((got_status, got_body), (status, body))
        self.assertEqual(headers[b"content-type"], [b"text/plain"])
        self.assertEqual(headers[b"server"], [b"origdst"])
        return headers

    def test_connect_refused(self):
        """
        A refused connection is Envoy's 503, and the client connection closes.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        self.proxy.refuse_upstream()
        headers = self.assertLocalReply(client, 503, RESET + b"connection failure")
        self.assertEqual(headers[b"connection"], [b"close"])
        self.assertFalse(client.connected)

    def test_connect_failure_starts_next_attempt(self):
        """
        With one connection allowed, a second request waits behind the first
        one's connect; when that connect fails, the next attempt starts for
        the waiting request instead of leaving it to the route timeout.
        """
        proxy = ProxyHarness(self, request_timeout=15, max_connections=1)
        first, first_client = proxy.client()
        second, second_client = proxy.client(peer=("10.250.0.2", 40001))
        first.dataReceived(GET)
        second.dataReceived(GET)
        self.assertEqual(len(proxy.new_attempts()), 1)
        proxy.refuse_upstream()
        self.assertLocalReply(first_client, 503, RESET + b"connection failure")
        self.assertEqual(len(proxy.new_attempts()), 1)
        self.assertEqual(second_client.value(), b"")
        proxy.refuse_upstream()
        self.assertLocalReply(second_client, 503, RESET + b"connection failure")
        self.assertEqual(proxy.new_attempts(), [])

    def test_connect_timeout(self):
        """
        A connect that times out is a 503 naming the timeout.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        self.proxy.refuse_upstream(TimeoutError())
        self.assertLocalReply(client, 503, RESET + b"connection timeout")

    def test_request_timeout(self):
        """
        A response not complete within the route timeout is a 504, and the
        upstream connection is dropped rather than reused.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        upstream = self.proxy.accept_upstream()
        self.proxy.reactor.advance(14.9)
        self.assertEqual(client.value(), b"")
        self.proxy.reactor.advance(0.2)
        self.assertLocalReply(client, 504, b"upstream request timeout")
        self.assertTrue(upstream.disconnected)
        self.assertEqual(self.proxy.cluster.host(*DEST).pool.connections, set())

    def test_request_timeout_while_connecting(self):
        """
        The route timeout also covers waiting for a connection.
        """
        proxy = ProxyHarness(self, request_timeout=2, connect_timeout=5)
        channel, client = proxy.client()
        channel.dataReceived(GET)
        proxy.reactor.advance(2)
        self.assertLocalReply(client, 504, b"upstream request timeout")
        self.assertEqual(len(proxy.cluster.host(*DEST).pool.pending), 0)

    def test_no_timeout_when_disabled(self):
        """
        A request timeout of 0 means no timeout and no advertised one.
        """
        proxy = ProxyHarness(self, request_timeout=0, stream_idle_timeout=0)
        channel, client = proxy.client()
        channel.dataReceived(GET)
        upstream = proxy.accept_upstream()
        self.assertNotIn(b"expected-rq-timeout", upstream.value())
        proxy.reactor.advance(3600)
        self.assertEqual(client.value(), b"")

    def test_upstream_closes_before_response(self):
        """
        A fresh upstream connection closing before any response byte is a
        503 (connection termination); nothing is retried.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        upstream = self.proxy.accept_upstream()
        upstream.loseConnection()
        self.assertLocalReply(client, 503, RESET + b"connection termination")
        self.assertEqual(len(self.proxy.new_attempts()), 1)

    def test_stale_pooled_connection_retried_once(self):
        """
        When the server closed a pooled connection just as it was reused, a
        GET is sent once more on a fresh connection.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        first = self.proxy.accept_upstream()
        first.protocol.dataReceived(OK)
        client.clear()
        channel.dataReceived(GET)
        self.assertEqual(first.value().count(b"GET /a"), 2)
        first.loseConnection()
        second = self.proxy.accept_upstream(local_port=50001)
        self.assertTrue(second.value().startswith(b"GET /a?b=1 HTTP/1.1"))
        second.protocol.dataReceived(OK)
        self.assertEqual(parse_response(client.value())[2], b"hello")

    def test_stale_pooled_connection_post_not_retried(self):
        """
        A POST on a reused connection that closes is answered 503, never sent
        twice.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        first = self.proxy.accept_upstream()
        first.protocol.dataReceived(OK)
        client.clear()
        attempts = len(self.proxy.reactor.tcpClients)
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx")
        first.loseConnection()
        self.assertEqual(len(self.proxy.reactor.tcpClients), attempts)
        self.assertLocalReply(client, 503, RESET + b"connection termination")

    def test_upstream_reset_mid_body(self):
        """
        An upstream that disappears after the response began cuts the client
        connection, so the client sees a truncated response, not a short one.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        upstream = self.proxy.accept_upstream()
        upstream.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
        upstream.loseConnection()
        self.assertFalse(client.connected)

    def test_malformed_response(self):
        """
        A malformed response head is a 502 and the upstream connection is
        dropped.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        upstream = self.proxy.accept_upstream()
        upstream.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        self.assertLocalReply(client, 502, RESET + b"protocol error")
        self.assertTrue(upstream.disconnected)

    def test_client_goes_away(self):
        """
        A client that disconnects mid-exchange takes its upstream connection
        down (it cannot be reused half-way) and leaves other clients alone.
        """
        channel, client = self.proxy.client()
        other, other_client = self.proxy.client(peer=("10.250.0.2", 40001))
        channel.dataReceived(GET)
        upstream = self.proxy.accept_upstream()
        other.dataReceived(GET)
        upstream2 = self.proxy.accept_upstream(local_port=50001)
        client.loseConnection()
        self.assertTrue(upstream.disconnected)
        upstream2.protocol.dataReceived(OK)
        self.assertEqual(parse_response(other_client.value())[0], 200)

    def test_client_goes_away_while_pending(self):
        """
        A client that disconnects while waiting for a connection is forgotten
        by the pool.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        client.loseConnection()
        pool = self.proxy.cluster.host(*DEST).pool
        self.assertEqual(len(pool.pending), 0)
        upstream = self.proxy.accept_upstream()
        self.assertEqual(upstream.value(), b"")
        self.assertEqual(pool.idle, [upstream.protocol])

    def test_overflow(self):
        """
        Beyond the connection and pending limits, a request is a 503 marked
        overloaded. As in Envoy, a request waiting for a connection being
        established counts as pending.
        """
        proxy = ProxyHarness(self, max_connections=1, max_pending_requests=2)
        clients = [proxy.client(peer=("10.250.0.2", 40000 + i)) for i in range(3)]
        for channel, _ in clients:
            channel.dataReceived(GET)
        self.assertEqual(len(proxy.reactor.tcpClients), 1)
        headers = self.assertLocalReply(clients[2][1], 503, RESET + b"overflow")
        self.assertEqual(headers[b"x-envoy-overloaded"], [b"true"])
        upstream = proxy.accept_upstream()
        upstream.protocol.dataReceived(OK)
        upstream.protocol.dataReceived(OK)
        self.assertEqual(parse_response(clients[1][1].value())[0], 200)


class BadRequestTests(unittest.TestCase):
    def setUp(self):
        self.proxy = ProxyHarness(self)
        self.log = capture_log(self)

    def reply(self, data):
        channel, client = self.proxy.client()
        channel.dataReceived(data)
        self.assertEqual(self.proxy.reactor.tcpClients, [])
        self.assertFalse(client.connected)
        return parse_response(client.value())

    def test_malformed(self):
        """
        Malformed requests get a 400 and a log line, and never go upstream.
        """
        status, _, body, _ = self.reply(b"GET / HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n")
        self.assertEqual((status, body), (400, b"Bad Request"))
        self.assertTrue(any("rejected a request" in line for line in self.log))

    def test_smuggling(self):
        """
        Content-Length with Transfer-Encoding is refused.
        """
        status = self.reply(
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        )[0]
        self.assertEqual(status, 400)

    def test_missing_host(self):
        """
        HTTP/1.1 requires Host.
        """
        self.assertEqual(self.reply(b"GET / HTTP/1.1\r\n\r\n")[0], 400)

    def test_headers_too_large(self):
        """
        A head over the limit is a 431, also when it never ends.
        """
        self.assertEqual(self.reply(b"GET / HTTP/1.1\r\nX: " + b"a" * 70000)[0], 431)
        proxy = ProxyHarness(self, max_request_headers_count=3)
        channel, client = proxy.client()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n")
        self.assertEqual(parse_response(client.value())[0], 431)

    def test_bad_chunk(self):
        """
        An invalid chunk size is a 400 and the upstream connection is dropped.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
        upstream = self.proxy.accept_upstream()
        channel.dataReceived(b"zz\r\n")
        self.assertEqual(parse_response(client.value())[0], 400)
        self.assertTrue(upstream.disconnected)


class RefusalTests(unittest.TestCase):
    def setUp(self):
        self.proxy = ProxyHarness(self)
        self.log = capture_log(self)

    def test_no_original_destination(self):
        """
        A connection that was not redirected gets 503 no healthy upstream and
        a log line naming the likely cause.
        """
        channel, client = self.proxy.client(destination=NoOriginalDestination("No such file"))
        channel.dataReceived(GET)
        self.assertEqual(parse_response(client.value())[:3:2], (503, b"no healthy upstream"))
        self.assertEqual(self.proxy.reactor.tcpClients, [])
        self.assertTrue(any("REDIRECT rule" in line for line in self.log))

    def test_addressed_to_the_proxy(self):
        """
        A connection whose original destination is the proxy's own listening
        address is refused with 508 and never dialled.
        """
        channel, client = self.proxy.client(destination=("127.0.0.1", 4999))
        channel.dataReceived(GET)
        self.assertEqual(parse_response(client.value())[0], 508)
        self.assertEqual(self.proxy.reactor.tcpClients, [])

    def test_own_upstream_connection_looped(self):
        """
        A redirected connection coming from one of the proxy's own upstream
        connections (an iptables rule without the owner match) is refused with
        508 instead of being dialled again and again.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        self.proxy.accept_upstream(local_port=50007)
        looped, looped_client = self.proxy.client(peer=("10.250.0.2", 50007))
        looped.dataReceived(GET)
        self.assertEqual(parse_response(looped_client.value())[0], 508)
        self.assertEqual(len(self.proxy.reactor.tcpClients), 1)
        self.assertTrue(any("owner match" in line for line in self.log))

    def test_upstream_port_towards_another_destination(self):
        """
        A client connection from the local address of an upstream connection
        to another destination is no loop: REDIRECT gives a client port that is
        in use towards another destination a new one at random, which can be
        such a port. It is proxied.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        self.proxy.accept_upstream(local_port=50007)
        other, other_client = self.proxy.client(
            peer=("10.250.0.2", 50007), destination=("10.250.0.9", 80))
        other.dataReceived(GET)
        self.assertEqual(other_client.value(), b"")
        self.assertEqual(self.proxy.reactor.tcpClients[-1][:2], ("10.250.0.9", 80))
        self.assertFalse(any("owner match" in line for line in self.log))

    def test_refusal_reply_from_catalogue(self):
        """
        A refused connection is answered with the catalogue's reply, whatever
        its words: the body sent is the catalogue entry's.
        """
        self.patch(replies.NO_HEALTHY_UPSTREAM, "body", b"reworded")
        channel, client = self.proxy.client(destination=NoOriginalDestination("No such file"))
        channel.dataReceived(GET)
        self.assertEqual(parse_response(client.value())[:3:2], (503, b"reworded"))


class PolicyTests(unittest.TestCase):
    def setUp(self):
        self.log = capture_log(self)

    def reply(self, proxy, data, **client):
        channel, transport = proxy.client(**client)
        channel.dataReceived(data)
        return parse_response(transport.value()), transport

    def test_denied_destination(self):
        """
        A request to a denied destination gets 403 and a log line naming the
        rule, and is never dialled.
        """
        proxy = ProxyHarness(self, deny=("10.250.0.0/24:80",))
        (status, _, body, _), client = self.reply(proxy, GET)
        self.assertEqual((status, body), (403, b"destination denied by egress policy"))
        self.assertEqual(proxy.reactor.tcpClients, [])
        self.assertTrue(any("denied by --deny 10.250.0.0/24:80" in line for line in self.log))

    def test_allowed_destination(self):
        """
        A destination in the allow list is proxied as usual.
        """
        proxy = ProxyHarness(self, allow=("10.250.0.3:80",))
        channel, client = proxy.client()
        channel.dataReceived(GET)
        self.assertEqual(len(proxy.reactor.tcpClients), 1)

    def test_denied_host_name(self):
        """
        With host rules, the Host name is checked too.
        """
        proxy = ProxyHarness(self, allow_host=("*.example.com",))
        (status, _, _, _), _ = self.reply(proxy, GET)
        self.assertEqual(status, 403)
        channel, client = proxy.client()
        channel.dataReceived(GET.replace(b"Host: 10.250.0.3", b"Host: api.example.com"))
        self.assertEqual(len(proxy.reactor.tcpClients), 1)

    def test_source_not_allowed(self):
        """
        A client outside --allow-source gets 403 and nothing is dialled.
        """
        proxy = ProxyHarness(self, allow_source=("127.0.0.0/8",))
        (status, _, _, _), client = self.reply(proxy, GET)
        self.assertEqual(status, 403)
        self.assertFalse(client.connected)
        self.assertEqual(proxy.reactor.tcpClients, [])

    def test_override_header_off(self):
        """
        By default the override header is ignored and not forwarded.
        """
        proxy = ProxyHarness(self)
        channel, _ = proxy.client()
        channel.dataReceived(GET.replace(b"\r\n\r\n", b"\r\nx-envoy-original-dst-host: 10.250.0.9:8080\r\n\r\n"))
        self.assertEqual(proxy.reactor.tcpClients[0][:2], DEST)
        upstream = proxy.accept_upstream()
        self.assertNotIn(b"original-dst-host", upstream.value())

    def test_override_header_on(self):
        """
        With --use-original-dst-header, the header's ip:port is the
        destination, and it is removed before forwarding.
        """
        proxy = ProxyHarness(self, use_original_dst_header=True)
        channel, _ = proxy.client()
        channel.dataReceived(GET.replace(b"\r\n\r\n", b"\r\nx-envoy-original-dst-host: [fd00::9]:8080\r\n\r\n"))
        self.assertEqual(proxy.reactor.tcpClients[0][:2], ("fd00::9", 8080))
        upstream = proxy.accept_upstream()
        self.assertNotIn(b"original-dst-host", upstream.value())

    def test_override_header_checked_against_policy(self):
        """
        The override does not escape the egress policy.
        """
        proxy = ProxyHarness(self, use_original_dst_header=True, deny=("169.254.169.254",))
        (status, _, _, _), _ = self.reply(
            proxy, GET.replace(b"\r\n\r\n", b"\r\nx-envoy-original-dst-host: 169.254.169.254:80\r\n\r\n")
        )
        self.assertEqual(status, 403)
        self.assertEqual(proxy.reactor.tcpClients, [])

    def test_override_header_invalid(self):
        """
        An override that is not ip:port is a 400.
        """
        proxy = ProxyHarness(self, use_original_dst_header=True)
        for value in (b"example.com:80", b"10.0.0.1", b"10.0.0.1:99999", b"[fd00::1"):
            (status, _, _, _), _ = self.reply(
                proxy, GET.replace(b"\r\n\r\n", b"\r\nx-envoy-original-dst-host: " + value + b"\r\n\r\n")
            )
            self.assertEqual(status, 400, value)
        self.assertEqual(proxy.reactor.tcpClients, [])

    def test_no_marker_by_default(self):
        """
        By default nothing but Envoy's documented headers is added upstream:
        no loop marker and no Via; a client's own x-origdst-loop or Via is
        just a header, passed on as sent, and not a loop.
        """
        proxy = ProxyHarness(self)
        channel, client = proxy.client()
        channel.dataReceived(GET.replace(
            b"\r\n\r\n", b"\r\nx-origdst-loop: 0123456789abcdef\r\nVia: 1.1 origdst\r\n\r\n"))
        upstream = proxy.accept_upstream()
        head = upstream.value().split(b"\r\n\r\n")[0].lower()
        self.assertEqual(head.count(b"x-origdst-loop"), 1)
        self.assertIn(b"x-origdst-loop: 0123456789abcdef\r\n", head)
        self.assertEqual(head.count(b"\r\nvia:"), 1)
        self.assertIn(b"\r\nvia: 1.1 origdst\r\n", head)
        sent = {line.split(b":")[0].lower() for line in GET.split(b"\r\n")[1:] if line}
        added = {line.split(b":")[0] for line in head.split(b"\r\n")[1:]}
        self.assertEqual(added - sent - {b"x-origdst-loop", b"via"},
                         {b"x-forwarded-proto", b"x-request-id", b"x-envoy-expected-rq-timeout-ms"})
        upstream.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertNotIn(b"\r\nvia:", client.value().lower())

    def test_via_loop(self):
        """
        With --via NAME, requests and responses go on with Via: 1.1 NAME
        appended to the Via they came with, and a request whose Via already
        names NAME (it went round through another proxy) is refused with 508.
        """
        proxy = ProxyHarness(self, via="egress-a")
        channel, client = proxy.client()
        channel.dataReceived(GET.replace(b"\r\n\r\n", b"\r\nVia: 1.0 squid\r\n\r\n"))
        upstream = proxy.accept_upstream()
        self.assertIn(b"\r\nvia: 1.0 squid, 1.1 egress-a\r\n", upstream.value())
        self.assertNotIn(b"Via: 1.0 squid\r\n", upstream.value())
        upstream.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nVia: 1.1 cdn\r\nContent-Length: 0\r\n\r\n")
        self.assertIn(b"\r\nvia: 1.1 cdn, 1.1 egress-a\r\n", client.value())
        for via in (b"1.1 egress-a", b"1.0 squid, 1.1 EGRESS-A (origdst)", b"HTTP/1.1 egress-a"):
            (status, _, _, _), _ = self.reply(
                proxy, GET.replace(b"\r\n\r\n", b"\r\nVia: " + via + b"\r\n\r\n"),
                peer=("10.250.0.2", 40001),
            )
            self.assertEqual(status, 508, via)
        self.assertEqual(len(proxy.reactor.tcpClients), 1)
        upstream.clear()
        channel, _ = proxy.client(peer=("10.250.0.2", 40002))
        channel.dataReceived(GET.replace(b"\r\n\r\n", b"\r\nVia: 1.1 egress-b\r\n\r\n"))
        self.assertIn(b"\r\nvia: 1.1 egress-b, 1.1 egress-a\r\n", upstream.value(),
                      "another proxy's name is no loop")


class TargetTests(unittest.TestCase):
    def setUp(self):
        self.proxy = ProxyHarness(self)
        self.log = capture_log(self)

    def status(self, data):
        channel, client = self.proxy.client()
        channel.dataReceived(data)
        return parse_response(client.value())[0] if client.value() else None

    def test_absolute_form_agreeing(self):
        """
        An absolute-form target naming the original destination (or a name)
        is forwarded in origin-form with its authority as Host.
        """
        self.status(b"GET http://10.250.0.3:80/x HTTP/1.1\r\nHost: other\r\n\r\n")
        upstream = self.proxy.accept_upstream()
        self.assertTrue(upstream.value().startswith(b"GET /x HTTP/1.1\r\n"))
        self.assertIn(b"Host: 10.250.0.3:80\r\n", upstream.value())
        self.assertNotIn(b"Host: other", upstream.value())

    def test_absolute_form_disagreeing(self):
        """
        An absolute-form target naming another address or port is a 400, not
        a way to reach somewhere else.
        """
        for target in (b"http://10.250.0.9/x", b"http://10.250.0.3:81/x", b"http://[fd00::3]/", b"http://u@10.250.0.3/", b"http:///x"):
            self.assertEqual(self.status(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n"), 400, target)
        self.assertEqual(self.proxy.reactor.tcpClients, [])

    def test_request_line_too_long(self):
        """
        A request line over the limit is a 414, complete or not.
        """
        long_target = b"/" + b"a" * (17 * 1024)
        self.assertEqual(self.status(b"GET " + long_target + b" HTTP/1.1\r\nHost: h\r\n\r\n"), 414)
        self.assertEqual(self.status(b"GET " + long_target), 414)

    def test_bare_lf_head(self):
        """
        A head written with bare LFs is a 400, not a wait for ever.
        """
        self.assertEqual(self.status(b"GET / HTTP/1.1\nHost: h\n\n"), 400)

    def test_transfer_encoding_in_http10(self):
        """
        HTTP/1.0 has no Transfer-Encoding; a request using it is a 400.
        """
        self.assertEqual(self.status(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400)

    def test_forbidden_trailers_dropped(self):
        """
        Trailer fields that would change framing or routing are not forwarded.
        """
        channel, _ = self.proxy.client()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
        upstream = self.proxy.accept_upstream()
        channel.dataReceived(b"0\r\nContent-Length: 5\r\nHost: evil\r\nX-Checksum: 1\r\n\r\n")
        self.assertTrue(upstream.value().endswith(b"0\r\nX-Checksum: 1\r\n\r\n"))


class ExpectContinueTests(unittest.TestCase):
    EXPECT = b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"

    def test_proxy_sends_continue_when_server_does_not(self):
        """
        A server that ignores Expect does not leave the client waiting: the
        proxy sends 100 after a second, and drops a late one from the server.
        """
        proxy = ProxyHarness(self)
        channel, client = proxy.client()
        channel.dataReceived(self.EXPECT)
        upstream = proxy.accept_upstream()
        proxy.reactor.advance(0.9)
        self.assertEqual(client.value(), b"")
        proxy.reactor.advance(0.1)
        self.assertEqual(client.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        upstream.protocol.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\n")
        channel.dataReceived(b"hi")
        upstream.protocol.dataReceived(OK)
        self.assertEqual(client.value().count(b"100 Continue"), 1)
        self.assertTrue(upstream.value().endswith(b"\r\n\r\nhi"))

    def test_server_answers_first(self):
        """
        A final answer before any 100 (e.g. a refusal) means no 100 at all.
        """
        proxy = ProxyHarness(self)
        channel, client = proxy.client()
        channel.dataReceived(self.EXPECT)
        upstream = proxy.accept_upstream()
        upstream.protocol.dataReceived(b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n")
        proxy.reactor.advance(5)
        self.assertNotIn(b"100 Continue", client.value())
        self.assertEqual(parse_response(client.value())[0], 417)


class RetryPolicyTests(unittest.TestCase):
    def retried(self, request):
        proxy = ProxyHarness(self)
        channel, client = proxy.client()
        channel.dataReceived(GET)
        first = proxy.accept_upstream()
        first.protocol.dataReceived(OK)
        attempts = len(proxy.reactor.tcpClients)
        channel.dataReceived(request)
        first.loseConnection()
        return len(proxy.reactor.tcpClients) > attempts

    def test_idempotent_methods_without_body(self):
        """
        PUT and DELETE are idempotent: without a body they are retried once.
        """
        self.assertTrue(self.retried(b"DELETE /x HTTP/1.1\r\nHost: h\r\n\r\n"))
        self.assertTrue(self.retried(b"PUT /x HTTP/1.1\r\nHost: h\r\n\r\n"))

    def test_idempotency_key(self):
        """
        An Idempotency-Key makes a POST without a body safe to repeat.
        """
        self.assertTrue(self.retried(b"POST /x HTTP/1.1\r\nHost: h\r\nIdempotency-Key: k1\r\n\r\n"))
        self.assertFalse(self.retried(b"POST /x HTTP/1.1\r\nHost: h\r\n\r\n"))

    def test_body_never_replayed(self):
        """
        A request with a body is never sent twice, whatever its method.
        """
        self.assertFalse(self.retried(b"PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx"))


class ReadSizeTests(unittest.TestCase):
    def test_large_response_read_in_large_pieces(self):
        """
        While a large response body streams, its upstream connection is read
        in large pieces; small messages keep Twisted's usual size.
        """
        from origdst.flow import BULK_READ, SMALL_READ

        proxy = ProxyHarness(self)
        channel, client = proxy.client()
        channel.dataReceived(GET)
        upstream = proxy.accept_upstream()
        upstream.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\nx")
        self.assertEqual(upstream.bufferSize, BULK_READ)
        upstream.protocol.dataReceived(b"x" * 9999999)
        self.assertEqual(upstream.bufferSize, SMALL_READ)
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n")
        self.assertEqual(client.bufferSize, BULK_READ)
        channel.dataReceived(b"y" * 1000000)
        self.assertEqual(client.bufferSize, SMALL_READ)
