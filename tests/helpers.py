"""
What several test modules share: the in-memory proxy harness, canned
messages, a response parser, log capture, the access log's line pattern and
the in-memory rendering of admin pages.
"""

import json
import re
from urllib.parse import parse_qs

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyRequest

from origdst import logs
from origdst.cluster import OriginalDstCluster
from origdst.config import Settings
from origdst.listener import ListenerFactory
from testbed.certs import Authority  # noqa: F401 (the tests' throwaway CA)


def capture_log(test):
    """
    @return: a list that receives the formatted origdst log messages while
        C{test} runs, at debug level.
    """
    messages = []

    def observer(event):
        if event.get("log_namespace", "").startswith("origdst"):
            messages.append(formatEvent(event))

    previous = logs.level()
    logs.set_level("debug")
    globalLogPublisher.addObserver(observer)
    test.addCleanup(globalLogPublisher.removeObserver, observer)
    test.addCleanup(logs.set_level, previous)
    return messages


DEST = ("10.250.0.3", 80)
GET = b"GET /a?b=1 HTTP/1.1\r\nHost: 10.250.0.3\r\nUser-Agent: t\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nServer: up\r\nContent-Length: 5\r\n\r\nhello"
RESET = b"upstream connect error or disconnect/reset before headers. reset reason: "


def parse_response(data):
    """
    Split one response off C{data}: C{(status, headers dict, body, rest)};
    bodies are Content-Length or chunked (decoded).
    """
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    if b"content-length" in headers:
        n = int(headers[b"content-length"][0])
        return status, headers, rest[:n], rest[n:]
    if headers.get(b"transfer-encoding") == [b"chunked"]:
        body = b""
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                _, _, rest = rest.partition(b"\r\n")
                return status, headers, body, rest
            body += rest[:size]
            rest = rest[size + 2 :]
    return status, headers, rest, b""


class ProxyHarness:
    """
    One proxy (cluster + listener factory) on a memory reactor, with helpers
    to open client connections and play the upstream server.
    """

    def __init__(self, test, **settings):
        self.reactor = MemoryReactorClock()
        self.settings = Settings(**settings)
        self.cluster = OriginalDstCluster(self.settings, self.reactor)
        self.destinations = {}
        self.factory = ListenerFactory(
            self.cluster, self.settings, self.reactor, original_destination=self.lookup
        )
        self.dialled = 0

    def lookup(self, handle):
        result = self.destinations.get(handle, DEST)
        if isinstance(result, Exception):
            raise result
        return result

    def client(self, peer=("10.250.0.2", 40000), destination=DEST, local=("127.0.0.1", 4999)):
        transport = StringTransportWithDisconnection(
            hostAddress=IPv4Address("TCP", *local), peerAddress=IPv4Address("TCP", *peer)
        )
        transport.getHandle = lambda: transport
        self.destinations[transport] = destination
        # The HTTP side itself: tests/test_detect.py covers the detection
        # that picks it.
        channel = self.factory.http_channel()
        transport.protocol = channel
        channel.makeConnection(transport)
        return channel, transport

    def new_attempts(self):
        attempts = self.reactor.tcpClients[self.dialled :]
        self.dialled = len(self.reactor.tcpClients)
        return attempts

    def accept_upstream(self, local_port=50000):
        """
        Complete the newest connection attempt: @return: its transport.
        """
        host, port, factory, timeout, bind = self.reactor.tcpClients[-1]
        proto = factory.buildProtocol(None)
        transport = StringTransportWithDisconnection(
            hostAddress=IPv4Address("TCP", "10.250.0.2", local_port),
            peerAddress=IPv4Address("TCP", host, port),
        )
        transport.protocol = proto
        proto.makeConnection(transport)
        return transport

    def refuse_upstream(self, reason=None):
        host, port, factory, timeout, bind = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(None, Failure(reason or ConnectionRefusedError()))


UPGRADE = (
    b"GET /chat HTTP/1.1\r\nHost: 10.250.0.3\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
SWITCH = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)


#: Envoy's default format, as a pattern with a group per field.
ENVOY_LINE = re.compile(
    r'^\[(?P<start_time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\] '
    r'"(?P<method>\S+) (?P<path>\S+) (?P<protocol>\S+)" '
    r"(?P<response_code>\d+) (?P<response_flags>\S+) (?P<bytes_received>\d+) "
    r"(?P<bytes_sent>\d+) (?P<duration>\d+) (?P<upstream_service_time>\S+) "
    r'"(?P<x_forwarded_for>[^"]*)" "(?P<user_agent>(?:[^"\\]|\\.)*)" "(?P<request_id>[^"]*)" '
    r'"(?P<authority>[^"]*)" "(?P<upstream_host>[^"]*)"\n$'
)


class Response:
    """
    A response rendered by L{fetch}.
    """

    def __init__(self, code, headers, body):
        self.code = code
        self.headers = headers
        self.body = body

    def header(self, name):
        values = self.headers.getRawHeaders(name)
        return values[0].decode("latin-1") if values else None

    def text(self):
        return self.body.decode("utf-8")

    def json(self):
        return json.loads(self.body)


#: What a shell's request that changes something carries (see origdst.adminguard).
CHANGE = {b"x-origdst-admin": b"1"}


def fetch(site, url, method=b"GET", headers=None):
    """
    Render C{url} (path and query) of C{site} in memory, through the site's
    own resource lookup.
    """
    path, _, query = url.partition("?")
    request = DummyRequest(path.encode("ascii").split(b"/")[1:])
    request.method = method
    request.uri = url.encode("ascii")
    for name, value in (headers or {}).items():
        request.requestHeaders.setRawHeaders(name, [value])
    request.args = parse_qs(query.encode("ascii"), keep_blank_values=True)
    resource = site.getResourceFor(request)
    body = resource.render(request)
    return Response(request.responseCode or 200, request.responseHeaders, body)

