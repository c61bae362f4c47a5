"""
The admin interface's defences against the web browsers of the host's own users.

Listening on loopback keeps other hosts out, but not a page open in a browser on
this host: it can make the browser send requests to C{127.0.0.1:9901}. So:

  - B{DNS rebinding}: a page whose name has come to resolve to 127.0.0.1 sends
    that name as C{Host}. The admin answers only a C{Host} naming its own
    address (C{localhost}, C{127.0.0.1}, C{[::1]}, the address the connection
    came to) or a name given with C{--admin-host}; any other gets C{421}.
  - B{Cross-site requests}: a POST that changes something must carry
    C{X-Origdst-Admin: 1}, a header a page on another origin cannot add
    without a CORS preflight, which the admin never grants; and the C{Origin}
    (else the C{Referer}) it carries, if any, must be the admin's own. Else
    C{403}.
  - B{Secrets}: settings that hold credentials are shown redacted.

Each refusal is logged, at most one line a second.
"""

import ipaddress
import re
from urllib.parse import urlsplit

from twisted.internet.address import IPv4Address, IPv6Address

from origdst import config
from origdst.logs import logger

log = logger("origdst.admin")

#: The header a state-changing POST must carry, and its value.
ADMIN_HEADER = b"x-origdst-admin"
ADMIN_HEADER_VALUE = b"1"

#: The names that always mean this host's loopback.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

#: Settings whose values are credentials are marked C{secret} in the
#: settings table (L{origdst.config.SETTINGS}) and shown as L{REDACTED} when
#: set. A setting named like a credential (L{is_secret}) is redacted too, so
#: one added later is safe even if its mark is forgotten.
REDACTED = "[redacted]"
_SECRET_NAME = re.compile(r"password|passwd|secret|token|credential|private-key|api-key")
_UNSET = (None, "", "none", ())

_HOST = re.compile(rb"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]+)(?::([0-9]*))?$")
_MODE = re.compile(r"(?:^|[^\\]):mode=")


def is_secret(option):
    """
    @param option: a setting's name, as on the command line.
    @return: whether its value must never be served (a file's path may be:
        C{*-file} and C{*-path} settings are not secret by their name).
    """
    setting = config.OPTIONS.get(option)
    if setting is not None and setting.secret:
        return True
    return bool(_SECRET_NAME.search(option)) and not option.endswith(("-file", "-path"))


def redact(values):
    """
    @param values: settings by option name.
    @return: the same, with the value of every set secret replaced by
        L{REDACTED} (an unset one keeps its value, so it shows it is unset).
    """
    return {
        option: REDACTED if is_secret(option) and value not in _UNSET else value
        for option, value in values.items()
    }


def listen_description(description):
    """
    A C{unix:} admin endpoint without a C{mode=} gets C{mode=660}: Twisted's
    default, 666, would let every local user change the log level.

    @return: the endpoint description to listen on.
    """
    if description.split(":", 1)[0].lower() == "unix" and not _MODE.search(description):
        return description + ":mode=660"
    return description


def _name(text):
    """
    @return: a host name or address in one spelling: lower case, without a
        trailing dot, an IP address compressed (IPv4-mapped ones as IPv4).
    """
    text = text.lower().rstrip(".")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return text
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def _matches(pattern, name):
    # The patterns --allow-host takes: an exact name or *.domain.
    if pattern.startswith("*."):
        return name.endswith(pattern[1:])
    return name == pattern


def _origin(url):
    """
    @return: C{scheme://host[:port]} of C{url} in one spelling, or C{None}
        when it is not an http(s) URL (such as C{null}).
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = _name(parts.hostname)
    if ":" in host:
        host = "[" + host + "]"
    default = 80 if parts.scheme == "http" else 443
    return parts.scheme + "://" + host + ("" if port in (None, default) else ":%d" % port)


class RefusalLog:
    """
    One log line per refusal, at most one per C{interval}: a page can send
    thousands. The line after a quiet spell says how many were left out.
    """

    def __init__(self, clock, interval=1.0):
        self.clock = clock
        self.interval = interval
        self.last = None
        self.suppressed = 0

    def refused(self, request, code, why):
        now = self.clock.seconds()
        if self.last is not None and now - self.last < self.interval:
            self.suppressed += 1
            return
        suppressed, self.suppressed, self.last = self.suppressed, 0, now
        peer = request.getClientAddress()
        log.warn(
            "Refused admin request {method} {path} from {peer} with {code}: {why}{more}",
            method=request.method.decode("latin-1"),
            path=ascii(request.uri[:200].decode("latin-1"))[1:-1],
            peer=getattr(peer, "host", None) or getattr(peer, "name", None) or "?",
            code=code,
            why=why,
            more=f" ({suppressed} more refused since the last such line)" if suppressed else "",
        )


class AdminGuard:
    """
    The checks every admin request passes (L{misdirected}) and every POST
    that changes something (L{cross_site}).

    @ivar names: host name patterns given with C{--admin-host}.
    """

    def __init__(self, names, clock):
        self.names = tuple(_name(n) for n in names)
        self.refusals = RefusalLog(clock)

    def _refuse(self, request, code, why, advice):
        self.refusals.refused(request, code, why)
        return code, f"{why}.\n{advice}\n"

    def own_name(self, request, name):
        """
        @return: whether the host C{name} (from a C{Host}) is the admin's own.
        """
        name = _name(name)
        if name in LOOPBACK_NAMES or any(_matches(p, name) for p in self.names):
            return True
        local = request.getHost()
        return isinstance(local, (IPv4Address, IPv6Address)) and name == _name(local.host)

    def misdirected(self, request):
        """
        The C{Host} check, against DNS rebinding.

        @return: C{(status, text)} to refuse C{request} with, or C{None}.
        """
        hosts = request.requestHeaders.getRawHeaders(b"host") or []
        if not hosts:
            # No browser leaves Host out; an HTTP/1.0 health check may.
            if request.clientproto == b"HTTP/1.0":
                return None
            return self._refuse(request, 400, "Missing Host header", "HTTP/1.1 requires one (RFC 9112, 3.2).")
        match = _HOST.match(hosts[0].strip()) if len(hosts) == 1 else None
        if match is None:
            return self._refuse(request, 400, "Bad Host header", "Send one Host: name[:port].")
        name = match.group(1).decode("ascii")
        if name.startswith("["):
            name = name[1:-1]
        if self.own_name(request, name):
            return None
        return self._refuse(
            request,
            421,
            f"Misdirected request: Host {ascii(hosts[0].decode('latin-1'))} is not this admin interface",
            "It answers to localhost, 127.0.0.1, [::1] and the address it was reached at; "
            "--admin-host NAME adds a name.",
        )

    def cross_site(self, request):
        """
        The checks of a POST that changes something, against cross-site
        requests: its C{Origin}, else its C{Referer}, if any, must be the
        admin's own origin (C{http://} and the request's own C{Host});
        C{Sec-Fetch-Site}, if any, must not be C{cross-site} or C{same-site};
        and it must carry L{ADMIN_HEADER}.

        @return: C{(status, text)} to refuse C{request} with, or C{None}.
        """
        headers = request.requestHeaders
        advice = "Send changes with curl -X POST -H 'X-Origdst-Admin: 1' URL."
        host = (headers.getRawHeaders(b"host") or [b""])[0].strip().decode("ascii")
        own = _origin("http://" + host) if host else None
        for name in (b"origin", b"referer"):
            values = headers.getRawHeaders(name)
            if values:
                if own is None or len(values) > 1 or _origin(values[0].decode("latin-1")) != own:
                    text = ascii(values[0][:200].decode("latin-1"))
                    return self._refuse(
                        request, 403, f"Cross-site request refused: {name.decode('ascii').title()} {text} "
                        f"is not this admin interface ({own or 'no Host'})", advice)
                break
        site = headers.getRawHeaders(b"sec-fetch-site")
        if site and site[0].strip().lower() in (b"cross-site", b"same-site"):
            return self._refuse(
                request, 403, f"Cross-site request refused: Sec-Fetch-Site {site[0].decode('latin-1')}", advice)
        if headers.getRawHeaders(ADMIN_HEADER) != [ADMIN_HEADER_VALUE]:
            return self._refuse(
                request, 403, "Refused: a change needs the header X-Origdst-Admin: 1, which a web page "
                "on another site cannot send", advice)
        return None
