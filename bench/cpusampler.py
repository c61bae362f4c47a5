"""
A CPU-time sampling profiler for the proxy under test, loaded by the
benchmark (bench/launchers.py) before twistd starts (python -m bench --profile).

py-spy samples wall-clock time whenever the process is runnable, so on the
bench's two shared cores the moments the proxy waits for a CPU (typically
right after a send() has woken wrk or nginx) are charged to whatever system
call it had just made, and its top entries are system-call sites.  This one
samples on ITIMER_PROF, which counts only the process's own CPU time (user
and kernel): each sample is a slice of time the proxy really spent.  A signal
that arrives during a C call is handled when the call returns, so time in a
system call is charged to the Python function that made it.  It works under
PyPy too.

Idle until asked: SIGRTMIN+5 starts sampling, SIGRTMIN+6 stops it and writes
the stacks collected since the start to the path given to L{install}, in the
collapsed format of py-spy's "raw" output (C{frame;frame;... count}).
"""

import signal

START = signal.SIGRTMIN + 5
STOP = signal.SIGRTMIN + 6


def install(path, interval=0.001):
    counts = {}

    def sample(signum, frame):
        stack = []
        while frame is not None:
            stack.append(frame.f_code)
            frame = frame.f_back
        key = tuple(stack)
        counts[key] = counts.get(key, 0) + 1

    def start(signum, frame):
        counts.clear()
        signal.signal(signal.SIGPROF, sample)
        signal.setitimer(signal.ITIMER_PROF, interval, interval)

    def stop(signum, frame):
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        lines = []
        for key, n in counts.items():
            frames = ["%s (%s:%d)" % (getattr(code, "co_qualname", code.co_name),
                                      code.co_filename, code.co_firstlineno)
                      for code in reversed(key)]
            lines.append("%s %d\n" % (";".join(frames), n))
        tmp = path + ".tmp"
        with open(tmp, "w") as out:
            out.writelines(lines)
        import os
        os.rename(tmp, path)
        counts.clear()

    signal.signal(START, start)
    signal.signal(STOP, stop)
