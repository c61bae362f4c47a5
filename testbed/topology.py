"""
A two-namespace network, built like Envoy's original-destination tutorial.

Namespace C holds the client and the proxy: an iptables nat OUTPUT REDIRECT rule with an owner
match sends connections of unprivileged users to the proxy's port, while the proxy's own (root)
upstream connections pass untouched.  Namespace S holds the backend.  The two are joined by a
veth pair::

    C  10.250.0.2/24  fd00:250::2/64  <--veth-->  10.250.0.3/24  fd00:250::3/64  S

Everything happens inside namespaces this module creates: the root namespace's links and
iptables rules are never touched (the veth pair is created inside C with its peer moved straight
into S), and traffic only goes to loopback or to the addresses above.  Names are pid-unique
(L{testbed.names}).

Cleanup is layered because a half-torn-down fixture leaves processes and namespaces behind:
L{Topology.stop} (called from test cleanups), an C{atexit} hook for interrupted runs, a SIGTERM
handler (SIGTERM's default action skips atexit), and the stale sweep at the next start for runs
that were killed outright.
"""

import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

from testbed.names import (
    CLIENT_UID,
    CLIENT_V4,
    CLIENT_V6,
    PREFIX,
    SERVER_V4,
    SERVER_V6,
    WORKDIR_PREFIX,
    list_namespaces,
    our_namespaces,
    remove_stale_namespaces,
)
from testbed.process import (
    TWISTD,
    ManagedProcess,
    TopologyError,
    run as _run,
    tail,
    unavailable_reason,
    wait_for,
)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
#: The bed's client (standard library only), run in C as uid 65534.
CLIENT_SCRIPT = os.path.join(HERE, "netclient.py")
#: The bed's backend (Twisted), run in S by L{Topology.start_backend}.
BACKEND_SCRIPT = os.path.join(HERE, "backend.py")

# Every Topology that is started and not yet stopped, for the atexit hook.
_live = []


class Topology:
    """
    Namespaces C (client and proxy) and S (backend) joined by a veth pair.

    @ivar client: name of namespace C.
    @ivar server: name of namespace S.
    @ivar workdir: a private temporary directory for logs and the client script.
    @ivar client_python: the interpreter uid 65534 runs the client with (set by L{start}).
    """

    def __init__(self, python=None, tag=""):
        """
        @param tag: a few lower-case letters that tell this topology's
            namespaces from those of other topologies of the same process.
        """
        pid = os.getpid()
        self.client = "%s%d%sc" % (PREFIX, pid, tag)
        self.server = "%s%d%ss" % (PREFIX, pid, tag)
        self.python = python or sys.executable
        self.workdir = None
        self.client_python = None
        self.proxy = None
        self.backend = None
        self._procs = []

    # -- building and tearing down -------------------------------------------------------

    def start(self):
        """
        Create both namespaces, the veth pair and the addresses, and find an interpreter the
        unprivileged client can run.  On any failure, whatever was built is removed again.
        """
        reason = unavailable_reason()
        if reason:
            raise TopologyError(reason)
        remove_stale_namespaces()
        _live.append(self)
        _install_sigterm_handler()
        try:
            self.workdir = tempfile.mkdtemp(prefix="%s%d-" % (WORKDIR_PREFIX, os.getpid()))
            self._build()
            self._install_client()
        except BaseException:
            self.stop()
            raise

    def _build(self):
        c, s = self.client, self.server
        cveth, sveth = c + "0", s + "0"
        for ns in (c, s):
            _run(["ip", "netns", "add", ns])
        # Created inside C with its peer moved straight into S: the root namespace never
        # sees either end.
        _run(["ip", "-n", c, "link", "add", cveth, "type", "veth", "peer", "name", sveth,
              "netns", s])
        ends = ((c, cveth, CLIENT_V4, CLIENT_V6), (s, sveth, SERVER_V4, SERVER_V6))
        for ns, dev, v4, v6 in ends:
            _run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0"],
                 check=False)
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", ns, "addr", "add", v4 + "/24", "dev", dev])
            # nodad: usable at once instead of after duplicate address detection.
            _run(["ip", "-n", ns, "-6", "addr", "add", v6 + "/64", "dev", dev, "nodad"])
            _run(["ip", "-n", ns, "link", "set", dev, "up"])

    def _install_client(self):
        """
        Copy netclient.py to a world-readable directory (the repo may sit under a mode-700
        home) and pick the first interpreter uid 65534 can actually run it with.
        """
        client_dir = os.path.join(self.workdir, "client")
        os.mkdir(client_dir)
        os.chmod(self.workdir, 0o755)
        os.chmod(client_dir, 0o755)
        self.client_script = os.path.join(client_dir, "netclient.py")
        shutil.copyfile(CLIENT_SCRIPT, self.client_script)
        os.chmod(self.client_script, 0o644)
        tried = []
        for python in (sys.executable, "/usr/bin/python3"):
            if not python or not os.path.exists(python):
                continue
            proc = _run(self.as_client([python, self.client_script, "--probe"]), check=False)
            if proc.returncode == 0 and proc.stdout.strip() == "ok":
                self.client_python = python
                return
            tried.append("%s: %s" % (python, (proc.stderr or proc.stdout).strip()[-200:]))
        raise TopologyError("no Python that uid %d can run: %s" % (CLIENT_UID, "; ".join(tried)))

    def stop(self):
        """
        Stop our processes, delete our namespaces (which removes their veths and iptables
        rules with them) and the work directory.  Safe to call more than once.

        @return: the names of our namespaces still present afterwards (should be empty).
        """
        for proc in reversed(self._procs):
            proc.stop()
        self._procs = []
        for ns in (self.client, self.server):
            if ns in list_namespaces():
                _run(["ip", "netns", "del", ns], check=False)
        if self.workdir and os.environ.get("ORIGDST_E2E_KEEP") is None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self in _live:
            _live.remove(self)
        return [ns for ns in our_namespaces(os.getpid()) if ns in (self.client, self.server)]

    # -- commands inside the namespaces ------------------------------------------------

    def exec(self, ns, argv, **kwargs):
        """
        Run a short command inside namespace C{ns} as root.
        """
        return _run(["ip", "netns", "exec", ns] + list(argv), **kwargs)

    def as_client(self, argv):
        """
        @return: C{argv} run in C as the unprivileged client (uid 65534), which the
            REDIRECT rule's owner match sends to the proxy.
        """
        return ["ip", "netns", "exec", self.client, "setpriv",
                "--reuid=%d" % CLIENT_UID, "--regid=%d" % CLIENT_UID, "--clear-groups"] + argv

    def add_redirect(self, dst, dports, to_port, owner_match=True, fail_closed=True):
        """
        Add a nat OUTPUT REDIRECT rule in C, with ip6tables for an IPv6 C{dst}, and (like
        C{conf/iptables.sh}) the filter OUTPUT rule that makes it fail closed.

        @param dports: destination ports (an int or a list).
        @param owner_match: exclude uid 0 (the proxy) so its upstream connections are not
            redirected back to it; without it, a loop.
        @param fail_closed: also reject (with a TCP reset) packets to C{dst} on those ports
            from any uid but 0 whose connection was not redirected: one that matched a
            conntrack entry of an earlier connection of the proxy never passes the nat rule
            and would reach C{dst} around the proxy.
        """
        tool = "ip6tables" if ":" in dst else "iptables"
        if isinstance(dports, int):
            dports = [dports]
        match = ["-p", "tcp", "-d", dst, "-m", "multiport",
                 "--dports", ",".join(str(p) for p in dports)]
        rule = [tool, "-w", "5", "-t", "nat", "-A", "OUTPUT"] + match
        if owner_match:
            rule += ["-m", "owner", "!", "--uid-owner", "0"]
        rule += ["-j", "REDIRECT", "--to-port", str(to_port)]
        self.exec(self.client, rule)
        if fail_closed:
            self.exec(self.client, [tool, "-w", "5", "-A", "OUTPUT"] + match + [
                "-m", "owner", "!", "--uid-owner", "0", "-m", "conntrack", "!", "--ctstate",
                "DNAT", "-j", "REJECT", "--reject-with", "tcp-reset"])

    def listening(self, ns, port):
        """
        @return: whether something in C{ns} listens on TCP C{port}.
        """
        out = self.exec(ns, ["ss", "-Hltn"], check=False).stdout
        return any(re.search(r":%d$" % port, line.split()[3]) for line in out.splitlines()
                   if len(line.split()) >= 4)

    # -- long-running processes ------------------------------------------------------

    def _spawn(self, name, ns, argv, port, timeout=20, env=None):
        log_path = os.path.join(self.workdir, name + ".log")
        proc = ManagedProcess(name, ["ip", "netns", "exec", ns] + argv, log_path, env=env)
        self._procs.append(proc)

        def ready():
            if not proc.running():
                raise TopologyError("%s exited with %s:\n%s" % (
                    name, proc.popen.returncode, tail(log_path)))
            return self.listening(ns, port)

        try:
            wait_for(ready, timeout, interval=0.1, what="%s listening on %d" % (name, port))
        except TopologyError as e:
            raise TopologyError("%s\n%s" % (e, tail(log_path)))
        return proc

    def start_backend(self, port=80):
        """
        Start testbed/backend.py in S listening dual-stack on C{port}.
        """
        self.backend = self._spawn(
            "backend", self.server,
            [self.python, BACKEND_SCRIPT, "--port", str(port)], port)
        return self.backend

    def track(self, process):
        """
        Stop C{process} (anything with a C{stop()} method) with the topology's own.
        """
        self._procs.append(process)

    def start_server(self, name, argv, port, timeout=20):
        """
        Start another server in S (C{argv} run as root) and wait until it
        listens on C{port}, for at most C{timeout} seconds.
        """
        return self._spawn(name, self.server, list(argv), port, timeout=timeout)

    def start_proxy(self, args, port, name="proxy", wrapper=()):
        """
        Start the proxy in C as root under twistd with the repo on C{PYTHONPATH} so the
        plugin in twisted/plugins/ is found.

        @param args: origdst options after the plugin name, e.g. C{["--port", "tcp6:15001"]}.
        @param port: the port to wait for.
        @param name: the name of its log, C{<name>.log} (more than one proxy: a name each).
        @param wrapper: a command the proxy runs under, e.g. C{["prlimit", "--nofile=256"]}.
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO_ROOT + (
            os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        # The log goes to stdout, i.e. to proxy.log: a twistd log file would rotate at 1 MB
        # and invalidate offsets into it.
        argv = list(wrapper) + [self.python, "-c", TWISTD, "-n", "--pidfile=", "--logfile=-",
                "origdst"] + list(args)
        self.proxy = self._spawn(name, self.client, argv, port, env=env)
        return self.proxy

    def proxy_log(self):
        """
        @return: everything the proxy logged or wrote to stdout/stderr so far.
        """
        if self.proxy and os.path.exists(self.proxy.log_path):
            with open(self.proxy.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        return ""

    def backend_log(self):
        """
        @return: the backend's output (one line per request).
        """
        if self.backend and os.path.exists(self.backend.log_path):
            with open(self.backend.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        return ""

    # -- the client ------------------------------------------------------------------

    def start_script(self, path, args):
        """
        Start the script at C{path} (standard library only) in C as the
        unprivileged client, with C{args}; its stdout is piped.  It runs from a
        world-readable copy, like the bed's own client.

        @return: the L{subprocess.Popen}; L{finish_script} collects it.
        """
        script = os.path.join(os.path.dirname(self.client_script), os.path.basename(path))
        if not os.path.exists(script):
            shutil.copyfile(path, script)
            os.chmod(script, 0o644)
        return subprocess.Popen(
            self.as_client([self.client_python, script] + [str(a) for a in args]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    @staticmethod
    def finish_script(proc, timeout=60):
        """
        Wait (bounded) for a script from L{start_script}.

        @return: the JSON it printed.
        """
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=5)
            raise TopologyError("client script timed out after %ss" % (timeout,))
        if proc.returncode != 0:
            raise TopologyError("client script failed (%d): %s" % (proc.returncode, err.strip()))
        return json.loads(out)

    def run_client(self, spec, timeout=60):
        """
        Run netclient.py in C as uid 65534 with C{spec} (see netclient.py) on stdin.

        @return: the decoded JSON it prints.
        """
        proc = subprocess.Popen(
            self.as_client([self.client_python, self.client_script]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(json.dumps(spec), timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=5)
            raise TopologyError("client timed out after %ss: %r" % (timeout, spec))
        if proc.returncode != 0:
            raise TopologyError("client failed (%d): %s" % (proc.returncode, err.strip()))
        return json.loads(out)

def _on_sigterm(signum, frame):
    """
    A terminated run (SIGTERM's default action skips atexit) cleans up, then dies of the
    signal as it would have.
    """
    _stop_all()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_sigterm_handler():
    """
    Take over SIGTERM only where nobody else handles it, and only from the main thread.
    """
    try:
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread
        pass


@atexit.register
def _stop_all():
    """
    Interrupted runs (Ctrl-C) skip test cleanups; still leave nothing behind.
    """
    for topology in list(_live):
        try:
            topology.stop()
        except Exception as e:  # best effort at interpreter exit
            sys.stderr.write("origdst e2e: cleanup of %s failed: %s\n" % (topology.client, e))
