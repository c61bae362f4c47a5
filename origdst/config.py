"""
The settings of one origdst process: one table, and everything made from it.

Each setting is declared once, in L{SETTINGS}: its option name, how its text
is read, its default and its help. From that table come the L{Settings}
class, the twistd plugin's options and help (L{origdst.tap.Options}) and the
config file's keys; a test holds C{conf/origdst.conf} and the README's option
table to it.

One immutable L{Settings} object is built at start-up (defaults, then the
config file, then command-line flags) and handed down the data path, so no
module reads options of its own.
"""

import configparser
import dataclasses
import ipaddress
import re

from origdst import readers

# How a setting is given on the command line: C{--name VALUE}; C{--name
# VALUE} repeated, each adding to a list; or C{--name} alone, turning it on.
VALUE, LIST, FLAG = "value", "list", "flag"


class ConfigError(ValueError):
    """
    A setting has a bad value; the message names the setting and the value.
    """


class Setting:
    """
    One setting, as declared in L{SETTINGS}.

    @ivar name: the long option name, also the config file's key.
    @ivar attribute: the L{Settings} attribute (the name with underscores).
    @ivar read: converts a text to the value, raising L{ValueError} with a
        message that quotes the text (the name is added by L{parse}).
    @ivar default: the default as a config file spells it; L{Settings} holds
        C{read(default)}.
    @ivar shown: the default as help and the README show it.
    @ivar kind: L{VALUE}, L{LIST} or L{FLAG}.
    @ivar secret: whether the value is a credential, never served by the
        admin interface (a file's path is not secret; its content would be).
    """

    __slots__ = ("name", "attribute", "read", "default", "shown", "help", "kind", "secret")

    def __init__(self, name, read, default, help, kind=VALUE, secret=False):
        self.name = name
        self.attribute = name.replace("-", "_")
        self.read = read
        self.default = default
        self.shown = default or "(none)"
        self.help = help
        self.kind = kind
        self.secret = secret

    def parse(self, value):
        """
        @return: C{value} converted.
        @raise ConfigError: naming this setting and C{value} when it is bad.
        """
        try:
            return self.read(value)
        except ValueError as e:
            raise ConfigError(f"{self.name}: {e}")

    def __repr__(self):
        return f"<Setting {self.name}={self.default!r}>"


# Every setting, in the order the admin interface lists them. Defaults are Envoy's where Envoy has
# one (the README's "Running" section says where origdst differs, and why).
SETTINGS = (
    Setting(
        "port", readers.port, "tcp:4999",
        "Endpoint description to listen on (a bare number means tcp:N; tcp6:N is "
        "dual-stack; listen backlog 1024).",
    ),
    # Loopback only by default: the admin interface shows where the host
    # connects and can change the log level.
    Setting(
        "admin", readers.admin, "tcp:9901:interface=127.0.0.1",
        "Endpoint description of the admin interface (stats, /ready, the live page), "
        "or none (a bare number means tcp:N:interface=127.0.0.1).",
    ),
    Setting("cleanup-interval", readers.seconds(), "5", "Seconds between sweeps that remove unused hosts."),
    Setting("connect-timeout", readers.seconds(), "5", "Seconds to wait for an upstream connection."),
    Setting(
        "request-timeout", readers.seconds(allow_zero=True), "15",
        "Seconds from the end of a request to the end of its response; 0 disables it.",
    ),
    # Shorter than the 5 s keep-alive of Node.js and Apache, the shortest
    # common ones, so the pool closes an idle connection before the server
    # does and a reused connection is rarely already dead (Envoy's 1 h
    # default is the source of its well-known "503 UC" races).
    Setting(
        "upstream-idle-timeout", readers.seconds(), "4", "Seconds a pooled upstream connection may stay idle."
    ),
    # Above Linux's default ephemeral range (32768-60999), so clients never
    # get one of these ports and cannot match the conntrack entry of an
    # upstream connection (see origdst.sourceports).
    Setting(
        "upstream-source-ports", readers.port_range, "61000-65535",
        "Local ports of upstream connections, LOW-HIGH outside the clients' ephemeral range, "
        "or none (the kernel's choice).",
    ),
    Setting("server-name", readers.header_value, "origdst", "Value of the server header sent to clients."),
    # Envoy's via: nothing by default, so requests carry nothing that tells
    # one host from another; with a name, loops through other proxies are
    # caught (508) by it.
    Setting(
        "via", readers.via_name, "",
        "Add Via: 1.1 NAME to requests and responses, and refuse (508) a request whose Via "
        "already names NAME; none by default.",
    ),
    Setting("header-prefix", readers.header_name, "x-envoy", "Prefix of the proxy's own headers."),
    Setting("log-level", readers.log_level, "info", "debug, info, warn or error."),
    Setting("log-format", readers.choice("text", "json"), "text", "text or json (one JSON object per line)."),
    Setting("cluster-name", readers.header_value, "original_dst", "Name of the original-destination cluster."),
    Setting("max-connections", readers.positive_int, "1024", "Upstream connections per host."),
    Setting("max-pending-requests", readers.positive_int, "1024", "Requests per host waiting for a connection."),
    Setting("max-request-headers-kb", readers.positive_int, "60", "Largest request head, in KiB (431 above)."),
    Setting("max-request-headers-count", readers.positive_int, "100", "Most request header fields (431 above)."),
    # Egress policy, as normalised rule texts (see parse_rule); empty allow
    # lists allow everything.
    Setting(
        "allow", readers.rules, "",
        "Destinations allowed, NETWORK[:PORTS] (10.0.0.0/8:80,443, [fd00::/8]:80, *:80); "
        "repeatable; none given: all.",
        LIST,
    ),
    Setting("deny", readers.rules, "", "Destinations denied, as --allow; wins over --allow.", LIST),
    Setting(
        "allow-host", readers.host_patterns, "",
        "Host names allowed (example.com, *.example.com); repeatable.", LIST,
    ),
    Setting("deny-host", readers.host_patterns, "", "Host names denied, as --allow-host.", LIST),
    Setting(
        "allow-source", readers.networks, "",
        "Client networks that may use the proxy; repeatable; none given: all.", LIST,
    ),
    Setting(
        "use-original-dst-header", readers.boolean, "off",
        "Let <header-prefix>-original-dst-host: ip:port choose the destination "
        "(still subject to the egress policy).",
        FLAG,
    ),
    # The admin interface shows where the host connects and changes the log
    # level: a non-loopback --admin needs this explicit consent.
    Setting(
        "admin-allow-remote", readers.boolean, "off", "Allow an --admin endpoint that is not on loopback.", FLAG
    ),
    # Host names the admin interface answers to besides its own addresses
    # (a guard against DNS rebinding; see origdst.adminguard).
    Setting(
        "admin-host", readers.host_patterns, "",
        "A host name the admin interface answers to besides localhost and its own "
        "addresses (others get 421); repeatable.",
        LIST,
    ),
    # One CPython process uses one core.
    Setting(
        "workers", readers.positive_int, "1",
        "Proxy processes sharing --port (a tcp: or tcp6: endpoint); "
        "the admin interface shows their sum.",
    ),
    # Envoy's downstream idle_timeout (1 h).
    Setting(
        "idle-timeout", readers.seconds(allow_zero=True), "3600",
        "Seconds a client connection may sit with no request; 0 = none.",
    ),
    # A slowloris guard Envoy leaves off.
    Setting(
        "request-headers-timeout", readers.seconds(allow_zero=True), "10",
        "Seconds to receive a whole request head once it began (408 after); 0 = none.",
    ),
    # Envoy's stream_idle_timeout.
    Setting(
        "stream-idle-timeout", readers.seconds(allow_zero=True), "300",
        "Seconds a request may see no bytes either way (408, or a reset once the "
        "response began); 0 = none.",
    ),
    # Envoy drains for --drain-time-s (600 s) before it stops; 25 s fits in
    # the 30 s that Kubernetes (terminationGracePeriodSeconds) waits between
    # SIGTERM and SIGKILL.
    Setting(
        "drain-timeout", readers.seconds(allow_zero=True), "25",
        "Seconds open client connections may take to finish after SIGTERM or "
        "POST /drain_listeners; then they are closed; 0 = close at once.",
    ),
    # Protocol detection and the TCP relay (origdst.detect, origdst.tcp).
    Setting(
        "tcp-ports", readers.port_list, "",
        "Destination ports whose connections always take the TCP relay, no detection "
        "(22,25,3306-3310).",
    ),
    Setting(
        "http-ports", readers.port_list, "",
        "Destination ports whose connections always take the HTTP proxy, no detection "
        "(80,8080).",
    ),
    Setting(
        "detect-timeout", readers.seconds(), "0.3",
        "Seconds to wait for a client's first bytes before taking the TCP relay "
        "(protocols where the server speaks first).",
    ),
    # Envoy's tcp_proxy idle_timeout (1 h).
    Setting(
        "tcp-idle-timeout", readers.seconds(allow_zero=True), "3600",
        "Seconds a relayed TCP connection may pass no byte either way; 0 = none.",
    ),
    Setting(
        "allow-sni", readers.host_patterns, "",
        "TLS server names allowed (example.com, *.example.com); repeatable; set: a "
        "ClientHello without one is refused.",
        LIST,
    ),
    Setting("deny-sni", readers.host_patterns, "", "TLS server names denied, as --allow-sni.", LIST),
    # TLS origination (origdst.origination).
    Setting(
        "originate-tls", readers.port_list, "",
        "Destination ports whose plain-HTTP requests go upstream over TLS, verified against "
        "their Host (443,8443).",
    ),
    Setting(
        "ca-file", readers.ca_file, "",
        "PEM file of the CAs --originate-tls trusts; none given: the system's trust store.",
    ),
    Setting(
        "access-log", readers.access_log, "none",
        "File to write one line per request to (reopened on SIGHUP), - for stdout, or none.",
    ),
    Setting(
        "access-log-format", readers.choice("envoy", "json"), "envoy",
        "envoy (Envoy's default format) or json (one object per line).",
    ),
)

# The settings by option name, in the table's order.
OPTIONS = {setting.name: setting for setting in SETTINGS}


def _settings_class():
    # Made from the table rather than written out, so that a setting cannot
    # be added to one and forgotten in the other.
    fields = []
    for setting in SETTINGS:
        value = setting.read(setting.default)
        fields.append((setting.attribute, type(value), dataclasses.field(default=value)))
    cls = dataclasses.make_dataclass("Settings", fields, frozen=True)
    cls.__module__ = __name__
    cls.__doc__ = """
    Everything that shapes the proxy's behaviour: one attribute per entry of
    L{SETTINGS}, its default that entry's.
    """
    return cls


Settings = _settings_class()


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


def check_ports(settings):
    """
    Refuse a port that is both in C{tcp-ports} and in C{http-ports}.

    @raise ConfigError: naming C{--http-ports} and the ports.
    """
    if not (settings.tcp_ports and settings.http_ports):
        return
    both = readers.parse_ports(settings.tcp_ports) & readers.parse_ports(settings.http_ports)
    if both:
        shown = ",".join(str(p) for p in sorted(both)[:5]) + (",..." if len(both) > 5 else "")
        raise ConfigError(
            f"http-ports: {settings.http_ports} has ports also in tcp-ports ({shown}); "
            f"a port takes one or the other"
        )


def attribute(option):
    """
    @return: the L{Settings} attribute for a command-line option name.
    """
    return OPTIONS[option].attribute


def default(option):
    """
    @return: the default of an option, as help and the README show it.
    """
    return OPTIONS[option].shown


def parse(option, value):
    """
    Validate and convert one setting.

    @raise ConfigError: naming C{option} and C{value} when it is bad.
    """
    return OPTIONS[option].parse(value)


def read_file(path):
    """
    Read an INI-style config file: one C{[origdst]} section whose keys are the
    long option names (C{cleanup-interval = 10}); a list setting takes its
    entries on one line, separated by spaces.

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
            if key not in OPTIONS:
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
