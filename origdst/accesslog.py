"""
The access log: one line per request, in Envoy's default format or as JSON.

Off by default. With C{--access-log PATH} (or C{-} for stdout) each request
gets one line when it ends: its response complete, a local reply sent, or its
connection gone. The default format is Envoy's default format string::

    [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%"
    %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
    %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
    "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"

so tools that parse Envoy's log parse origdst's. C{--access-log-format json}
writes one JSON object per line with the same fields, typed (numbers as
numbers, unset values as null), plus C{response_code_details},
C{downstream_remote_address} and C{upstream_request_attempt_count}.

The data path pays for the log only when it is on: L{origdst.downstream} and
L{origdst.exchange} check for a L{AccessLog} (or a L{Record}) before doing
anything for it, and the line is built only when the request ends. A log
file is opened once, line-buffered (one write per line), and reopened on
SIGHUP for logrotate. A local reply's flags and details come from its
L{origdst.replies.Reply}, never from its text. The TCP relay's lines, in
the shape of Envoy's tcp_proxy, are L{origdst.relaylog}'s.

It imports only L{origdst.logs} and L{origdst.addresses}.
"""

import json
import signal
import sys
import time

from twisted.application.service import Service

from origdst.addresses import optional
from origdst.logs import logger

log = logger("origdst.accesslog")

FORMATS = ("envoy", "json")

# Response flags (Envoy's %RESPONSE_FLAGS%) and response code details
# (%RESPONSE_CODE_DETAILS%) for the ways an exchange ends without its
# response completing; each is a (flags, details) pair. Local replies carry
# their own (origdst.replies).
VIA_UPSTREAM = ("-", "via_upstream")
DOWNSTREAM_DISCONNECT = ("DC", "downstream_remote_disconnect")
LOCAL_DISCONNECT = ("LR", "downstream_local_disconnect")
LATE_TERMINATION = ("UC", "upstream_reset_after_response_started{connection_termination}")
LATE_PROTOCOL_ERROR = ("UPE", "upstream_reset_after_response_started{protocol_error}")
LATE_TIMEOUT = ("UT", "response_timeout")
LATE_IDLE_TIMEOUT = ("SI", "stream_idle_timeout")
# The TCP relay's own endings are origdst.relaylog's.


class Record:
    """
    What the access log needs of one request, gathered while it is under
    way; built only when the log is on.

    @ivar fields: the request's header fields as received.
    @ivar status: the status sent to the client, 0 until a response began.
    @ivar received: request body bytes received (decoded from chunks).
    @ivar sent: response body bytes sent (before chunk framing).
    @ivar ending: C{(flags, details)}, once known.
    @ivar written: the line has been written.
    """

    __slots__ = (
        "start",
        "method",
        "target",
        "protocol",
        "fields",
        "peer",
        "status",
        "service_ms",
        "received",
        "sent",
        "ending",
        "written",
    )

    def __init__(self, start, method, target, protocol, fields, peer):
        self.start = start
        self.method = method
        self.target = target
        self.protocol = protocol
        self.fields = fields
        self.peer = peer
        self.status = 0
        self.service_ms = None
        self.received = 0
        self.sent = 0
        self.ending = None
        self.written = False

    def response(self, status, elapsed):
        """
        The response head arrived, C{elapsed} seconds after the request went
        upstream (the C{x-envoy-upstream-service-time} sent with it).
        """
        self.status = status
        self.service_ms = int(elapsed * 1000)


class AccessLog:
    """
    The access log of one proxy process.

    @ivar path: the file written, or C{"-"} for stdout.
    """

    def __init__(self, path, format="envoy", out=None):
        """
        @param out: a text file to write to instead of opening C{path} (tests).
        """
        if format not in FORMATS:
            raise ValueError(f"unknown access log format {format!r}")
        self.path = path
        self.format = format
        self._render = self.render_json if format == "json" else self.render_envoy
        self._flush = False
        self._second = None
        self._stamp = ""
        if out is not None:
            self.out = out
        elif path == "-":
            # The process's own stdout: twistd points sys.stdout at its log.
            self.out = sys.__stdout__ or sys.stdout
            self._flush = True
        else:
            self.out = self._open()

    def _open(self):
        # Line-buffered: each line is one write(2), so nothing is lost to a
        # crash and lines of concurrent writers do not interleave.
        return open(self.path, "a", encoding="utf-8", buffering=1)

    def reopen(self):
        """
        Open the file again, for logrotate (C{postrotate: kill -HUP}); when
        that fails, say so and keep writing to the file already open.
        """
        if self.path == "-" or self.out is None:
            return
        try:
            new = self._open()
        except OSError as e:
            log.error(
                "Cannot reopen the access log {path}: {error}; still writing to the old file.",
                path=self.path,
                error=e.strerror,
            )
            return
        old, self.out = self.out, new
        old.close()

    def close(self):
        if self.path != "-" and self.out is not None:
            self.out.close()
            self.out = None

    # Hooks called from the data path, only when the log is on.

    def begin(self, channel, method, target, version, fields):
        """
        A request head was parsed.

        @return: its L{Record}.
        """
        return Record(channel.reactor.seconds(), method, target, version, fields, channel.peer)

    def local_reply(self, channel, reply, method):
        """
        The proxy answered the current request itself with C{reply}, an
        L{origdst.replies.Reply}: log it now.
        """
        exchange = channel.exchange
        record = exchange.log if exchange is not None else channel.log_record
        if record is None or record.written:
            # The head could not be parsed, so there is nothing else to log.
            record = Record(channel.reactor.seconds(), None, None, None, (), channel.peer)
        record.status = reply.status
        record.sent = 0 if method == b"HEAD" else len(reply.body)
        record.ending = reply.ending(exchange is not None and exchange.retried)
        self.write(record, channel, exchange)

    def end(self, exchange, ending=VIA_UPSTREAM):
        """
        An exchange ended: its response is complete, or it was cut short.

        @param ending: C{(flags, details)} used unless the exchange already
            knows why it ended (a late upstream failure sets C{ending} on its
            record first).
        """
        record = exchange.log
        if record is not None and not record.written:
            if ending is LOCAL_DISCONNECT and exchange.channel.read_closed:
                # Closed because the client had stopped sending mid-request.
                ending = DOWNSTREAM_DISCONNECT
            if record.ending is None:
                record.ending = ending
            self.write(record, exchange.channel, exchange)

    # Rendering.

    def write(self, record, channel, exchange):
        record.written = True
        out = self.out
        if out is None:
            return
        self.emit(self._render(record, channel.reactor.seconds(), exchange))

    def emit(self, line):
        """
        Write one whole line (the TCP relay's too, L{origdst.relaylog}).
        """
        self.out.write(line)
        if self._flush:
            self.out.flush()

    def _values(self, record, now, exchange):
        """
        The fields of a line, as Python values (C{None} when unset).
        """
        authority = ua = xff = request_id = None
        for name, value in record.fields:
            key = name.lower()
            if key == b"host":
                authority = value
            elif key == b"user-agent":
                ua = value
            elif key == b"x-forwarded-for":
                xff = value if xff is None else xff + b"," + value
            elif key == b"x-request-id" and request_id is None:
                request_id = value
        target = record.target
        if target is not None and target[:7].lower() == b"http://":
            # Absolute-form: logged as Envoy does, as the path it is sent
            # upstream with and its authority.
            rest = target[7:]
            cut = min([i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0] or [len(rest)])
            authority, target = rest[:cut], rest[cut:]
            if not target.startswith(b"/"):
                target = b"/" + target
        upstream = None
        attempts = 0
        if exchange is not None:
            # The id the request went upstream with (generated if need be).
            head = exchange.upstream_head
            at = head.find(b"\r\nx-request-id: ")
            if at >= 0:
                request_id = head[at + 16 : head.find(b"\r\n", at + 16)]
            upstream = exchange.pool.key
            attempts = 2 if exchange.retried else 1
        start = record.start
        flags, details = record.ending or VIA_UPSTREAM
        return {
            "start_time": self.start_time(start),
            "method": _text(record.method),
            "path": _text(target),
            "protocol": _text(record.protocol),
            "response_code": record.status,
            "response_flags": flags,
            "bytes_received": record.received,
            "bytes_sent": record.sent,
            "duration": max(0, int((now - start) * 1000)),
            "upstream_service_time": record.service_ms,
            "x_forwarded_for": _text(xff),
            "user_agent": _text(ua),
            "request_id": _text(request_id),
            "authority": _text(authority),
            "upstream_host": upstream,
            "response_code_details": details,
            "downstream_remote_address": optional(record.peer),
            "upstream_request_attempt_count": attempts,
        }

    def render_envoy(self, record, now, exchange):
        """
        @return: the line in Envoy's default format.
        """
        return envoy_line(self._values(record, now, exchange))

    def render_json(self, record, now, exchange):
        """
        @return: the line as one JSON object.
        """
        return json.dumps(self._values(record, now, exchange), separators=(",", ":")) + "\n"

    def start_time(self, seconds):
        """
        Envoy's START_TIME: UTC, RFC 3339 with milliseconds.
        """
        whole = int(seconds)
        if whole != self._second:
            self._second = whole
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        return "%s.%03dZ" % (self._stamp, int((seconds - whole) * 1000))


def envoy_line(v):
    """
    The values of L{AccessLog._values} in Envoy's default format.
    """
    service = v["upstream_service_time"]
    return '[%s] "%s %s %s" %d %s %d %d %d %s "%s" "%s" "%s" "%s" "%s"\n' % (
        v["start_time"],
        _quoted(v["method"]),
        _quoted(v["path"]),
        _quoted(v["protocol"]),
        v["response_code"],
        v["response_flags"],
        v["bytes_received"],
        v["bytes_sent"],
        v["duration"],
        "-" if service is None else service,
        _quoted(v["x_forwarded_for"]),
        _quoted(v["user_agent"]),
        _quoted(v["request_id"]),
        _quoted(v["authority"]),
        _quoted(v["upstream_host"]),
    )



def _text(value):
    """
    Header bytes as text: UTF-8 where they are, escapes where not.
    """
    if value is None or value == b"":
        return None
    return value.decode("utf-8", "backslashreplace")


def _quoted(text):
    """
    A value for a quoted field of the text format; C{-} when unset.
    """
    if text is None:
        return "-"
    if '"' in text or "\\" in text:
        text = text.replace("\\", "\\\\").replace('"', '\\"')
    return text


def from_settings(settings):
    """
    @return: the L{AccessLog} C{settings} ask for, or C{None} when it is off.
    @raise SystemExit: when the file cannot be opened, so twistd stops with
        a plain message.
    """
    if settings.access_log == "none":
        return None
    try:
        return AccessLog(settings.access_log, settings.access_log_format)
    except OSError as e:
        raise SystemExit(f"origdst: cannot open the access log {settings.access_log}: {e.strerror}")


class AccessLogService(Service):
    """
    Reopens the access log file on SIGHUP (as twistd rotates its own log on
    SIGUSR1) and closes it on shutdown.
    """

    def __init__(self, access_log, reactor):
        self.access_log = access_log
        self.reactor = reactor
        self._previous = None

    def startService(self):
        Service.startService(self)
        if self.access_log.path != "-":
            try:
                self._previous = signal.signal(signal.SIGHUP, self._hangup)
            except ValueError:
                # Not the main thread: no signal handlers to be had.
                self._previous = None

    def _hangup(self, signum, frame):
        self.reactor.callFromThread(self.access_log.reopen)

    def stopService(self):
        Service.stopService(self)
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None
        self.access_log.close()

