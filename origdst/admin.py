"""
The admin endpoint: Envoy's admin interface, and a live page of destinations.

A separate twisted.web site, on loopback by default (C{--admin}), serving:

  - C{/}: a page listing the current destinations, updating itself;
  - C{/ready}: C{200 LIVE} once listening, C{503} before and while draining;
  - C{/server_info}, C{/config_dump}: JSON;
  - C{/stats} (C{?filter=REGEX}, C{?usedonly}, C{?format=json|prometheus}),
    C{/stats/prometheus};
  - C{/clusters} (C{?format=json});
  - C{/logging} (C{POST ?level=debug}), C{/reset_counters} and
    C{/drain_listeners} (C{POST}), each
    POST with C{X-Origdst-Admin: 1};
  - C{/help}.

Requests that change something must be POSTs, as in Envoy, so that a page
or a link cannot change the proxy by a mere GET; which endpoints change
something is a column of L{ENDPOINTS}, and L{origdst.adminguard} refuses
such POSTs from other sites, and every request whose C{Host} is not the
admin's own (DNS rebinding). Nothing on the data path
imports this module; it reads the counters of L{origdst.stats} and the hosts
of the cluster when asked, so serving it costs the proxy nothing in between.
With C{--workers}, C{/stats} and C{/clusters} (so the page too) show the sum
over every worker, gathered when asked (L{origdst.workerstats}).
"""

import json
import os
import re

from twisted.internet import defer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

import origdst
from origdst import adminguard, clusterstatus, logs, stats
from origdst.adminstate import Admin  # noqa: F401 (what the endpoints read, and tap makes)

TEXT = b"text/plain; charset=UTF-8"
JSON = b"application/json"
PROMETHEUS = b"text/plain; version=0.0.4; charset=UTF-8"
HTML = b"text/html; charset=UTF-8"

# The page's script and style are inline; nothing else may be loaded.
PAGE_POLICY = (
    b"default-src 'none'; connect-src 'self'; script-src 'unsafe-inline'; "
    b"style-src 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; "
    b"form-action 'none'; frame-ancestors 'none'"
)

_PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page.html")


def _arg(request, name, default=None):
    values = request.args.get(name.encode("ascii"))
    if not values:
        return default
    return values[0].decode("utf-8", "replace")


def _json(data):
    return JSON, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode("utf-8")


def _text(text):
    return TEXT, text.encode("utf-8")


def _seconds(value):
    return "%ds" % value


class Endpoint(Resource):
    """
    One admin endpoint. Subclasses implement L{respond} for what it shows
    and, where a POST changes something, L{change}; this class adds the
    headers every answer has, refuses a C{Host} that is not the admin's own
    and methods other than GET, HEAD and POST, and lets a POST reach
    L{change} only past the cross-site checks.

    @cvar help: the line C{/help} shows for it.
    @ivar changes: whether a POST here changes the proxy; set from the
        endpoint table, L{ENDPOINTS}.
    """

    help = ""
    changes = False

    def __init__(self, admin, changes=False):
        Resource.__init__(self)
        self.admin = admin
        self.changes = changes

    def getChild(self, name, request):
        return NotFound(self.admin)

    def render(self, request):
        request.setHeader(b"server", b"origdst")
        request.setHeader(b"cache-control", b"no-cache, max-age=0")
        request.setHeader(b"x-content-type-options", b"nosniff")
        guard = self.admin.guard
        refusal = guard.misdirected(request)
        if refusal is not None:
            code, (kind, body) = refusal[0], _text(refusal[1])
        elif request.method not in (b"GET", b"HEAD", b"POST"):
            # Also a CORS preflight (OPTIONS): never answered with allow headers.
            request.setHeader(b"allow", b"GET, HEAD, POST")
            code, (kind, body) = 405, _text(f"Method {request.method.decode('latin-1')} not allowed.\n")
        elif self.changes and request.method == b"POST":
            refusal = guard.cross_site(request)
            if refusal is not None:
                code, (kind, body) = refusal[0], _text(refusal[1])
            else:
                code, (kind, body) = self.change(request)
        else:
            answer = self.respond(request)
            if isinstance(answer, defer.Deferred):
                return _later(request, answer)
            code, (kind, body) = answer
        return _send(request, code, kind, body)

    def respond(self, request):
        """
        Answer a request that changes nothing: a GET or HEAD, or a POST to an
        endpoint that changes nothing. An endpoint that only changes things
        keeps this default, Envoy's answer to a mutating request that is not
        a POST.

        @return: C{(status, (content type, body bytes))}.
        """
        return self.post_required(request)

    def change(self, request):
        """
        Answer a POST that passed the cross-site checks, on an endpoint that
        L{ENDPOINTS} says changes something.

        @return: as L{respond}.
        """
        raise NotImplementedError()

    @staticmethod
    def post_required(request):
        """
        Envoy's answer to a mutating request that is not a POST.
        """
        request.setHeader(b"allow", b"POST")
        method = request.method.decode("latin-1")
        return 405, _text(f"Method {method} not allowed, POST required.\n")


class NotFound(Endpoint):
    def respond(self, request):
        return 404, _text("invalid path. " + _help_text(self.admin.root))


class Page(Endpoint):
    help = "the live page of destinations"

    def __init__(self, admin, changes=False):
        Endpoint.__init__(self, admin, changes)
        with open(_PAGE, "rb") as f:
            self.page = f.read()

    def respond(self, request):
        request.setHeader(b"content-security-policy", PAGE_POLICY)
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"referrer-policy", b"no-referrer")
        return 200, (HTML, self.page)


class Ready(Endpoint):
    help = "print server state, return 200 if LIVE, otherwise return 503"

    def respond(self, request):
        state = self.admin.stats.state
        return (200 if state == stats.LIVE else 503), _text(state + "\n")


class ServerInfo(Endpoint):
    help = "print server version, state, uptime and options in effect (JSON)"

    def respond(self, request):
        admin = self.admin
        uptime = _seconds(admin.reactor.seconds() - admin.stats.started)
        options = admin.settings_by_option()
        options["config"] = admin.config_path
        return 200, _json(
            {
                "version": origdst.__version__,
                "state": admin.stats.state,
                "uptime_current_epoch": uptime,
                "uptime_all_epochs": uptime,
                "command_line_options": options,
            }
        )


class ConfigDump(Endpoint):
    help = "print the effective configuration (JSON)"

    def respond(self, request):
        admin = self.admin
        return 200, _json(
            {
                "version": origdst.__version__,
                "config_file": admin.config_path,
                "settings": admin.settings_by_option(),
            }
        )


class Stats(Endpoint):
    help = "print server stats (?filter=REGEX, ?usedonly, ?format=json|prometheus)"

    def respond(self, request):
        return self.stats(request, _arg(request, "format", "text"))

    def stats(self, request, form):
        if form not in ("text", "json", "prometheus"):
            return 400, _text(f"usage: /stats?format=(text|json|prometheus), not {form!r}\n")
        try:
            re.compile(_arg(request, "filter") or "")
        except re.error as e:
            return 400, _text(f"Invalid regex: {e}\n")
        return self.admin.figures().addCallback(self.show, request, form)

    def show(self, figures, request, form):
        selected = stats.select(self.admin.collect(figures), _arg(request, "filter"), b"usedonly" in request.args)
        kind = {"json": JSON, "prometheus": PROMETHEUS}.get(form, TEXT)
        render = {"json": stats.as_json, "prometheus": stats.as_prometheus}.get(form, stats.as_text)
        return 200, (kind, render(selected, figures.missing).encode("utf-8"))


class Prometheus(Stats):
    help = "print server stats in Prometheus format (?filter=REGEX, ?usedonly)"

    def respond(self, request):
        return self.stats(request, "prometheus")


class Clusters(Endpoint):
    help = "upstream cluster status, one line per host and figure (?format=json)"

    def respond(self, request):
        form = _arg(request, "format", "text")
        if form not in ("text", "json"):
            return 400, _text(f"usage: /clusters?format=(text|json), not {form!r}\n")
        return self.admin.figures().addCallback(self.show, form)

    def show(self, figures, form):
        settings = self.admin.settings
        if form == "json":
            return 200, _json(clusterstatus.as_json(settings, figures.hosts, figures.missing))
        return 200, _text(clusterstatus.as_text(settings, figures.hosts, figures.missing))


class Logging(Endpoint):
    help = "query (GET) or change (POST ?level=debug|info|warn|error) the log level"

    def respond(self, request):
        if request.args:
            return self.post_required(request)
        return 200, self.levels()

    def change(self, request):
        level = _arg(request, "level")
        if request.args:
            if level is None or level.lower() not in logs.LEVELS:
                choices = ", ".join(logs.LEVELS)
                return 400, _text(f"usage: POST /logging?level=<{choices}>\n")
            logs.set_level(level.lower())
        return 200, self.levels()

    @staticmethod
    def levels():
        return _text(f"active loggers:\n  origdst: {logs.level()}\n")


class ResetCounters(Endpoint):
    help = "reset all counters to zero (POST)"

    def change(self, request):
        self.admin.stats.reset()
        for host in self.admin.cluster.hosts.values():
            pool = host.pool
            pool.rq_total = pool.rq_success = pool.rq_error = pool.rq_timeout = 0
            pool.cx_total = pool.cx_connect_fail = pool.rx_bytes = pool.tx_bytes = 0
        return 200, _text("OK\n")


class DrainListeners(Endpoint):
    help = "stop listening and drain client connections (POST); the process keeps running"

    def change(self, request):
        if self.admin.drain is None:
            return 503, _text("draining is not available here\n")
        self.admin.drain()
        return 200, _text("OK\n")


class Help(Endpoint):
    help = "print this list"

    def respond(self, request):
        return 200, _text(_help_text(self.admin.root))


def _send(request, code, kind, body):
    # Twisted has no reason phrase for 421 (RFC 9110, 15.5.20).
    request.setResponseCode(code, b"Misdirected Request" if code == 421 else None)
    request.setHeader(b"content-type", kind)
    return body


def _later(request, answer):
    """
    Send what the L{defer.Deferred} C{answer} fires with (as L{Endpoint.respond}
    returns): at once if it has fired, else when it does.
    """
    now, gone = [], []
    request.notifyFinish().addErrback(gone.append)

    def arrived(result):
        if not isinstance(result, tuple):
            logs.logger("origdst.admin").failure("Could not gather the figures.", result)
            code, result = 500, _text("Internal error gathering the figures; see the log.\n")
        else:
            code, result = result
        if now is None and not gone:
            request.write(_send(request, code, *result))
            request.finish()
        elif now is not None:
            now.append((code, result))

    answer.addBoth(arrived)
    if now:
        code, (kind, body) = now[0]
        return _send(request, code, kind, body)
    now = None
    return NOT_DONE_YET


def _help_text(root):
    lines = ["admin commands are:"]
    for path, resource in _endpoints(root):
        needs = " (a POST needs the header X-Origdst-Admin: 1)" if resource.changes else ""
        lines.append(f"  {path}: {resource.help}{needs}")
    return "\n".join(lines) + "\n"


def _endpoints(resource, prefix=""):
    for name in sorted(resource.children):
        child = resource.children[name]
        path = prefix + "/" + name.decode("ascii")
        yield path, child
        yield from _endpoints(child, path)


class AdminSite(Site):
    """
    The admin site; its requests are not written to the proxy's log (the page
    polls every few seconds).
    """

    noisy = False
    displayTracebacks = False

    def log(self, request):
        pass


#: The description to listen on for C{--admin} (a unix socket's mode), for tap.
listen_description = adminguard.listen_description

#: The endpoints: path, class, and whether a POST there changes the proxy (so
#: it must pass L{AdminGuard.cross_site} before the endpoint's C{change} is
#: called). An endpoint added later that changes something says so here.
ENDPOINTS = [
    ("", Page, False),
    ("ready", Ready, False),
    ("server_info", ServerInfo, False),
    ("config_dump", ConfigDump, False),
    ("stats", Stats, False),
    ("stats/prometheus", Prometheus, False),
    ("clusters", Clusters, False),
    ("logging", Logging, True),
    ("reset_counters", ResetCounters, True),
    ("drain_listeners", DrainListeners, True),
    ("help", Help, False),
]


def site(admin):
    """
    @param admin: an L{Admin}.
    @return: the admin L{Site}, timing out idle connections on the admin's
        reactor.
    """
    root = admin.root = Endpoint(admin)
    for path, kind, changes in ENDPOINTS:
        parent, _, name = path.rpartition("/")
        resource = root.children[parent.encode("ascii")] if parent else root
        resource.putChild(name.encode("ascii"), kind(admin, changes))
    return AdminSite(root, reactor=admin.reactor)
