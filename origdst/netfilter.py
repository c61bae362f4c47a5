"""
What the doctor reads from C{iptables-save}: the nat rules that redirect
connections to the proxy and the filter rules that make it fail closed.

A set-up spreads a rule over chains (C{conf/iptables.sh}: C{OUTPUT} jumps to
C{ORIGDST}, which redirects; Istio: C{OUTPUT} jumps to C{ISTIO_OUTPUT},
which returns early for the proxy's uid), so a rule is judged by the path
from a built-in chain to it: every match on the way applies, and an earlier
C{RETURN} or C{ACCEPT} for a uid exempts that uid. Pure text in, tuples out:
tested on captured C{iptables-save} text.
"""

import re
import shlex

#: Where a REDIRECT can catch a connection: this host's own (OUTPUT) and
#: others' passing through (PREROUTING).
HOOKS = ("OUTPUT", "PREROUTING")

# Targets that end the walk of a chain for what they match.
_LEAVE = ("RETURN", "ACCEPT")
_OWNER_ONLY = {"--uid-owner", "-p"}


def _quote(token):
    # "!" needs no quotes in a command line; spaces and quotes do.
    return token if re.match(r"^[\w@%+=:,./!-]+$", token) else shlex.quote(token)


class Rule:
    """
    One C{-A CHAIN ...} line of C{iptables-save}.

    @ivar chain: the chain it is in.
    @ivar text: the line, for messages and fixes (C{-A} and the chain left
        out).
    @ivar target: the C{-j}/C{-g} target, or L{None}.
    @ivar options: option name (C{--to-ports}, C{-d}, ...) to C{(negated,
        value)}; a flag without a value has C{""}.
    """

    def __init__(self, chain, tokens):
        self.chain = chain
        self.text = " ".join(_quote(t) for t in tokens)
        self.options = {}
        self.target = None
        negated = False
        i = 0
        while i < len(tokens):
            token = tokens[i]
            if token == "!":
                negated = True
                i += 1
                continue
            value = ""
            if i + 1 < len(tokens) and not tokens[i + 1].startswith("-") and tokens[i + 1] != "!":
                value = tokens[i + 1]
                i += 1
            if token in ("-j", "-g"):
                self.target = value
            elif token.startswith("-") and token != "-m":
                self.options[token] = (negated, value)
            negated = False
            i += 1

    def get(self, option):
        """
        @return: the value of C{option} if given without C{!}, else L{None}.
        """
        negated, value = self.options.get(option, (True, None))
        return None if negated else value

    def dports(self):
        """
        @return: the destination ports it matches, as iptables spells them
            (C{80}, C{80,8080}, C{1000:2000}), or L{None} for every port
            (a negated match counts as every port: it is not a list to copy).
        """
        return self.get("--dport") or self.get("--dports")

    def owner(self):
        """
        @return: C{(negated, low, high)} of its C{--uid-owner} match, or
            L{None}. iptables-save gives a number or a range C{low-high}.
        """
        if "--uid-owner" not in self.options:
            return None
        negated, value = self.options["--uid-owner"]
        low, _, high = value.partition("-")
        try:
            return negated, int(low), int(high or low)
        except ValueError:
            return None

    def __repr__(self):
        return f"<Rule -A {self.chain} {self.text}>"


def parse(text):
    """
    @param text: the output of C{iptables-save} (one or more tables).
    @return: C{{table: {chain: [Rule, ...]}}}, every declared chain listed,
        empty ones too.
    """
    tables, table = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            table = tables.setdefault(line[1:], {})
        elif table is None:
            continue
        elif line.startswith(":"):
            table.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            tokens = shlex.split(line)
            if len(tokens) >= 2:
                table.setdefault(tokens[1], []).append(Rule(tokens[1], tokens[2:]))
    return tables


class Path:
    """
    A rule reached from a built-in chain: the jumps on the way and the rule.

    @ivar hook: the built-in chain the walk started from.
    @ivar rules: the jump rules, then the rule itself.
    @ivar exempt: C{(low, high)} uid ranges the way leaves alone: a
        C{! --uid-owner} match on the way, or an earlier C{RETURN}/C{ACCEPT}
        for C{--uid-owner}.
    """

    def __init__(self, hook, rules, exempt):
        self.hook = hook
        self.rules = rules
        self.exempt = exempt

    @property
    def rule(self):
        return self.rules[-1]

    def exempts(self, uid):
        """
        @return: whether connections of C{uid} are left alone on this way.
        """
        return any(low <= uid <= high for low, high in self.exempt)

    def first(self, option):
        """
        @return: the first un-negated value of C{option} on the way, or L{None}.
        """
        for rule in self.rules:
            value = rule.get(option)
            if value is not None:
                return value
        return None

    def dports(self):
        """
        @return: the destination ports the way matches (see L{Rule.dports}).
        """
        for rule in self.rules:
            if rule.dports() is not None:
                return rule.dports()
        return None

    def where(self):
        """
        @return: the chains on the way, C{OUTPUT -> ORIGDST}.
        """
        return " -> ".join([self.hook] + [r.target for r in self.rules[:-1]])


def walk(chains, hook, wanted):
    """
    Every rule reachable from built-in chain C{hook} for which C{wanted}
    is true, in the order the kernel would try them.

    @param chains: one table of L{parse}.
    @return: a list of L{Path}.
    """
    found = []

    def visit(chain, way, exempt, seen):
        exempt = list(exempt)
        for rule in chains.get(chain, ()):
            owner = rule.owner()
            # Only an unconditional RETURN for the uid exempts it: one for
            # some of its connections (-o lo, -d ...) leaves the rest.
            if rule.target in _LEAVE and owner is not None and not owner[0] and set(rule.options) <= _OWNER_ONLY:
                exempt.append(owner[1:])
                continue
            here = exempt + ([owner[1:]] if owner is not None and owner[0] else [])
            if wanted(rule):
                found.append(Path(hook, way + [rule], here))
            elif rule.target in chains and rule.target not in seen:
                visit(rule.target, way + [rule], here, seen | {rule.target})

    visit(hook, [], [], {hook})
    return found


def redirects(tables):
    """
    @param tables: what L{parse} returned for C{iptables-save -t nat}.
    @return: every way to a C{REDIRECT} rule from L{HOOKS}, as L{Path}s.
    """
    chains = tables.get("nat", {})
    out = []
    for hook in HOOKS:
        out += walk(chains, hook, lambda rule: rule.target == "REDIRECT")
    return out


def to_port(rule):
    """
    @return: the port a C{REDIRECT} rule sends connections to (the first of
        a range), or L{None} when it keeps each connection's own port.
    """
    value = rule.get("--to-ports")
    if not value:
        return None
    try:
        return int(value.replace(":", "-").split("-")[0])
    except ValueError:
        return None


def fail_closed(tables):
    """
    @param tables: what L{parse} returned for C{iptables-save -t filter}.
    @return: the ways from filter C{OUTPUT} to rules that refuse what was
        not redirected (C{-m conntrack ! --ctstate DNAT -j REJECT} or
        C{DROP}), as L{Path}s.
    """
    def refuses(rule):
        negated, states = rule.options.get("--ctstate", (False, ""))
        return rule.target in ("REJECT", "DROP") and negated and "DNAT" in states.split(",")

    return walk(tables.get("filter", {}), "OUTPUT", refuses)
