"""
The one way origdst parses and formats addresses.

Logs, stats, the access log and the cluster's host keys all name an address
as C{ip:port}, IPv6 in brackets as in URLs and Envoy's logs; IPv4-mapped IPv6
addresses (a dual-stack socket's view of an IPv4 peer) are given in plain
dotted-quad form everywhere, so one host has one name.

This module is a leaf: it imports no sibling.
"""

import ipaddress
import re


def plain_ip(ip):
    """
    @return: C{ip} with an IPv4-mapped IPv6 address given in dotted-quad form.
    @raise ValueError: when C{ip} is not an IP address.
    """
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if address.version == 6 and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


_socket_ips = {}


def socket_ip(ip):
    """
    L{plain_ip} for an address the kernel gave (a socket's peer or local
    address): the common cases without the cost of L{ipaddress}, the rest
    remembered, since one is looked up for every connection.
    """
    if ":" not in ip:
        return ip
    if ip.startswith("::ffff:") and "." in ip:
        return ip[7:]
    plain = _socket_ips.get(ip)
    if plain is None:
        if len(_socket_ips) > 4096:
            _socket_ips.clear()
        plain = _socket_ips[ip] = plain_ip(ip)
    return plain


def is_ip(host):
    """
    Whether C{host} is an IP address (not a name).
    """
    try:
        plain_ip(host)
    except ValueError:
        return False
    return True


def endpoint(address):
    """
    @param address: a Twisted C{IPv4Address} or C{IPv6Address}.
    @return: C{(ip, port)} with the ip in L{socket_ip} form.
    """
    return socket_ip(address.host), address.port


def host_port(ip, port):
    """
    @return: C{ip:port}, IPv6 in brackets: a host's key and its name in logs.
    """
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def describe(address):
    """
    @param address: C{(ip, port)} or C{None}.
    @return: L{host_port} of it, or C{?} when there is none (for log lines).
    """
    return "?" if address is None else host_port(*address)


def optional(address):
    """
    @return: L{host_port} of C{(ip, port)}, or C{None} (for JSON fields).
    """
    return None if address is None else host_port(*address)


def stat_name(host, port):
    """
    A listening address as Envoy names it in stats: C{0.0.0.0_4999},
    C{[__]_4999} (colons are not allowed in stat names).
    """
    if ":" in host:
        return "[%s]_%d" % (host.replace(":", "_"), port)
    return "%s_%d" % (host, port)


def host_header(ip, port):
    """
    @return: the C{Host} value naming C{ip:port}, the port left out when it
        is HTTP's default.
    """
    host = f"[{ip}]" if ":" in ip else ip
    return (host if port == 80 else f"{host}:{port}").encode("ascii")


def parse_authority(authority, default_port=80):
    """
    @param authority: C{host[:port]}, an IPv6 host in brackets.
    @return: C{(host, port)} with C{host} a str (an IP address in plain form
        when it is one) and C{port} an int or C{default_port}; or C{None}
        when it is malformed.
    """
    text = authority.decode("latin-1")
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = text.partition(":")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return None
        port = int(port_text)
    else:
        port = default_port
    try:
        host = plain_ip(host)
    except ValueError:
        if not host or text.startswith("["):
            return None
    return host, port


# A DNS name a certificate can be checked against (RFC 1123 labels of at
# most 63 characters).
_DNS_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9\-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9\-]{0,61}[a-z0-9])?)*$")


def server_name(host, ip):
    """
    The name an originated TLS connection verifies the server's certificate
    against, and sends as SNI: the request's C{Host} without its port,
    lowercased and without a final dot; an IP address in plain form (checked
    against the certificate's IP addresses, and not sent as SNI); the
    destination's C{ip} for a request without C{Host} (HTTP/1.0).

    @param host: the C{Host} value (bytes), or C{None}.
    @return: the name, or C{None} when C{host} cannot be verified (not a DNS
        name, such as one with C{_} or percent-encoding).
    """
    if host is None:
        return ip
    parsed = parse_authority(host)
    if parsed is None:
        return None
    name = parsed[0]
    if is_ip(name):
        return plain_ip(name)
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    return name if _DNS_NAME.match(name) else None
