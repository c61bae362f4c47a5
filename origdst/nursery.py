"""
PyPy's nursery size, chosen for the proxy.

PyPy's default nursery (its young generation: half the CPU's cache, 1 MiB
here) is small for a proxy: every minor collection promotes the objects of
the requests in flight, they die in the old generation, and the major
collections that follow make the tail at saturation five times Envoy's
(README, Runtimes). A larger nursery promotes far less. PyPy reads its size
from C{PYPY_GC_NURSERY} only when the interpreter starts, so a user would
have to export it in every launcher; instead, origdst under PyPy without
that variable starts itself again at once, before anything is set up: the
same process (C{execve}: same PID, descriptors, systemd's sockets), the same
command line and environment as it was started with (read from
C{/proc/self/cmdline}, which also keeps a C{-c} launcher's code, and
C{/proc/self/environ}: Twisted removes systemd's C{LISTEN_PID} and
C{LISTEN_FDS} from C{os.environ} as it reads them), with
C{PYPY_GC_NURSERY=}L{SIZE}.

Why 32 MiB, and a minimum heap of 32 MiB with it: in one C{make bench} run
(three rounds, ratios to Envoy 1.40 C{--concurrency 1}), 4, 16 and 32 MiB
gave keep-alive p99 at saturation 4.26x, 1.56x and 0.81x. But PyPy starts no
major collection before its heap reaches C{PYPY_GC_MIN}, eight times the
nursery by default: 256 MiB at 32 MiB. Under the soak's load (C{make soak}:
faults, reconnections) the resident size then climbed by about 30 MiB a
minute for five minutes, from 138 to 325 MiB, with no major collection at
all, and the soak failed, where 4 MiB (so 32 MiB of minimum heap) stayed
flat. So origdst sets C{PYPY_GC_MIN=}L{MIN_HEAP} too, the minimum a 4 MiB
nursery has: the soak stays flat (138 to 160 MiB in 60 s, +0.75 to +1.42
MiB/min over the second half in five runs), and keep-alive p99 at
saturation was 1.07x Envoy's (4 MiB: 2.92x; 32 MiB with its own minimum:
0.60x) in one run. The reads
of large bodies are 64 KiB under PyPy (L{origdst.flow.bulk_read_size}), or
no bytes at all (L{origdst.rawcopy}), so the nursery size no longer sets the
memory a large transfer takes.

A C{PYPY_GC_NURSERY} that is set, to any value, is the user's choice and is
kept, with whatever C{PYPY_GC_MIN} they set or not; a C{PYPY_GC_MIN} set
alone is kept too. CPython has no nursery: nothing is done there.
"""

import os
import sys

from origdst.logs import logger

log = logger("origdst.nursery")

VARIABLE = "PYPY_GC_NURSERY"
MIN_VARIABLE = "PYPY_GC_MIN"

#: The nursery origdst starts PyPy with (README, Runtimes, for the figures).
SIZE = "32M"
#: The heap below which PyPy starts no major collection, set with it.
MIN_HEAP = "32M"


def wanted(environ, implementation):
    """
    @return: whether this process should start itself again with L{SIZE}.
    """
    return implementation == "pypy" and VARIABLE not in environ


def _strings(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    strings = raw.split(b"\0")
    if strings and strings[-1] == b"":
        strings.pop()
    return strings


def command_line(path="/proc/self/cmdline"):
    """
    @return: this process's command line as it was given, a list of
        C{bytes}, or C{None} when it cannot be read.
    """
    return _strings(path) or None


def initial_environment(path="/proc/self/environ"):
    """
    @return: the environment this process was started with, or C{None} when
        it cannot be read.
    """
    strings = _strings(path)
    if strings is None:
        return None
    environ = {}
    for item in strings:
        name, equals, value = item.partition(b"=")
        if equals:
            environ[os.fsdecode(name)] = os.fsdecode(value)
    return environ


def restart(environ=None, implementation=None, executable=None, argv=None, execve=os.execve):
    """
    Under PyPy without C{PYPY_GC_NURSERY}, replace this process by itself
    with it set to L{SIZE} (and C{PYPY_GC_MIN} to L{MIN_HEAP}, unless set);
    it returns only when nothing is to be done or the
    restart cannot be made (then the proxy runs on with PyPy's default, and a
    log line says why).

    @param environ: the environment it was started with
        (L{initial_environment} by default, else C{os.environ}).
    @param argv: the command line (L{command_line} by default).
    @param execve: L{os.execve}, replaceable for tests.
    @return: C{False} when nothing was to be done or it failed.
    """
    if environ is None:
        environ = initial_environment()
        if environ is None:
            environ = os.environ
    implementation = sys.implementation.name if implementation is None else implementation
    if not wanted(environ, implementation):
        return False
    executable = sys.executable if executable is None else executable
    argv = command_line() if argv is None else argv
    if not argv or not executable:
        log.warn("Cannot read this process's command line: PyPy keeps its default nursery.")
        return False
    env = dict(environ)
    env[VARIABLE] = SIZE
    env.setdefault(MIN_VARIABLE, MIN_HEAP)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    try:
        execve(executable, [executable] + list(argv[1:]), env)
    except OSError as e:
        log.warn("Cannot restart with {var}={size} ({error}): PyPy keeps its default nursery.",
                 var=VARIABLE, size=SIZE, error=e)
    return False
