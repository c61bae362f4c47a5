"""
The doctor's checks: each looks at what L{Facts} gathered and says, in one
line each, what is right and what is wrong, with the command that fixes it.

They read nothing themselves (but the probe, which connects), so that one
gathering serves every check.
"""

import ipaddress
import os

from origdst import netfilter, probe

OK, FAIL, SKIP, NOTE = "ok", "FAIL", "skip", "note"

_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SCRIPT = os.path.join(_HERE, "conf", "iptables.sh")
#: How the fixes name conf/iptables.sh: where it is, if this is a checkout.
IPTABLES_SH = _SCRIPT if os.path.exists(_SCRIPT) else "conf/iptables.sh"


class Finding:
    """
    One line of the doctor's report.
    """

    def __init__(self, status, topic, text, fix=None):
        self.status = status
        self.topic = topic
        self.text = text
        self.fix = fix

    def line(self):
        text = f"{self.status:<5} {self.topic}: {self.text}"
        return text + (f"; fix: {self.fix}" if self.fix else "")

    def __repr__(self):
        return f"<Finding {self.line()}>"


class Facts:
    """
    What the doctor found, and what it was told.

    @ivar port: the proxy's port (C{--port}).
    @ivar admin: the admin port, or L{None} for none.
    @ivar uid: the uid the proxy runs as, given or found, or L{None}.
    @ivar who: how the proxy was found, for messages.
    @ivar listeners: every L{listening.Listener}.
    @ivar nat: C{{4: tables or error text, 6: ...}} of C{iptables-save -t nat}.
    @ivar filter: the same for C{-t filter}.
    @ivar probe: L{None} for the doctor's own destination, C{"none"}, or
        C{(ip, port)}.
    @ivar conntrack: whether nf_conntrack is loaded.
    @ivar prefix: the proxy's header prefix, for recognising its answers.
    """

    port = admin = uid = who = probe = None
    conntrack = True
    prefix = "x-envoy"

    def __init__(self, **kwargs):
        self.listeners = []
        self.nat = {}
        self.filter = {}
        for name, value in kwargs.items():
            setattr(self, name, value)

    def on(self, port):
        return [l for l in self.listeners if l.port == port]

    def proxies(self):
        """
        @return: the ports that processes named origdst listen on.
        """
        return sorted({l.port for l in self.listeners if any("origdst" in h[2] for h in l.holders)})

    def redirects(self, family):
        tables = self.nat.get(family)
        return netfilter.redirects(tables) if isinstance(tables, dict) else []

    def uid_text(self):
        return str(self.uid) if self.uid is not None else "<proxy uid>"


def _family(family):
    return "IPv%d" % family


def _tool(family):
    return "iptables" if family == 4 else "ip6tables"


def _ports_option(dports):
    if dports is None:
        return "--all-ports"
    return "--dports " + dports


def up(facts, family, dports="80"):
    """
    @return: the C{conf/iptables.sh} command that sets the rules right.
    """
    return (f"{IPTABLES_SH} up -{family} --port {facts.port} {_ports_option(dports)} "
            f"--uid {facts.uid_text()}")


def replace(facts, family, path, table="nat"):
    """
    @return: the command that replaces the rule of C{path}: C{conf/iptables.sh
        up} for its own chain, which it flushes; a rule elsewhere is deleted
        first.
    """
    command = up(facts, family, path.dports())
    if path.rule.chain != "ORIGDST":
        command = f"{_tool(family)} -t {table} -D {path.rule.chain} {path.rule.text} && {command}"
    return command


def _describe(path):
    return f"nat {path.where()}: {path.rule.text}"


def check_listening(facts):
    """
    Something listens on the proxy's port.
    """
    here = facts.on(facts.port)
    others = [p for p in facts.proxies() if p != facts.port]
    if not here:
        hint = f" (origdst listens on {', '.join(map(str, others))}: tell the doctor --port)" if others else ""
        return [Finding(FAIL, "listening", f"nothing listens on port {facts.port}{hint}",
                        f"twistd -n origdst --port tcp6:{facts.port}")]
    kinds = ", ".join(l.name() for l in here)
    return [Finding(OK, "listening", f"{facts.who} listens on {kinds}")]


def _fits(listener, family, hook):
    """
    Whether a connection redirected by a rule of C{family} at C{hook} reaches
    C{listener}: OUTPUT sends it to 127.0.0.1 or ::1, PREROUTING to the
    address of the interface it came in on.
    """
    if not listener.takes(family):
        return False
    if listener.wildcard():
        return True
    return hook == "OUTPUT" and listener.loopback() and listener.family == family


def check_rules(facts, family):
    """
    The nat rules of C{family} send connections to an address and port the
    proxy listens on; IPv6 needs one where the proxy takes IPv6.
    """
    tables = facts.nat.get(family)
    topic = f"{_family(family)} rule"
    if not isinstance(tables, dict):
        return [Finding(FAIL, topic, f"cannot read the nat rules: {tables}",
                        "run the doctor as root: sudo python -m origdst.doctor")]
    paths = facts.redirects(family)
    on_family = [l for l in facts.on(facts.port) if l.takes(family)]
    if not paths:
        if family == 4 or on_family:
            why = "" if family == 4 else (
                " although the proxy listens on IPv6" + (" (dual-stack)" if any(l.dual for l in on_family) else ""))
            return [Finding(FAIL, topic, f"no {_tool(family)} nat rule redirects {_family(family)} connections "
                            f"to the proxy{why}: they go straight out, around it", up(facts, family))]
        return [Finding(NOTE, topic, "no ip6tables nat rule, and the proxy does not listen on IPv6: "
                        "IPv6 connections are not proxied (fine where this host has no IPv6)")]
    findings = []
    for path in paths:
        target = netfilter.to_port(path.rule)
        if target != facts.port:
            where = "each connection's own port" if target is None else f"port {target}"
            findings.append(Finding(
                FAIL, topic, f"{_describe(path)} sends connections to {where}, but the proxy "
                f"listens on {facts.port}", replace(facts, family, path)))
        elif not any(_fits(l, family, path.hook) for l in facts.on(facts.port)):
            address = ("127.0.0.1" if family == 4 else "[::1]") if path.hook == "OUTPUT" else "this host's address"
            findings.append(Finding(
                FAIL, topic, f"{_describe(path)} sends {_family(family)} connections to {address}:"
                f"{facts.port}, where the proxy does not listen",
                f"run origdst with --port tcp6:{facts.port} (dual-stack)"))
        else:
            ports = path.dports() or "every port"
            findings.append(Finding(OK, topic, f"nat {path.where()} redirects TCP to port(s) {ports} "
                                    f"to {facts.port}, where the proxy listens"))
    return findings


def check_owner(facts, family):
    """
    Each OUTPUT rule leaves the proxy's own connections alone (else a loop).
    """
    paths = [p for p in facts.redirects(family) if p.hook == "OUTPUT"]
    topic = f"{_family(family)} owner"
    if not paths:
        return []
    if facts.uid is None:
        return [Finding(SKIP, topic, "cannot tell which uid the proxy runs as: nothing listens on "
                        f"port {facts.port}; tell the doctor --uid")]
    findings = []
    for path in paths:
        if path.exempts(facts.uid):
            findings.append(Finding(OK, topic, f"the rule leaves the proxy's uid {facts.uid} alone"))
        elif path.exempt:
            uids = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in path.exempt)
            findings.append(Finding(
                FAIL, topic, f"{_describe(path)} exempts uid {uids}, but the proxy runs as uid {facts.uid}: "
                "its upstream connections are redirected back to it (a loop)",
                replace(facts, family, path)))
        else:
            findings.append(Finding(
                FAIL, topic, f"{_describe(path)} has no owner match (-m owner ! --uid-owner {facts.uid}): the "
                f"proxy's own upstream connections are redirected back to it (a loop)",
                replace(facts, family, path)))
    return findings


def check_fail_closed(facts, family):
    """
    Where there is a nat rule, a filter rule refuses what it did not
    redirect, and not the proxy's own connections.
    """
    paths = facts.redirects(family)
    topic = f"{_family(family)} fail-closed"
    tables = facts.filter.get(family)
    if not paths:
        return []
    if not isinstance(tables, dict):
        return [Finding(FAIL, topic, f"cannot read the filter rules: {tables}",
                        "run the doctor as root: sudo python -m origdst.doctor")]
    refusing = netfilter.fail_closed(tables)
    if not refusing:
        return [Finding(FAIL, topic, "no filter rule (the ORIGDST chain) rejects what was not redirected: a "
                        "connection conntrack takes for an earlier one of the proxy's reaches its destination "
                        "around the proxy", up(facts, family, paths[0].dports()))]
    findings = []
    for path in refusing:
        text = f"filter {path.where()}: {path.rule.text}"
        if facts.uid is not None and not path.exempts(facts.uid):
            findings.append(Finding(FAIL, topic, f"{text} also refuses the proxy's own upstream connections "
                                    f"(uid {facts.uid} not exempt)", replace(facts, family, path, "filter")))
        else:
            findings.append(Finding(OK, topic, f"filter {path.where()} rejects what was not redirected"))
    return findings


def check_conntrack(facts):
    """
    REDIRECT and the original destination are conntrack's.
    """
    if facts.conntrack:
        return [Finding(OK, "conntrack", "nf_conntrack is loaded")]
    return [Finding(FAIL, "conntrack", "nf_conntrack is not loaded: REDIRECT and the original "
                    "destination need it", "modprobe nf_conntrack")]


def _first_port(dports):
    if not dports:
        return 80
    return int(dports.split(",")[0].split(":")[0])


def check_probes(facts):
    """
    The test connections: to the doctor's own destination, IPv4 and, where
    there is an IPv6 rule or the proxy takes IPv6, IPv6; or one to
    C{--probe ADDR:PORT}.
    """
    if facts.probe == "none":
        return [Finding(SKIP, "probe", "no test connection (--probe none)")]
    if facts.probe is not None:
        ip, port = facts.probe
        return [_probe_named(facts, ip, port)]
    # IPv4 always (with no rule, the probe shows where connections go);
    # IPv6 where there is a rule or the proxy takes IPv6.
    paths = {f: [p for p in facts.redirects(f) if p.hook == "OUTPUT"] for f in (4, 6)}
    families = [4] + ([6] if paths[6] or any(l.family == 6 for l in facts.on(facts.port)) else [])
    ports = {f: _first_port(paths[f][0].dports() if paths[f] else None) for f in families}
    destination = probe.Destination(ports.values())
    findings = []
    try:
        destination.start(v6=6 in families)
        for family in families:
            ip = destination.v4 if family == 4 else destination.v6
            dst = paths[family][0].first("-d") if paths[family] else None
            if dst and ipaddress.ip_address(ip) not in ipaddress.ip_network(dst, strict=False):
                findings.append(Finding(SKIP, f"{_family(family)} probe", f"the rule only redirects to {dst}: "
                                        "name a destination there with --probe ADDR:PORT"))
                continue
            findings.append(_probe_own(facts, family, ip, ports[family]))
    except probe.ProbeError as e:
        findings.append(Finding(FAIL, "probe", f"cannot set up the test destination: {e}",
                                "run the doctor as root, or name a destination with --probe ADDR:PORT"))
    finally:
        destination.remove()
    return findings


def _probe_own(facts, family, ip, port):
    """
    A test connection to the doctor's own destination, whose server echoes
    the head it got: the proxy's headers in it say the proxy forwarded it.
    """
    topic = f"{_family(family)} probe"
    where = probe.key(ip, port)
    answer = probe.connect(ip, port)
    said = f"a connection from uid {probe.CLIENT_UID} to {where}"
    if "error" in answer:
        return Finding(FAIL, topic, f"{said} failed: {answer['error']} (see the lines above)")
    body = answer.get("body", "")
    if '"origdst-doctor"' not in body:
        first = body.strip().splitlines()[0][:100] if body.strip() else ""
        server = answer.get("headers", {}).get("server") or "something else"
        return Finding(FAIL, topic, f"{said} was answered by {server}, not the destination: "
                       f"{answer['status']} {first}".rstrip())
    if '"x-forwarded-proto"' in body or '"x-request-id"' in body:
        return Finding(OK, topic, f"{said} arrived there through the proxy, with its original destination")
    return Finding(FAIL, topic, f"{said} reached it directly, around the proxy: the nat rule did not catch it",
                   up(facts, family))


def _probe_named(facts, ip, port):
    """
    A test connection to a destination of the user's: the proxy's
    C{/clusters} counting it, or its upstream-time header, says the proxy
    forwarded it.
    """
    topic = "probe"
    where = probe.key(ip, port)
    admin = _admin_address(facts)
    before = probe.admin_hosts(*admin) if admin else None
    answer = probe.connect(ip, port)
    after = probe.admin_hosts(*admin) if admin else None
    said = f"a connection from uid {probe.CLIENT_UID} to {where}"
    status = answer.get("status") or answer.get("error")
    if before is not None and after is not None and after.get(where, 0) > before.get(where, 0):
        return Finding(OK, topic, f"{said} reached the proxy with its original destination "
                       f"(its /clusters counts it); answer: {status}")
    if f"{facts.prefix}-upstream-service-time" in answer.get("headers", {}):
        return Finding(OK, topic, f"{said} was forwarded by the proxy; answer: {status}")
    return Finding(FAIL, topic, f"{said} did not reach the proxy with that destination; answer: {status}")


def _admin_address(facts):
    """
    @return: C{(ip, port)} to reach the admin interface at, or L{None}.
    """
    for listener in facts.on(facts.admin) if facts.admin else ():
        ip = listener.ip
        if listener.wildcard():
            ip = "127.0.0.1" if listener.family == 4 or listener.dual else "::1"
        return ip, facts.admin
    return None


def check_admin(facts):
    """
    The admin port listens, on loopback only.
    """
    if facts.admin is None:
        return [Finding(SKIP, "admin", "no admin port (--admin none)")]
    here = facts.on(facts.admin)
    if not here:
        return [Finding(FAIL, "admin", f"nothing listens on the admin port {facts.admin}",
                        f"run origdst with --admin tcp:{facts.admin}:interface=127.0.0.1, "
                        "or tell the doctor --admin none")]
    open_ = [l for l in here if not l.loopback()]
    if open_:
        return [Finding(FAIL, "admin", f"the admin port listens on {', '.join(l.name() for l in open_)}: "
                        "any host that reaches this one can read where it connects and POST "
                        "/drain_listeners", f"run origdst with --admin tcp:{facts.admin}:interface=127.0.0.1 "
                        "(and without --admin-allow-remote)")]
    return [Finding(OK, "admin", f"the admin port listens on loopback only ({here[0].name()})")]


def run_all(facts):
    """
    @return: every L{Finding}, in the report's order.
    """
    findings = check_listening(facts)
    for family in (4, 6):
        findings += check_rules(facts, family)
        findings += check_owner(facts, family)
        findings += check_fail_closed(facts, family)
    findings += check_conntrack(facts)
    findings += check_probes(facts)
    findings += check_admin(facts)
    return findings

