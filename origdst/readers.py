"""
How the text of a setting is read: the readers that L{origdst.config.SETTINGS}
names, and the syntax of the egress rules.

A reader takes the text of a command-line option or config-file key and
returns the value, or raises L{ValueError} with a message that quotes the
text; L{origdst.config} adds the setting's name.
"""

import ipaddress
import re

from origdst.logs import LEVELS


def seconds(allow_zero=False):
    """
    @return: a reader of a duration in seconds; NaN and infinities are refused
        (a timer cannot be set to them), and 0 unless C{allow_zero} (which
        then means no timeout).
    """
    def read(value):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"not a number of seconds: {value!r}")
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError(f"not a number of seconds: {value!r}")
        if number < 0 or (number == 0 and not allow_zero):
            bound = "0 or more" if allow_zero else "more than 0"
            raise ValueError(f"must be {bound} seconds, not {value!r}")
        return number

    return read


def positive_int(value):
    """
    A count or a size: a whole number, 1 or more.
    """
    try:
        number = int(str(value), 10)
    except ValueError:
        raise ValueError(f"not a whole number: {value!r}")
    if number < 1:
        raise ValueError(f"must be 1 or more, not {value!r}")
    return number


_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def header_name(value):
    """
    A header name (an RFC 9110 token), lowercased as headers are sent.
    """
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise ValueError(f"not a valid header name: {value!r}")
    return value.lower()


def header_value(value):
    """
    A header value: no control characters, which would split the head.
    """
    if (
        not isinstance(value, str)
        or not value
        or value != value.strip()
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
    ):
        raise ValueError(f"not a valid header value: {value!r}")
    return value


def port(value):
    """
    A Twisted endpoint description; a bare number is a TCP port.
    """
    value = str(value).strip()
    if not value:
        raise ValueError("empty endpoint description")
    if value.isdigit():
        if not 0 < int(value) < 65536:
            raise ValueError(f"port out of range: {value!r}")
        return f"tcp:{value}"
    return value


def port_range(value):
    """
    A range of local ports C{LOW-HIGH} (1024 to 65535: binding below needs
    privileges), or C{none}.

    @return: C{(low, high)}, or L{None} for C{none}.
    """
    text = str(value).strip().lower()
    if text == "none":
        return None
    match = re.match(r"^(\d{1,5})-(\d{1,5})$", text)
    if not match:
        raise ValueError(f"not a port range LOW-HIGH or none: {value!r}")
    low, high = int(match.group(1)), int(match.group(2))
    if not 1024 <= low <= high <= 65535:
        raise ValueError(f"must be LOW-HIGH with 1024 <= LOW <= HIGH <= 65535, not {value!r}")
    return (low, high)


_VIA_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z:\[\]]+$")


def via_name(value):
    """
    The received-by of this proxy's Via member (RFC 9110 section 7.6.3:
    C{received-by = pseudonym [ ":" port ]}, a pseudonym being a token), or
    empty for none.
    """
    value = str(value).strip()
    if value.lower() in ("", "none"):
        return ""
    if not _VIA_NAME.match(value) or len(value) > 128:
        raise ValueError(f"not a valid Via name (a token such as egress-1): {value!r}")
    return value


def admin(value):
    """
    The admin endpoint, as L{port}, or C{none}; a bare number stays on
    loopback.
    """
    value = str(value).strip()
    if value.lower() == "none":
        return "none"
    if value.isdigit():
        # A bare port stays on loopback, like the default.
        return port(value) + ":interface=127.0.0.1"
    return port(value)


def log_level(value):
    """
    One of L{origdst.logs.LEVELS}; C{warning} is taken for C{warn}.
    """
    value = str(value).strip().lower()
    if value == "warning":
        value = "warn"
    return choice(*LEVELS)(value)


def choice(*choices):
    """
    @return: a reader of one of C{choices}, in any case.
    """
    def read(value):
        value = str(value).strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    return read


def boolean(value):
    """
    On or off, as a config file writes it (C{on}, C{yes}, C{true}, C{1}, ...).
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not true or false: {value!r}")


def access_log(value):
    """
    A path, C{-} for stdout, or C{none}.
    """
    value = str(value).strip()
    if not value:
        raise ValueError("empty path (none turns the access log off)")
    return "none" if value.lower() == "none" else value


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


def port_list(value):
    """
    Destination ports, C{22,25,3306-3310}, or nothing: kept as that text
    (spaces removed), which L{parse_ports} reads.
    """
    text = re.sub(r"\s+", "", str(value))
    if text:
        parse_ports(text)
    return text


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


def rules(value):
    """
    Destination rules (see L{parse_rule}), separated by spaces or C{;}: kept
    as texts, for the log to quote.
    """
    items = [item for item in re.split(r"[\s;]+", str(value).strip()) if item]
    for item in items:
        parse_rule(item)
    return tuple(items)


def networks(value):
    """
    IP networks, separated by spaces, C{,} or C{;}.
    """
    items = [i for i in re.split(r"[\s,;]+", str(value).strip()) if i]
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"bad network {item!r}")
    return tuple(items)


_HOST_PATTERN = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9\-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9\-]*[a-z0-9])?)*$")


def host_patterns(value):
    """
    Host names or C{*.suffix} patterns, lowercased and without a final dot.
    """
    items = [i.lower().rstrip(".") for i in re.split(r"[\s,;]+", str(value).strip()) if i]
    for item in items:
        if not _HOST_PATTERN.match(item):
            raise ValueError(f"bad host name pattern {item!r}")
    return tuple(items)


_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


def pem_certificates(path):
    """
    @return: the PEM blocks of the certificates in the file at C{path}, each
        checked to be one.
    @raise ValueError: quoting C{path}, for a file that cannot be read or
        holds no certificate or a broken one.
    """
    from cryptography.x509 import load_pem_x509_certificate

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read {path!r}: {e.strerror}")
    blocks = _PEM_CERTIFICATE.findall(data)
    if not blocks:
        raise ValueError(f"{path!r} holds no PEM certificate")
    for number, block in enumerate(blocks, 1):
        try:
            load_pem_x509_certificate(block)
        except ValueError as e:
            raise ValueError(f"{path!r}: certificate {number} is not valid: {e}")
    return blocks


def ca_file(value):
    """
    A file of CA certificates (PEM, a bundle or one), checked at start-up;
    empty for the system's trust store.
    """
    path = str(value).strip()
    if path:
        pem_certificates(path)
    return path
