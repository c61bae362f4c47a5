"""
The command lines and configuration files of what the benchmark runs: origdst (under CPython,
PyPy, or from a baseline checkout), Envoy, and nginx as the backend.

The configuration files are L{string.Template}s in bench/templates/: C{nginx.conf} takes
C{$work}, C{$redirected}, C{$direct}, C{$big} and C{$body}; C{envoy.yaml} takes C{$port}
(C{$$} stands for one dollar sign).
"""

import os
import string

import testbed
from testbed.process import tail

from bench import procfs
from bench.common import (
    BIG_NAME,
    BODY,
    DIRECT_PORT,
    ENVOY_PORT,
    HERE,
    ORIGDST_PORT,
    REDIRECTED_PORT,
    TEMPLATES,
    live,
)


def render(template, path, **values):
    """
    Write bench/templates/C{template} filled in with C{values} to C{path}.
    """
    with open(os.path.join(TEMPLATES, template)) as f:
        text = string.Template(f.read()).substitute(values)
    with open(path, "w") as f:
        f.write(text)
    return path


class Proxy:
    """
    One proxy process (origdst or Envoy) in namespace C.
    """

    def __init__(self, name, argv, port, expect_server, env=None):
        self.name = name
        self.argv = argv
        self.port = port
        self.expect_server = expect_server
        self.env = env
        self.proc = None
        self.starts = 0
        self.profile_path = None

    def start(self, bench):
        self.starts += 1
        argv = self.argv
        if any("{profile_path}" in a for a in argv):
            self.profile_path = os.path.join(bench.work, "cpuprofile-%s.raw" % self.name)
            argv = [a.replace("{profile_path}", self.profile_path) for a in argv]
        run_name = "%s-%d" % (self.name, self.starts)
        env = self.env
        if env is not None:
            env = {k: v.replace("{work}", bench.work).replace("{name}", run_name)
                   for k, v in env.items()}
        self.proc = bench.spawn(run_name, argv, self.port,
                                env=env, ns=bench.topo.client,
                                # Envoy's listener does not bind over TIME-WAIT
                                # sockets on its port; origdst's does.
                                wait_time_wait=self.expect_server == "envoy")
        bench.redirect_to(self.port)
        return self

    def pids(self):
        return procfs.process_tree(self.proc.popen.pid) if self.proc else []

    def cpu(self):
        return procfs.cpu_seconds(self.pids())

    def cpu_split(self):
        return procfs.cpu_split(self.pids())

    def rss_kib(self):
        return procfs.status_kib(self.pids(), "VmRSS")

    def hwm_kib(self):
        return procfs.status_kib(self.pids(), "VmHWM")

    def stop(self):
        if self.proc is not None:
            self.proc.stop()
            if self.proc in live:
                live.remove(self.proc)
            self.proc = None

    def log_tail(self, lines=20):
        path = self.proc.log_path if self.proc else None
        return tail(path, lines) if path else ""


#: Switches of a target's name (C{origdst-nolean}, C{origdst-pypy-nogcbound}):
#: code run in the proxy before twistd starts, for measuring origdst with a
#: part of it turned off (the first process only: not in C{--workers} copies).
VARIANTS = {
    "nolean": "import origdst.eventloop as e; "
              "e.LEAN_DISPATCH = dict.fromkeys(e.LEAN_DISPATCH, False); ",
    "lean": "import origdst.eventloop as e; "
            "e.LEAN_DISPATCH = dict.fromkeys(e.LEAN_DISPATCH, True); ",
    "nogcbound": "import origdst.gcbound as g; g.install = lambda *a, **k: None; ",
}

#: Switches of a target's name that set the proxy's environment: PyPy's GC
#: log (kept in /tmp after the run), PyPy's nursery size.
ENV_VARIANTS = {
    "gclog": {"PYPYLOG": "gc-minor,gc-collect-step,gc-collect-done:/tmp/origdst-bench-pypylog-{name}.txt"},
    "jitlog": {"PYPYLOG": "jit-tracing,jit-optimize,gc-collect-step:"
                          "/tmp/origdst-bench-pypylog-{name}.txt"},
    "nursery1m": {"PYPY_GC_NURSERY": "1M"},
    "nursery4m": {"PYPY_GC_NURSERY": "4M"},
    "nursery8m": {"PYPY_GC_NURSERY": "8M"},
    "nursery16m": {"PYPY_GC_NURSERY": "16M"},
}


def origdst(name, interpreter, source, env, more=(), extra=(), profile=False, variants=()):
    """
    origdst under twistd from the checkout C{source}, listening on L{ORIGDST_PORT}.

    @param profile: load bench/cpusampler.py into the proxy before twistd starts.
    @param variants: keys of L{VARIANTS}.
    """
    # env -C: "python -c" puts the working directory first on sys.path.
    code = "".join(VARIANTS.get(v, "") for v in variants) + testbed.TWISTD
    if profile:
        code = ("import sys; sys.path.insert(0, %r); import cpusampler; "
                "cpusampler.install('{profile_path}'); sys.path.pop(0); " % HERE) + code
    env = dict(env)
    for v in variants:
        env.update(ENV_VARIANTS.get(v, {}))
    argv = ["env", "-C", source, interpreter, "-c", code, "-n", "--pidfile=", "--logfile=-",
            "origdst", "--port", "tcp:%d" % ORIGDST_PORT] + list(more) + list(extra)
    return Proxy(name, argv, ORIGDST_PORT, "origdst", env=env)


class EnvoyProxy(Proxy):
    """
    Envoy on a port of its own at every start: its listener does not bind
    over the TIME-WAIT sockets that a previous Connection: close phase left
    on its port (they last 60 s), so each start takes the next port from
    L{ENVOY_PORT} on instead of waiting for them.
    """

    #: Starts so far, over all Envoy targets of the run.
    started = 0

    def __init__(self, name, binary, workers):
        Proxy.__init__(self, name, [binary, "--concurrency", str(workers)], ENVOY_PORT,
                       "envoy")
        self.binary = binary
        self.workers = workers

    def start(self, bench):
        self.port = ENVOY_PORT + EnvoyProxy.started
        EnvoyProxy.started += 1
        conf = render("envoy.yaml", os.path.join(bench.work, "envoy-%d.yaml" % self.port),
                      port=self.port)
        self.argv = [self.binary, "-c", conf, "--concurrency", str(self.workers),
                     "--disable-hot-restart", "--log-level", "warn"]
        return Proxy.start(self, bench)


def envoy(name, binary, workers):
    """
    Envoy with C{workers} worker threads and the configuration of
    bench/templates/envoy.yaml.
    """
    return EnvoyProxy(name, binary, workers)


def start_nginx(bench):
    """
    nginx in S: the 13-byte body and the big file, on the redirected and the direct port.
    """
    www = os.path.join(bench.work, "www")
    os.mkdir(www)
    os.chmod(www, 0o755)
    big = os.path.join(www, BIG_NAME)
    with open(big, "wb") as f:
        # Sparse: no disk space, and nginx's sendfile reads it from the page cache.
        f.truncate(bench.args.bulk_mib * 1024 * 1024)
    os.chmod(big, 0o644)
    # Read it once, so that no target pays for filling the page cache.
    with open(big, "rb") as f:
        while f.read(8 * 1024 * 1024):
            pass
    conf = render("nginx.conf", os.path.join(bench.work, "nginx.conf"), work=bench.work,
                  redirected=REDIRECTED_PORT, direct=DIRECT_PORT, big=BIG_NAME,
                  body=BODY.decode().replace("\n", "\\n"))
    proc = bench.spawn("nginx", ["nginx", "-e", os.path.join(bench.work, "nginx-error.log"),
                                 "-p", bench.work + "/", "-c", conf],
                       DIRECT_PORT, ns=bench.topo.server)
    testbed.wait_for(lambda: bench.topo.listening(bench.topo.server, REDIRECTED_PORT), 10,
                     what="nginx on port %d" % REDIRECTED_PORT)
    return proc
