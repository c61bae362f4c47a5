"""
Short commands and long-running processes for the namespace test bed, each bounded in time.

A long-running process is started in its own session, so that stopping it signals exactly the
process group we created and nothing else on the machine.
"""

import os
import shutil
import signal
import subprocess
import time

#: twistd, run by the interpreter the tests use.  (C{python -m twisted} is C{twist}, whose
#: options differ: no C{-n}, no C{--pidfile}.)
TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"

REQUIRED_TOOLS = ("ip", "iptables", "ip6tables", "setpriv", "ss")


class TopologyError(Exception):
    """
    The namespace fixture could not be built or a managed process misbehaved.
    """


def unavailable_reason():
    """
    Say why namespace tests cannot run here, without changing anything.

    @return: a reason for skipping, or L{None} if root and all tools are present.
    """
    if os.geteuid() != 0:
        return "needs root (network namespaces and iptables)"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return "missing tools: %s" % ", ".join(missing)
    return None


def run(argv, timeout=20, check=True, input=None):
    """
    Run a short command, bounded in time.

    @return: the L{subprocess.CompletedProcess} (text mode).
    @raise TopologyError: if C{check} and it exits non-zero.
    """
    proc = subprocess.run(
        argv,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise TopologyError(
            "%s failed (%d): %s" % (" ".join(argv), proc.returncode, proc.stderr.strip())
        )
    return proc


def pid_running(pid):
    """
    @return: whether C{pid} exists and is not a zombie (a killed run not yet reaped).
    """
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


class ManagedProcess:
    """
    A long-running process started in a namespace, in its own session so that stopping it means
    signalling exactly the process group we created.

    @ivar name: a short label for messages.
    @ivar log_path: where its stdout and stderr go.
    """

    def __init__(self, name, argv, log_path, env=None):
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def running(self):
        return self.popen.poll() is None

    def stop(self, timeout=5):
        """
        SIGTERM the process group, then SIGKILL it if it is still there after C{timeout}.
        Only signalled while unreaped, so the group id cannot have been reused.
        """
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.popen.poll() is not None:
                break
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                continue
        self._log.close()
        return self.popen.returncode


def descendants(pid):
    """
    @return: the PIDs of C{pid}'s children, theirs and so on (a proxy under
        C{ip netns exec} and a wrapper that forks is one of them).
    """
    children = []
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            for child in f.read().split():
                children.append(int(child))
                children.extend(descendants(int(child)))
    except OSError:
        pass
    return children


def wait_for(predicate, timeout, interval=0.05, what="condition"):
    """
    Poll C{predicate} until it returns something true, for at most C{timeout} seconds.

    @return: the true value.
    @raise TopologyError: on timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TopologyError("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(interval)


def tail(path, lines=30):
    """
    @return: the last C{lines} lines of the file at C{path}, or C{""} if it cannot be read.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""
