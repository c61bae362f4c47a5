"""
The benchmark's test bed: the namespaces of L{testbed} with nginx in S, the processes the run
starts (each stopped by its process group), the REDIRECT rule, and the client's command prefix.
"""

import os
import shutil
import sys
import time

import testbed
from testbed.process import tail

from bench import launchers
from bench.common import (
    CLIENT_UID,
    HERE,
    REDIRECTED_PORT,
    SERVER,
    TCP_PORT,
    TLS_PORT,
    BenchError,
    live,
    log,
)


class Bench:
    """
    @ivar args: the parsed options.
    @ivar topo: the L{testbed.Topology} (namespaces C and S).
    @ivar work: a world-readable work directory (logs, configuration, the client's scripts).
    @ivar nginx: the backend's L{testbed.ManagedProcess}.
    @ivar tcpsource: the TCP relay phase's backend (bench/tcpsource.py), when that phase runs.
    @ivar tls_ca: the throwaway CA of nginx's TLS certificate.
    @ivar client_cpus: the CPUs the client is pinned to while profiling, or L{None}.
    """

    def __init__(self, args):
        self.args = args
        self.topo = None
        self.work = None
        self.nginx = None
        self.tcpsource = None
        self.tls_ca = None
        self.server_python = sys.executable
        self.rule_port = None
        self.client_cpus = None

    def start(self):
        self.topo = testbed.Topology(tag="b")
        self.topo.start()
        self.work = os.path.join(self.topo.workdir, "bench")
        os.mkdir(self.work)
        os.chmod(self.work, 0o755)
        for name in ("loadgen.py", "report.lua"):
            dst = os.path.join(self.work, name)
            shutil.copyfile(os.path.join(HERE, name), dst)
            os.chmod(dst, 0o644)
        c = self.topo.client
        # Namespaced sysctls, ours only: room for the Connection: close runs,
        # below origdst's --upstream-source-ports (61000-65535), as its
        # set-up requires: a client given one of those ports can share the
        # four-tuple of an upstream connection (origdst warns at start when
        # the two ranges overlap).
        self.topo.exec(c, ["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 60999"],
                       check=False)
        self.topo.exec(c, ["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"], check=False)
        self.nginx = launchers.start_nginx(self)
        if "tcp" in self.args.phases:
            self.tcpsource = launchers.start_tcpsource(self)

    def spawn(self, name, argv, port, ns, env=None, timeout=30, wait_time_wait=False):
        """
        Start C{argv} in namespace C{ns} and wait until it listens on C{port}.
        """
        self.free_port(ns, port, wait_time_wait)
        log_path = os.path.join(self.work, name + ".log")
        proc = testbed.ManagedProcess(name, ["ip", "netns", "exec", ns] + list(argv), log_path,
                                      env=env)
        live.append(proc)

        def ready():
            if not proc.running():
                raise BenchError("%s exited with %s:\n%s" % (
                    name, proc.popen.returncode, tail(log_path)))
            return self.topo.listening(ns, port)

        try:
            testbed.wait_for(ready, timeout, interval=0.1,
                             what="%s listening on %d" % (name, port))
        except (testbed.TopologyError, BenchError) as e:
            proc.stop()
            live.remove(proc)
            raise BenchError("%s\n%s" % (e, tail(log_path)))
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
            log("port %d still used by %d sockets, e.g. %s; destroying them" % (
                port, len(left), left[0]))
            self.topo.exec(ns, ["ss", "-K", "sport = :%d" % port], check=False)

    def redirect_to(self, port):
        """
        Send the client's connections to SERVER:80 (HTTP), SERVER:9000 (the
        TCP relay phase) and SERVER:443 (TLS) to C{port}, and nothing else.
        """
        c = self.topo.client
        self.topo.exec(c, ["iptables", "-w", "5", "-t", "nat", "-F", "OUTPUT"])
        self.topo.add_redirect(SERVER, [REDIRECTED_PORT, TCP_PORT, TLS_PORT], port)
        self.rule_port = port

    def stop(self):
        for proc in list(reversed(live)):
            try:
                proc.stop()
            finally:
                if proc in live:
                    live.remove(proc)
        if self.topo is not None:
            left = self.topo.stop()
            if left:
                log("warning: namespaces left behind: %s" % ", ".join(left))
            self.topo = None

    def as_client(self, argv):
        """
        @return: C{argv} run in C as the unprivileged client (pinned while profiling).
        """
        pin = ["taskset", "-c", self.client_cpus] if self.client_cpus else []
        return pin + ["ip", "netns", "exec", self.topo.client, "setpriv",
                      "--reuid=%d" % CLIENT_UID, "--regid=%d" % CLIENT_UID,
                      "--clear-groups"] + argv

    def established(self, port):
        """
        @return: how many connections to C{port} in C are established.
        """
        out = self.topo.exec(self.topo.client, ["ss", "-Htn", "state", "established",
                                                "( sport = :%d )" % port], check=False).stdout
        return len([l for l in out.splitlines() if l.strip()])
