"""
The settings of one origdst process: defaults, validation and the config file.

One immutable L{Settings} object is built at start-up (defaults, then the
config file, then command-line flags) and handed down the data path, so no
module reads options of its own.
"""

import configparser
import dataclasses
import ipaddress
import re

LOG_LEVELS = ("debug", "info", "warn", "error")


class ConfigError(ValueError):
    """
    A setting has a bad value; the message names the setting and the value.
    """


@dataclasses.dataclass(frozen=True)
class Settings:
    """
    Everything that shapes the proxy's behaviour, with Envoy's defaults where
    Envoy has one (see shared/DESIGN.md section 3).
    """

    port: str = "tcp:4999"
    # The admin endpoint (stats, /ready, the live page), or "none". Loopback
    # only by default: it shows where the host connects and can change the
    # log level.
    admin: str = "tcp:9901:interface=127.0.0.1"
    cleanup_interval: float = 5.0
    connect_timeout: float = 5.0
    request_timeout: float = 15.0
    # Shorter than the 5 s keep-alive of Node.js and Apache, the shortest
    # common ones, so the pool closes an idle connection before the server
    # does and a reused connection is rarely already dead (Envoy's 1 h
    # default is the source of its well-known "503 UC" races).
    upstream_idle_timeout: float = 4.0
    server_name: str = "origdst"
    header_prefix: str = "x-envoy"
    log_level: str = "info"
    log_format: str = "text"
    cluster_name: str = "original_dst"
    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_request_headers_kb: int = 60
    max_request_headers_count: int = 100
    # Egress policy, as normalised rule texts (see parse_rule); empty allow
    # lists allow everything.
    allow: tuple = ()
    deny: tuple = ()
    allow_host: tuple = ()
    deny_host: tuple = ()
    allow_source: tuple = ()
    use_original_dst_header: bool = False
    # The admin interface shows where the host connects and changes the log
    # level: a non-loopback --admin needs this explicit consent.
    admin_allow_remote: bool = False
    # Host names the admin interface answers to besides its own addresses
    # (a guard against DNS rebinding; see origdst.adminguard).
    admin_host: tuple = ()
    # Proxy processes sharing the port (SO_REUSEPORT): one CPython process
    # uses one core.
    workers: int = 1
    # Downstream connection idle timeout (Envoy's idle_timeout, 1 h): a client
    # connection with no request in progress is closed after this long.
    idle_timeout: float = 3600.0
    # A slowloris guard Envoy leaves off: a request head must be complete
    # this long after its first byte, else 408.
    request_headers_timeout: float = 10.0
    # Envoy's stream_idle_timeout: an exchange with no bytes either way for
    # this long ends (408 before the response began, a reset after).
    stream_idle_timeout: float = 300.0
    # One line per request: a file, "-" for stdout, or "none" (off).
    access_log: str = "none"
    access_log_format: str = "envoy"


def _seconds(name, allow_zero=False):
    def parse(value):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: not a number of seconds: {value!r}")
        if number != number or number in (float("inf"), float("-inf")):
            raise ConfigError(f"{name}: not a number of seconds: {value!r}")
        if number < 0 or (number == 0 and not allow_zero):
            bound = "0 or more" if allow_zero else "more than 0"
            raise ConfigError(f"{name}: must be {bound} seconds, not {value!r}")
        return number

    return parse


def _positive_int(name):
    def parse(value):
        try:
            number = int(str(value), 10)
        except ValueError:
            raise ConfigError(f"{name}: not a whole number: {value!r}")
        if number < 1:
            raise ConfigError(f"{name}: must be 1 or more, not {value!r}")
        return number

    return parse


_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _header_name(name):
    def parse(value):
        if not isinstance(value, str) or not _TOKEN.match(value):
            raise ConfigError(f"{name}: not a valid header name: {value!r}")
        return value.lower()

    return parse


def _header_value(name):
    def parse(value):
        if (
            not isinstance(value, str)
            or not value
            or value != value.strip()
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
        ):
            raise ConfigError(f"{name}: not a valid header value: {value!r}")
        return value

    return parse


def _port(name):
    def parse(value):
        value = str(value).strip()
        if not value:
            raise ConfigError(f"{name}: empty endpoint description")
        if value.isdigit():
            if not 0 < int(value) < 65536:
                raise ConfigError(f"{name}: port out of range: {value!r}")
            return f"tcp:{value}"
        return value

    return parse


def _log_level(name):
    def parse(value):
        value = str(value).strip().lower()
        if value == "warning":
            value = "warn"
        if value not in LOG_LEVELS:
            choices = ", ".join(LOG_LEVELS)
            raise ConfigError(f"{name}: must be one of {choices}, not {value!r}")
        return value

    return parse


def parse_ports(text):
    """
    @param text: C{80,443,8000-8080}.
    @return: a frozenset of port numbers.
    @raise ValueError: for anything else.
    """
    ports = set()
    for item in text.split(","):
        low, dash, high = item.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"bad port {item!r}")
        first, last = int(low), int(high if dash else low)
        if not 0 < first <= last < 65536:
            raise ValueError(f"bad port range {item!r}")
        ports.update(range(first, last + 1))
    return frozenset(ports)


def parse_rule(text):
    """
    Parse one destination rule: C{NETWORK[:PORTS]}, where NETWORK is an IPv4
    network or address, an IPv6 one in brackets (brackets may be left out
    when no ports follow), or C{*} for any address.

    @return: C{(network, ports)}; C{network} is an L{ipaddress} network or
        C{None} for any, C{ports} a frozenset or C{None} for any.
    @raise ValueError: naming what is wrong.
    """
    address, ports = text, None
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or (close + 1 < len(text) and text[close + 1] != ":"):
            raise ValueError(f"bad rule {text!r}")
        address = text[1:close]
        if close + 1 < len(text):
            ports = parse_ports(text[close + 2 :])
    elif text.count(":") == 1:
        address, _, port_text = text.partition(":")
        ports = parse_ports(port_text)
    if address == "*":
        return None, ports
    try:
        return ipaddress.ip_network(address, strict=False), ports
    except ValueError:
        raise ValueError(f"bad network {address!r} in {text!r}")


def _items(value):
    return [item for item in re.split(r"[\s;]+", str(value).strip()) if item]


def _rules(name):
    def parse(value):
        items = _items(value)
        for item in items:
            try:
                parse_rule(item)
            except ValueError as e:
                raise ConfigError(f"{name}: {e}")
        return tuple(items)

    return parse


def _networks(name):
    def parse(value):
        items = [i for i in re.split(r"[\s,;]+", str(value).strip()) if i]
        for item in items:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ConfigError(f"{name}: bad network {item!r}")
        return tuple(items)

    return parse


_HOST_PATTERN = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9\-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9\-]*[a-z0-9])?)*$")


def _host_patterns(name):
    def parse(value):
        items = [i.lower().rstrip(".") for i in re.split(r"[\s,;]+", str(value).strip()) if i]
        for item in items:
            if not _HOST_PATTERN.match(item):
                raise ConfigError(f"{name}: bad host name pattern {item!r}")
        return tuple(items)

    return parse


def _boolean(name):
    def parse(value):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: not true or false: {value!r}")

    return parse


def _admin(name):
    def parse(value):
        value = str(value).strip()
        if value.lower() == "none":
            return "none"
        if value.isdigit():
            # A bare port stays on loopback, like the default.
            return _port(name)(value) + ":interface=127.0.0.1"
        return _port(name)(value)

    return parse


def _choice(name, choices):
    def parse(value):
        value = str(value).strip().lower()
        if value not in choices:
            raise ConfigError(f"{name}: must be one of {', '.join(choices)}, not {value!r}")
        return value

    return parse


def _access_log(name):
    def parse(value):
        value = str(value).strip()
        if not value:
            raise ConfigError(f"{name}: empty path (none turns the access log off)")
        return "none" if value.lower() == "none" else value

    return parse


# Each setting's parser, by the name used on the command line and in the
# config file; the attribute of Settings is the same name with underscores.
PARSERS = {
    "port": _port("port"),
    "admin": _admin("admin"),
    "cleanup-interval": _seconds("cleanup-interval"),
    "connect-timeout": _seconds("connect-timeout"),
    "request-timeout": _seconds("request-timeout", allow_zero=True),
    "upstream-idle-timeout": _seconds("upstream-idle-timeout"),
    "server-name": _header_value("server-name"),
    "header-prefix": _header_name("header-prefix"),
    "log-level": _log_level("log-level"),
    "log-format": _choice("log-format", ("text", "json")),
    "cluster-name": _header_value("cluster-name"),
    "max-connections": _positive_int("max-connections"),
    "max-pending-requests": _positive_int("max-pending-requests"),
    "max-request-headers-kb": _positive_int("max-request-headers-kb"),
    "max-request-headers-count": _positive_int("max-request-headers-count"),
    "allow": _rules("allow"),
    "deny": _rules("deny"),
    "allow-host": _host_patterns("allow-host"),
    "deny-host": _host_patterns("deny-host"),
    "allow-source": _networks("allow-source"),
    "use-original-dst-header": _boolean("use-original-dst-header"),
    "admin-allow-remote": _boolean("admin-allow-remote"),
    "admin-host": _host_patterns("admin-host"),
    "workers": _positive_int("workers"),
    "idle-timeout": _seconds("idle-timeout", allow_zero=True),
    "request-headers-timeout": _seconds("request-headers-timeout", allow_zero=True),
    "stream-idle-timeout": _seconds("stream-idle-timeout", allow_zero=True),
    "access-log": _access_log("access-log"),
    "access-log-format": _choice("access-log-format", ("envoy", "json")),
}

# Settings that hold lists: each use of the flag adds to the list.
LISTS = ("allow", "deny", "allow-host", "deny-host", "allow-source", "admin-host")
FLAGS = ("use-original-dst-header", "admin-allow-remote")


_INTERFACE = re.compile(r"(?:^|:)interface=((?:\\.|[^:\\])*)")


def check_admin(settings):
    """
    Refuse an admin endpoint reachable beyond this host unless
    C{admin-allow-remote} says so: it reveals every destination the host
    talks to and can change the log level.

    @raise ConfigError: naming C{--admin} and the description.
    """
    description = settings.admin
    kind = description.split(":", 1)[0].lower()
    if description == "none" or kind == "unix" or settings.admin_allow_remote:
        return
    match = _INTERFACE.search(description)
    interface = re.sub(r"\\(.)", r"\1", match.group(1)) if match else ""
    try:
        loopback = interface == "localhost" or ipaddress.ip_address(interface).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"admin: {description} is reachable from other hosts; give it "
            f"interface=127.0.0.1 (or ::1), or add --admin-allow-remote"
        )


def attribute(option):
    """
    @return: the L{Settings} attribute for a command-line option name.
    """
    return option.replace("-", "_")


def default(option):
    """
    @return: the default of an option, as its command line would spell it.
    """
    value = getattr(Settings(), attribute(option))
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return " ".join(value) or "none"
    return str(value)


def parse(option, value):
    """
    Validate and convert one setting.

    @raise ConfigError: naming C{option} and C{value} when it is bad.
    """
    return PARSERS[option](value)


def read_file(path):
    """
    Read an INI-style config file: one C{[origdst]} section whose keys are the
    long option names (C{cleanup-interval = 10}).

    @return: a dict of option name to converted value.
    @raise ConfigError: for an unreadable file, an unknown key or a bad value.
    """
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as e:
        raise ConfigError(f"config: cannot read {path!r}: {e.strerror}")
    except configparser.Error as e:
        raise ConfigError(f"config: {path!r} is not a valid config file: {e}")
    unknown = [s for s in parser.sections() if s != "origdst"]
    if unknown:
        raise ConfigError(f"config: {path!r}: unknown section [{unknown[0]}]")
    values = {}
    if parser.has_section("origdst"):
        for key, value in parser.items("origdst"):
            if key not in PARSERS:
                raise ConfigError(f"config: {path!r}: unknown setting {key!r}")
            try:
                values[key] = parse(key, value)
            except ConfigError as e:
                raise ConfigError(f"config: {path!r}: {e}")
    return values


def build(values):
    """
    @param values: option name to converted value, for the settings that are
        not left at their default.
    @return: a L{Settings}.
    """
    return Settings(**{attribute(k): v for k, v in values.items()})
