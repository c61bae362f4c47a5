"""
Egress policy: which sources may use the proxy, and where they may go.

Every redirected connection crosses the proxy, so this is where a host's
egress rules belong. Destinations are checked as addresses (the original
destination, or the override header's), optionally also by the request's
Host name; a deny rule always wins over an allow rule, and an empty allow
list allows everything.
"""

import ipaddress

from origdst.readers import parse_rule


class Policy:
    """
    The compiled egress rules of one L{origdst.config.Settings}.
    """

    def __init__(self, settings):
        self.allow = [(text, *parse_rule(text)) for text in settings.allow]
        self.deny = [(text, *parse_rule(text)) for text in settings.deny]
        self.allow_host = settings.allow_host
        self.deny_host = settings.deny_host
        self.allow_sni = settings.allow_sni
        self.deny_sni = settings.deny_sni
        self.sources = [ipaddress.ip_network(n, strict=False) for n in settings.allow_source]
        self._verdicts = {}

    def source_allowed(self, ip):
        """
        Whether a client at C{ip} may use the proxy.
        """
        if not self.sources:
            return True
        address = ipaddress.ip_address(ip)
        return any(address in network for network in self.sources)

    def destination_denied(self, ip, port):
        """
        @return: why C{ip:port} may not be reached (the rule, for the log), or
            C{None} when it may.
        """
        key = (ip, port)
        verdict = self._verdicts.get(key, False)
        if verdict is False:
            verdict = self._judge(ipaddress.ip_address(ip), port)
            if len(self._verdicts) > 10000:
                self._verdicts.clear()
            self._verdicts[key] = verdict
        return verdict

    def _judge(self, address, port):
        for text, network, ports in self.deny:
            if _matches(network, ports, address, port):
                return f"denied by --deny {text}"
        if not self.allow:
            return None
        for text, network, ports in self.allow:
            if _matches(network, ports, address, port):
                return None
        return "not in --allow"

    def host_denied(self, host):
        """
        @param host: the request's Host value, as bytes (a port is ignored).
        @return: why a request for that name is refused, or C{None}.
        """
        if not (self.allow_host or self.deny_host):
            return None
        name = _host_name(host)
        for pattern in self.deny_host:
            if _name_matches(pattern, name):
                return f"denied by --deny-host {pattern}"
        if self.allow_host and not any(_name_matches(p, name) for p in self.allow_host):
            return "not in --allow-host"
        return None

    def sni_denied(self, name):
        """
        @param name: a TLS ClientHello's server name (lowercase text), or
            C{None} when it has none or could not be read.
        @return: why that connection is refused, or C{None}.
        """
        if name is None:
            return "no TLS server name and --allow-sni is set" if self.allow_sni else None
        for pattern in self.deny_sni:
            if _name_matches(pattern, name):
                return f"denied by --deny-sni {pattern}"
        if self.allow_sni and not any(_name_matches(p, name) for p in self.allow_sni):
            return "not in --allow-sni"
        return None


def _matches(network, ports, address, port):
    if ports is not None and port not in ports:
        return False
    return network is None or (
        network.version == address.version and address in network
    )


def _host_name(host):
    text = host.decode("latin-1").lower()
    if text.startswith("["):
        return text[: text.find("]") + 1]
    name = text.rpartition(":")[0] if ":" in text else text
    return name.rstrip(".")


def _name_matches(pattern, name):
    if pattern.startswith("*."):
        return name.endswith(pattern[1:])
    return name == pattern
