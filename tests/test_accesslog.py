"""
Tests of the access log: one line per request, whatever way the request
ends, in Envoy's default format or as JSON, with Envoy's response flags.
"""

import io
import json
import os
import re
import signal
import uuid

from twisted.internet.error import TimeoutError
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial import unittest

from origdst import accesslog, tap
from origdst import replies
from origdst.accesslog import AccessLog
from origdst.sockopt import NoOriginalDestination

from tests.helpers import DEST, ENVOY_LINE, GET, OK, RESET, ProxyHarness, capture_log, parse_response

#: A response head and the first bytes of its body.
PARTIAL = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab"

JSON_KEYS = {
    "start_time", "method", "path", "protocol", "response_code", "response_flags",
    "bytes_received", "bytes_sent", "duration", "upstream_service_time",
    "x_forwarded_for", "user_agent", "request_id", "authority", "upstream_host",
    "response_code_details", "downstream_remote_address", "upstream_request_attempt_count",
}


class Harness(ProxyHarness):
    """
    The in-memory proxy with its access log written to a string.
    """

    def __init__(self, test, format="envoy", **settings):
        ProxyHarness.__init__(self, test, **settings)
        self.out = io.StringIO()
        self.factory.access_log = AccessLog("-", format, out=self.out)

    def lines(self):
        return self.out.getvalue().splitlines(True)

    def records(self):
        """
        The lines parsed: JSON objects, or dicts of the text format's fields.
        """
        records = []
        for line in self.lines():
            if self.factory.access_log.format == "json":
                records.append(json.loads(line))
            else:
                match = ENVOY_LINE.match(line)
                if match is None:
                    raise AssertionError("not Envoy's default format: %r" % (line,))
                records.append(match.groupdict())
        return records


class LineTests(unittest.TestCase):
    """
    The lines of requests answered by the upstream.
    """

    def setUp(self):
        self.proxy = Harness(self, request_timeout=15)
        self.log = capture_log(self)

    def test_envoy_format(self):
        """
        A proxied request is one line in Envoy's default format: start time,
        request line, status, no flag, body bytes each way, duration,
        upstream service time, and the request's headers, with the request
        id it went upstream with.
        """
        self.proxy.reactor.advance(1700000000.25)
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        upstream = self.proxy.accept_upstream()
        self.proxy.reactor.advance(0.012)
        upstream.protocol.dataReceived(OK)
        self.proxy.reactor.advance(1)
        [line] = self.proxy.lines()
        sent_id = re.search(rb"x-request-id: (\S+)\r\n", upstream.value()).group(1).decode()
        uuid.UUID(sent_id)
        self.assertEqual(
            line,
            '[2023-11-14T22:13:20.250Z] "GET /a?b=1 HTTP/1.1" 200 - 0 5 12 12 "-" "t" '
            '"%s" "10.250.0.3" "10.250.0.3:80"\n' % (sent_id,),
        )

    def test_json_format(self):
        """
        The JSON format has the same fields, typed, plus the details, the
        client's address and the attempt count.
        """
        proxy = Harness(self, "json")
        channel, client = proxy.client()
        channel.dataReceived(
            b"POST /p HTTP/1.1\r\nHost: h:80\r\nX-Forwarded-For: 1.2.3.4\r\n"
            b"X-Request-Id: abc\r\nContent-Length: 3\r\n\r\nxyz"
        )
        upstream = proxy.accept_upstream()
        upstream.protocol.dataReceived(OK)
        [record] = proxy.records()
        self.assertEqual(set(record), JSON_KEYS)
        self.assertEqual(
            {k: v for k, v in record.items() if k not in ("start_time", "duration")},
            {
                "method": "POST",
                "path": "/p",
                "protocol": "HTTP/1.1",
                "response_code": 200,
                "response_flags": "-",
                "response_code_details": "via_upstream",
                "bytes_received": 3,
                "bytes_sent": 5,
                "upstream_service_time": 0,
                "x_forwarded_for": "1.2.3.4",
                "user_agent": None,
                "request_id": "abc",
                "authority": "h:80",
                "upstream_host": "10.250.0.3:80",
                "downstream_remote_address": "10.250.0.2:40000",
                "upstream_request_attempt_count": 1,
            },
        )

    def test_one_line_per_pipelined_request(self):
        """
        Pipelined requests get a line each, in order, when each ends.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET.replace(b"/a?b=1", b"/1") + GET.replace(b"/a?b=1", b"/2"))
        upstream = self.proxy.accept_upstream()
        upstream.protocol.dataReceived(OK)
        self.assertEqual(len(self.proxy.lines()), 1)
        upstream.protocol.dataReceived(OK)
        self.assertEqual([r["path"] for r in self.proxy.records()], ["/1", "/2"])

    def test_bodies_counted_decoded(self):
        """
        Bytes received and sent count body bytes, without chunk framing.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(
            b"PUT / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n"
        )
        upstream = self.proxy.accept_upstream()
        channel.dataReceived(b"5\r\npedia\r\n0\r\n\r\n")
        upstream.protocol.dataReceived(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        )
        [record] = self.proxy.records()
        self.assertEqual(
            (record["response_code"], record["bytes_received"], record["bytes_sent"]),
            ("201", "9", "3"),
        )

    def test_quoting(self):
        """
        Header values are logged as UTF-8 where they are, with escapes for
        other bytes and for quotes, so every line still parses.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(
            b'GET / HTTP/1.1\r\nHost: h\r\nUser-Agent: say "h\xc3\xa9" \\ \xff\r\n\r\n'
        )
        self.proxy.accept_upstream().protocol.dataReceived(OK)
        [record] = self.proxy.records()
        self.assertEqual(record["user_agent"], 'say \\"h\u00e9\\" \\\\ \\\\xff')

    def test_absolute_form(self):
        """
        An absolute-form request is logged with the path it went upstream
        with, and its authority.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(b"GET http://10.250.0.3/x?y HTTP/1.1\r\nHost: other\r\n\r\n")
        self.proxy.accept_upstream().protocol.dataReceived(OK)
        [record] = self.proxy.records()
        self.assertEqual((record["path"], record["authority"]), ("/x?y", "10.250.0.3"))

    def retried(self):
        """
        A second request on a pooled connection the server has just closed,
        so that it is sent again on a fresh one.

        @return: the harness and the fresh upstream connection.
        """
        proxy = Harness(self, "json")
        channel, client = proxy.client()
        channel.dataReceived(GET)
        first = proxy.accept_upstream()
        first.protocol.dataReceived(OK)
        channel.dataReceived(GET)
        first.loseConnection()
        return proxy, proxy.accept_upstream(local_port=50001)

    def test_retried_request(self):
        """
        A request sent again after a reused connection was found closed is
        one line, with two attempts and no flag when the retry succeeds.
        """
        proxy, fresh = self.retried()
        fresh.protocol.dataReceived(OK)
        records = proxy.records()
        self.assertEqual(len(records), 2)
        self.assertEqual(
            (records[1]["response_code"], records[1]["response_flags"],
             records[1]["upstream_request_attempt_count"]),
            (200, "-", 2),
        )

    def test_retry_limit(self):
        """
        When the retry fails too, the 503 carries Envoy's URX besides the
        reason of the failure.
        """
        proxy, fresh = self.retried()
        fresh.loseConnection()
        record = proxy.records()[1]
        self.assertEqual(
            (record["response_code"], record["response_flags"], record["response_code_details"]),
            (503, "UC,URX", "upstream_reset_before_response_started{connection_termination}"),
        )

    def test_head_of_tunnel(self):
        """
        An upgrade is logged when the tunnel opens, with the 101.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(
            b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        upstream = self.proxy.accept_upstream()
        upstream.protocol.dataReceived(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        [record] = self.proxy.records()
        self.assertEqual((record["response_code"], record["response_flags"]), ("101", "-"))
        client.loseConnection()
        self.assertEqual(len(self.proxy.lines()), 1)

    def test_off(self):
        """
        With the log off, no request carries a record.
        """
        proxy = ProxyHarness(self)
        channel, client = proxy.client()
        channel.dataReceived(GET)
        self.assertIsNone(channel.exchange.log)
        self.assertIsNone(channel.log_record)


class FlagTests(unittest.TestCase):
    """
    Each way a request can end has its line, with Envoy's response flag.
    """

    def setUp(self):
        self.proxy = Harness(self, "json", request_timeout=15)
        self.log = capture_log(self)

    def exchange(self, response=None, **settings):
        """
        A GET through a harness of its own, its upstream connection made and,
        when given, fed C{response}.

        @return: the harness, the client's and the upstream's transports.
        """
        proxy = Harness(self, "json", **settings)
        channel, client = proxy.client()
        channel.dataReceived(GET)
        upstream = proxy.accept_upstream()
        if response is not None:
            upstream.protocol.dataReceived(response)
        return proxy, client, upstream

    def only(self, proxy=None):
        [record] = (proxy or self.proxy).records()
        return record

    def assertEnding(self, status, flags, details, proxy=None):
        record = self.only(proxy)
        self.assertEqual(
            (record["response_code"], record["response_flags"], record["response_code_details"]),
            (status, flags, details),
        )
        return record

    def test_connect_failure(self):
        """
        503 UF for a refused connection, with the host it was going to.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        self.proxy.refuse_upstream()
        record = self.assertEnding(
            503, "UF", "upstream_reset_before_response_started{connection_failure}"
        )
        self.assertEqual(record["upstream_host"], "10.250.0.3:80")
        self.assertEqual(record["bytes_sent"], len(RESET + b"connection failure"))

    def test_connect_timeout(self):
        """
        503 UF for a connect timeout too, as in Envoy.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        self.proxy.refuse_upstream(TimeoutError())
        self.assertEnding(503, "UF", "upstream_reset_before_response_started{connection_timeout}")

    def test_overflow(self):
        """
        503 UO beyond the circuit breakers.
        """
        proxy = Harness(self, "json", max_connections=1, max_pending_requests=2)
        for i in range(3):
            proxy.client(peer=("10.250.0.2", 40000 + i))[0].dataReceived(GET)
        self.assertEnding(503, "UO", "upstream_reset_before_response_started{overflow}", proxy)

    def test_request_timeout(self):
        """
        504 UT when no response came within the route timeout.
        """
        proxy, client, upstream = self.exchange(request_timeout=15)
        proxy.reactor.advance(15)
        record = self.assertEnding(504, "UT", "response_timeout", proxy)
        self.assertEqual(record["duration"], 15000)

    def test_late_timeout(self):
        """
        A timeout after the response began: the status sent, UT.
        """
        proxy, client, upstream = self.exchange(PARTIAL, request_timeout=15)
        proxy.reactor.advance(15)
        record = self.assertEnding(200, "UT", "response_timeout", proxy)
        self.assertEqual(record["bytes_sent"], 2)

    def test_upstream_termination(self):
        """
        503 UC when the upstream closes before the response.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        self.proxy.accept_upstream().loseConnection()
        self.assertEnding(
            503, "UC", "upstream_reset_before_response_started{connection_termination}"
        )

    def test_late_upstream_termination(self):
        """
        UC with the status sent when the upstream goes away mid-body.
        """
        proxy, client, upstream = self.exchange(PARTIAL)
        upstream.loseConnection()
        self.assertEnding(
            200, "UC", "upstream_reset_after_response_started{connection_termination}", proxy
        )

    def test_upstream_protocol_error(self):
        """
        502 UPE for a malformed response, UPE with the status sent for one
        that goes wrong in its body.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        self.proxy.accept_upstream().protocol.dataReceived(b"HTTP/1.1 2000 OK\r\n\r\n")
        self.assertEnding(502, "UPE", "upstream_reset_before_response_started{protocol_error}")
        proxy = self.exchange(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")[0]
        self.assertEnding(
            200, "UPE", "upstream_reset_after_response_started{protocol_error}", proxy
        )

    def test_malformed_request(self):
        """
        400 DPE, Envoy's body, and what was wrong in the details.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n")
        status, _, body, _ = parse_response(client.value())
        self.assertEqual((status, body), (400, b"Bad Request"))
        record = self.assertEnding(400, "DPE", "http1.malformed_header_field")
        self.assertEqual((record["method"], record["path"]), (None, None))
        self.assertEqual(record["upstream_request_attempt_count"], 0)

    def test_parsed_but_refused(self):
        """
        A request refused after its head was parsed is logged with its
        request line.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(b"GET /x HTTP/1.1\r\n\r\n")
        record = self.assertEnding(400, "DPE", "http1.missing_host_header")
        self.assertEqual((record["method"], record["path"]), ("GET", "/x"))

    def test_headers_too_large(self):
        """
        431 DPE with Envoy's body.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(b"GET / HTTP/1.1\r\nX: " + b"a" * 70000)
        status, _, body, _ = parse_response(client.value())
        self.assertEqual((status, body), (431, b"Request Header Fields Too Large"))
        self.assertEnding(431, "DPE", "http1.request_headers_too_large")

    def test_bad_chunk(self):
        """
        A request body that turns out malformed: DPE, with the bytes that
        came before it.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\nzz\r\n"
        )
        record = self.assertEnding(400, "DPE", "http1.invalid_chunk_size")
        self.assertEqual(record["bytes_received"], 2)

    def test_client_disconnect(self):
        """
        DC with status 0 when the client leaves before the response, with
        the status sent when it leaves during it.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        self.proxy.accept_upstream()
        client.loseConnection()
        self.assertEnding(0, "DC", "downstream_remote_disconnect")
        proxy, client, upstream = self.exchange(PARTIAL)
        client.loseConnection()
        self.assertEnding(200, "DC", "downstream_remote_disconnect", proxy)

    def test_client_disconnect_while_pending(self):
        """
        DC also for a request still waiting for a connection.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        client.loseConnection()
        self.assertEnding(0, "DC", "downstream_remote_disconnect")

    def test_client_half_close_mid_request(self):
        """
        A client that stops sending half-way through its body: DC.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\nab")
        channel.readConnectionLost()
        self.assertEnding(0, "DC", "downstream_remote_disconnect")

    def test_stream_idle_timeout(self):
        """
        408 SI when nothing moves before the response, SI with the status
        sent after it began.
        """
        for response, status in ((None, 408), (PARTIAL, 200)):
            proxy = self.exchange(response, stream_idle_timeout=5, request_timeout=0)[0]
            proxy.reactor.advance(5)
            self.assertEnding(status, "SI", "stream_idle_timeout", proxy)

    def test_no_original_destination(self):
        """
        503 UH for a connection that was not redirected.
        """
        channel, client = self.proxy.client(destination=NoOriginalDestination("none"))
        channel.dataReceived(GET)
        record = self.assertEnding(503, "UH", "no_healthy_upstream")
        self.assertIsNone(record["upstream_host"])

    def test_no_envoy_flag(self):
        """
        The policy's 403s, the loop's 508 and the request headers timeout
        have no Envoy flag: their details say what they are.
        """
        for settings, destination, status, details in [
            ({"deny": ("10.250.0.3/32",)}, DEST, 403, "egress_policy_denied"),
            ({"allow_source": ("127.0.0.0/8",)}, DEST, 403, "source_not_allowed"),
            ({}, ("127.0.0.1", 4999), 508, "redirect_loop_detected"),
        ]:
            proxy = Harness(self, "json", **settings)
            proxy.client(destination=destination)[0].dataReceived(GET)
            self.assertEnding(status, "-", details, proxy)
        proxy = Harness(self, "json", request_headers_timeout=10)
        proxy.client()[0].dataReceived(b"GET / HTTP/1.1\r\n")
        proxy.reactor.advance(10)
        self.assertEnding(408, "-", "request_header_timeout", proxy)

    def test_head_local_reply(self):
        """
        A local reply to HEAD sends no body, and logs none.
        """
        channel, client = self.proxy.client()
        channel.dataReceived(GET.replace(b"GET", b"HEAD"))
        self.proxy.refuse_upstream()
        self.assertEqual(self.only()["bytes_sent"], 0)

    def test_reset_flags(self):
        """
        Every reset reason of origdst's 503s and 502 has its flag.
        """
        for reply, flags in [
            (replies.CONNECT_FAILURE, "UF"),
            (replies.CONNECT_TIMEOUT, "UF"),
            (replies.CONNECTION_TERMINATION, "UC"),
            (replies.OVERFLOW, "UO"),
            (replies.PROTOCOL_ERROR, "UPE"),
        ]:
            self.assertTrue(reply.body.startswith(RESET))
            self.assertEqual(reply.ending()[0], flags)

    def test_flag_not_read_from_body(self):
        """
        The flag of a local reply comes from the catalogue: rewording the
        reply's body does not change what the access log says of it.
        """
        self.patch(replies.CONNECT_FAILURE, "body", b"could not connect")
        channel, client = self.proxy.client()
        channel.dataReceived(GET)
        self.proxy.refuse_upstream()
        line = self.only()
        self.assertEqual(
            (line["response_code"], line["response_flags"], line["bytes_sent"]),
            (503, "UF", len(b"could not connect")),
        )


class FileTests(unittest.TestCase):
    """
    The log file: opened once, appended to, reopened for logrotate.
    """

    def setUp(self):
        self.dir = self.mktemp()
        os.mkdir(self.dir)
        self.path = os.path.join(self.dir, "access.log")

    def request(self, log):
        proxy = ProxyHarness(self)
        proxy.factory.access_log = log
        channel, client = proxy.client()
        channel.dataReceived(GET)
        proxy.accept_upstream().protocol.dataReceived(OK)

    def test_reopen(self):
        """
        After logrotate moved the file, reopening starts a new one; each
        line is on disk as soon as it is written.
        """
        log = AccessLog(self.path)
        self.addCleanup(log.close)
        self.request(log)
        with open(self.path) as f:
            self.assertEqual(len(f.readlines()), 1)
        os.rename(self.path, self.path + ".1")
        log.reopen()
        self.request(log)
        with open(self.path) as f, open(self.path + ".1") as old:
            self.assertEqual((len(f.readlines()), len(old.readlines())), (1, 1))

    def test_sighup(self):
        """
        The service reopens the file on SIGHUP, through the reactor, and
        closes it when stopped.
        """
        log = AccessLog(self.path)
        reactor = MemoryReactorClock()
        calls = []
        reactor.callFromThread = lambda f, *a: calls.append(f)
        service = accesslog.AccessLogService(log, reactor)
        previous = signal.getsignal(signal.SIGHUP)
        service.startService()
        try:
            os.kill(os.getpid(), signal.SIGHUP)
        finally:
            service.stopService()
        self.assertEqual(calls, [log.reopen])
        self.assertIsNone(log.out)
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)

    def test_unopenable(self):
        """
        A file that cannot be opened stops the start with a plain message.
        """
        options = tap.Options()
        options.parseOptions(["--access-log", os.path.join(self.dir, "no", "such")])
        with self.assertRaises(SystemExit) as caught:
            accesslog.from_settings(options.settings)
        self.assertIn("cannot open the access log", str(caught.exception))

    def test_options(self):
        """
        Off by default; --access-log and --access-log-format turn it on and
        choose the format; makeService wires it to the listener.
        """
        options = tap.Options()
        options.parseOptions([])
        self.assertIsNone(accesslog.from_settings(options.settings))
        options = tap.Options()
        options.parseOptions(
            ["--access-log", self.path, "--access-log-format", "json", "--admin", "none"]
        )
        service = tap.makeService(options, reactor=MemoryReactorClock())
        [factory] = [s.factory for s in service if isinstance(s, tap.ListenerService)]
        self.assertEqual(
            (factory.access_log.path, factory.access_log.format), (self.path, "json")
        )
        factory.access_log.close()
        options = tap.Options()
        self.assertRaises(usage.UsageError, options.parseOptions, ["--access-log-format", "xml"])


class LocalReplyTests(unittest.TestCase):
    """
    Local replies never land inside another response.
    """

    def test_bad_body_after_response_began(self):
        """
        A request body that goes bad while the response already streams
        cuts the connection instead of writing a 400 into that response;
        the line keeps the status sent, with DPE.
        """
        proxy = Harness(self, "json")
        capture_log(self)
        channel, client = proxy.client()
        channel.dataReceived(
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n"
        )
        upstream = proxy.accept_upstream()
        upstream.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        sent = client.value()
        channel.dataReceived(b"zz\r\n")
        self.assertEqual(client.value(), sent)
        self.assertFalse(client.connected)
        self.assertTrue(upstream.disconnected)
        [record] = proxy.records()
        self.assertEqual(
            (record["response_code"], record["response_flags"], record["response_code_details"]),
            (200, "DPE", "http1.invalid_chunk_size"),
        )
