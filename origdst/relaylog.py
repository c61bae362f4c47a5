"""
The TCP relay's access-log lines, in the shape of Envoy's tcp_proxy.

A relayed connection (L{origdst.tcp.Relay}) is not a request: it has no
method, path or status, so its line leaves those unset, and a TLS
connection's server name takes the authority's place and the ALPN protocols
offered the protocol's. The line goes to the proxy's one
L{origdst.accesslog.AccessLog}, in its format.

It imports only L{origdst.accesslog} and L{origdst.addresses}.
"""

import json

from origdst.accesslog import envoy_line
from origdst.addresses import optional

# The ways a relayed TCP connection ends otherwise than C{via_upstream}
# (origdst.tcp), as (flags, details) pairs.
CONNECT_FAILED = ("UF", "upstream_connection_failure")
CONNECT_TIMED_OUT = ("UF", "upstream_connection_timeout")
IDLE_TIMEOUT = ("SI", "idle_timeout")
SNI_DENIED = ("-", "sni_policy_denied")

# The fields a relayed connection has no value for.
_HTTP_ONLY = ("method", "path", "upstream_service_time", "x_forwarded_for", "user_agent", "request_id")


def write(access_log, relay, now):
    """
    A relayed TCP connection ended: one line, as Envoy's tcp_proxy logs it
    (JSON: with C{requested_server_name} and C{alpn} besides).

    @param access_log: the L{origdst.accesslog.AccessLog}.
    @param relay: the L{origdst.tcp.Relay}.
    """
    if access_log.out is None:
        return
    hello = relay.hello
    sni = hello.server_name if hello is not None else None
    alpn = ",".join(hello.alpn) if hello is not None and hello.alpn else None
    flags, details = relay.ending
    v = dict.fromkeys(_HTTP_ONLY)
    v.update(
        start_time=access_log.start_time(relay.started),
        protocol=alpn,
        response_code=0,
        response_flags=flags,
        bytes_received=relay.received,
        bytes_sent=relay.sent,
        duration=max(0, int((now - relay.started) * 1000)),
        authority=sni,
        upstream_host=relay.key,
        response_code_details=details,
        downstream_remote_address=optional(relay.peer),
        upstream_request_attempt_count=1,
        requested_server_name=sni,
        alpn=list(hello.alpn) if hello is not None else None,
    )
    json_line = access_log.format == "json"
    access_log.emit(json.dumps(v, separators=(",", ":")) + "\n" if json_line else envoy_line(v))
