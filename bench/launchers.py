"""
The command lines and configuration files of what the benchmark runs: origdst (under CPython,
PyPy, or from a baseline checkout), Envoy, and nginx as the backend.

The configuration files are L{string.Template}s in bench/templates/: C{nginx.conf} takes
C{$work}, C{$redirected}, C{$direct}, C{$big}, C{$body}, C{$tls_redirected}, C{$tls_direct},
C{$cert} and C{$key}; C{envoy.yaml} (HTTP), C{envoy-tcp.yaml} (the TCP relay phase) and
C{envoy-tls.yaml} (TLS passthrough) take C{$port} (C{$$} stands for one dollar sign).
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
    TCP_DIRECT_PORT,
    TCP_PORT,
    TEMPLATES,
    TLS_DIRECT_PORT,
    TLS_NAME,
    TLS_PORT,
    live,
    run,
)

#: What a proxy is set up to carry: HTTP (most phases), the TCP relay
#: phase's stream, or TLS passthrough.
HTTP, TCP, TLS = "http", "tcp", "tls"


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

    def __init__(self, name, argv, port, expect_server, env=None, mode_args=None):
        self.name = name
        self.argv = argv
        #: Options added for a mode (L{TCP}, L{TLS}), e.g. origdst's --tcp-ports.
        self.mode_args = mode_args or {}
        self.port = port
        self.expect_server = expect_server
        self.env = env
        self.proc = None
        self.starts = 0
        self.profile_path = None

    def start(self, bench, mode=HTTP):
        self.starts += 1
        argv = list(self.argv) + list(self.mode_args.get(mode, ()))
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
    "norawcopy": "import origdst.rawcopy as r; r._raw = None; ",
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
    "nursery32m": {"PYPY_GC_NURSERY": "32M"},
    "gcmin32m": {"PYPY_GC_MIN": "32M"},
    "gcmin64m": {"PYPY_GC_MIN": "64M"},
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
    # The TCP phase's port takes the relay, as a user lists a non-HTTP
    # port; TLS is found by detection, as on a port of its own.
    return Proxy(name, argv, ORIGDST_PORT, "origdst", env=env,
                 mode_args={TCP: ["--tcp-ports", str(TCP_PORT)]})


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

    #: The configuration of each mode: HTTP's connection manager, or
    #: tcp_proxy (with tls_inspector for TLS).
    TEMPLATES = {HTTP: "envoy.yaml", TCP: "envoy-tcp.yaml", TLS: "envoy-tls.yaml"}

    def start(self, bench, mode=HTTP):
        self.port = ENVOY_PORT + EnvoyProxy.started
        EnvoyProxy.started += 1
        template = self.TEMPLATES[mode]
        conf = render(template, os.path.join(bench.work, "%s-%d.yaml" % (
            os.path.splitext(template)[0], self.port)), port=self.port)
        self.argv = [self.binary, "-c", conf, "--concurrency", str(self.workers),
                     "--disable-hot-restart", "--log-level", "warn"]
        return Proxy.start(self, bench, mode)


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
    cert, key = make_tls_files(bench)
    conf = render("nginx.conf", os.path.join(bench.work, "nginx.conf"), work=bench.work,
                  redirected=REDIRECTED_PORT, direct=DIRECT_PORT, big=BIG_NAME,
                  body=BODY.decode().replace("\n", "\\n"), tls_redirected=TLS_PORT,
                  tls_direct=TLS_DIRECT_PORT, cert=cert, key=key)
    proc = bench.spawn("nginx", ["nginx", "-e", os.path.join(bench.work, "nginx-error.log"),
                                 "-p", bench.work + "/", "-c", conf],
                       DIRECT_PORT, ns=bench.topo.server)
    for port in (REDIRECTED_PORT, TLS_PORT, TLS_DIRECT_PORT):
        testbed.wait_for(lambda: bench.topo.listening(bench.topo.server, port), 10,
                         what="nginx on port %d" % port)
    return proc


def make_tls_files(bench):
    """
    A throwaway CA and a certificate for L{TLS_NAME} that it signed (ECDSA
    P-256, as most servers now use), made with the openssl command in the
    work directory; C{bench.tls_ca} is the CA the TLS clients verify with.

    @return: the paths of the server's certificate and key.
    """
    d = os.path.join(bench.work, "tls")
    os.mkdir(d)
    os.chmod(d, 0o755)
    ca, ca_key = os.path.join(d, "ca.pem"), os.path.join(d, "ca.key")
    cert, key = os.path.join(d, "server.pem"), os.path.join(d, "server.key")
    csr, ext = os.path.join(d, "server.csr"), os.path.join(d, "server.ext")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run(["openssl", "req", "-x509"] + ec + [
        "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=origdst bench CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    run(["openssl", "req"] + ec + ["-keyout", key, "-out", csr, "-subj", "/CN=" + TLS_NAME])
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:%s\nbasicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n" % TLS_NAME)
    run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key,
         "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext])
    os.chmod(ca, 0o644)
    bench.tls_ca = ca
    return cert, key


def start_tcpsource(bench):
    """
    bench/tcpsource.py in S: the big file as a stream that is not HTTP, on
    the redirected and the direct TCP port.
    """
    big = os.path.join(bench.work, "www", BIG_NAME)
    return bench.spawn("tcpsource", [bench.server_python, os.path.join(HERE, "tcpsource.py"),
                                     big, str(TCP_PORT), str(TCP_DIRECT_PORT)],
                       TCP_PORT, ns=bench.topo.server)
