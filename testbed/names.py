"""
The test bed's addresses and names, and the sweep of what killed runs left behind.

Namespace names carry the creating process's pid (C{od<pid>c}, C{od<pid>s}, with an optional tag
of lower-case letters before the last one) so concurrent runs never collide, and a run removes
leftovers of earlier runs of ours whose process no longer exists.
"""

import os
import re
import shutil
import signal
import tempfile

from testbed.process import pid_running, run

#: Prefix of every namespace we create; the full name is C{od<pid>c} or C{od<pid>s}.
PREFIX = "od"
_NAME_RE = re.compile(r"^%s(\d+)[a-z]*[cs]$" % PREFIX)
#: Prefix of our work directories (logs, the client script) in the temporary directory.
WORKDIR_PREFIX = "origdst-e2e-"
_WORKDIR_RE = re.compile(r"^%s(\d+)-" % WORKDIR_PREFIX)

CLIENT_V4 = "10.250.0.2"
SERVER_V4 = "10.250.0.3"
#: In the /24 but assigned nowhere: REDIRECT catches it in C before it could leave.
UNASSIGNED_V4 = "10.250.0.4"
CLIENT_V6 = "fd00:250::2"
SERVER_V6 = "fd00:250::3"

#: The unprivileged user that makes the requests; the owner match lets uid 0 through.
CLIENT_UID = 65534


def list_namespaces():
    """
    @return: the names of all named network namespaces (C{ip netns list}).
    """
    out = run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def our_namespaces(pid=None):
    """
    @param pid: only those created by this pid; L{None} for any of ours.
    @return: names of namespaces that follow our naming scheme.
    """
    names = []
    for name in list_namespaces():
        match = _NAME_RE.match(name)
        if match and (pid is None or int(match.group(1)) == pid):
            names.append(name)
    return names


def remove_stale_namespaces():
    """
    Remove namespaces of ours left behind by runs whose process is gone (killed outright, so
    neither cleanups nor atexit ran).  Processes still inside such a namespace are the proxy and
    backend that dead run started; they are killed by pid so the namespace really goes away.
    Their work directories go too.

    @return: the names of the namespaces removed.
    """
    removed = []
    for name in our_namespaces():
        owner = int(_NAME_RE.match(name).group(1))
        if owner == os.getpid() or pid_running(owner):
            continue
        pids = run(["ip", "netns", "pids", name], check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        run(["ip", "netns", "del", name], check=False)
        removed.append(name)
    tmp = tempfile.gettempdir()
    for entry in os.listdir(tmp):
        match = _WORKDIR_RE.match(entry)
        if match and not pid_running(int(match.group(1))):
            shutil.rmtree(os.path.join(tmp, entry), ignore_errors=True)
    return removed
