"""
Where the proxy's CPU time goes: bench/cpusampler.py inside the proxy (C{--profiler cpu}, also
under PyPy) or py-spy from outside (C{--profiler py-spy}, the proxy pinned to a CPU of its own),
while the work of a phase runs once more, unmeasured; and the summary of the samples.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import testbed

from bench import procfs
from bench.common import REPO, log, run


def pin(bench, proxy):
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
    procfs.set_affinity(proxy.pids(), mine)
    procfs.set_affinity(procfs.process_tree(bench.nginx.popen.pid), others)
    bench.client_cpus = ",".join(str(c) for c in sorted(others))

    def undo():
        bench.client_cpus = None
        procfs.set_affinity(proxy.pids(), set(cpus))
        procfs.set_affinity(procfs.process_tree(bench.nginx.popen.pid), set(cpus))
    return undo


def maybe_profile(bench, proxy, phase, out, rerun):
    """
    Profile C{phase} when C{--profile} asks for it and the profiler can
    sample this proxy; the summary goes into C{out["profile"][phase]}.
    """
    # py-spy reads CPython's interpreter state: it has no PyPy support.
    if bench.args.profiler == "py-spy":
        able = proxy.name.startswith("origdst") and "pypy" not in proxy.name
    else:
        able = proxy.profile_path is not None
    if phase in bench.args.profile and able:
        out.setdefault("profile", {})[phase] = profile(bench, proxy, phase, rerun)


def profile(bench, proxy, phase, rerun):
    """
    Profile the proxy while C{rerun()} does the work of C{phase} (keepalive,
    close or bulk) once more, unmeasured, since sampling slows the proxy.
    With C{--profiler cpu} (the default) bench/cpusampler.py, loaded into
    the proxy at its start, samples its CPU time; with C{--profiler
    py-spy}, py-spy samples it from outside, the proxy pinned to a CPU of
    its own (see L{pin}).
    """
    args = bench.args
    raw = os.path.abspath(args.profile_out.replace("{target}", proxy.name)
                          .replace("{phase}", phase))
    if os.path.exists(raw):
        os.unlink(raw)
    pid = proxy.proc.popen.pid
    log("  profile (%s): %s -> %s" % (phase, args.profiler, raw))
    spy = unpin = None
    if args.profiler == "py-spy":
        pyspy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable),
                                                       "py-spy")
        if not os.path.exists(pyspy):
            run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], timeout=300)
            pyspy = os.path.join(os.path.dirname(sys.executable), "py-spy")
        limit = 30 + max(args.duration, args.close_duration) + 10 * args.bulk_reps
        spy = subprocess.Popen([pyspy, "record", "-p", str(pid), "-r", "250",
                                "-d", str(int(limit)), "-F", "-f", "raw", "-o", raw],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
        unpin = pin(bench, proxy)
        time.sleep(0.5)
    else:
        dump = proxy.profile_path
        if os.path.exists(dump):
            os.unlink(dump)
        os.kill(pid, cpusampler_signal("START"))
    try:
        result = rerun()
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output and exits
            spy.wait(30)
        else:
            os.kill(pid, cpusampler_signal("STOP"))
            testbed.wait_for(lambda: os.path.exists(dump), 20, what="the CPU profile")
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
    summary = summarize(raw)
    summary["profiler"] = args.profiler
    summary["while_profiled"] = {k: result.get(k) for k in ("rps", "mb_per_s", "proxy_cpu_util",
                                                            "proxy_cpu_system_share")
                                 if k in result}
    summary["pinned"] = bool(unpin) and len(os.sched_getaffinity(0)) > 1
    return summary


def cpusampler_signal(name):
    # The numbers of bench/cpusampler.py's signals, without importing it here.
    return signal.SIGRTMIN + {"START": 5, "STOP": 6}[name]


def summarize(path, top=20):
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
    "dataReceived (/work/main/origdst/downstream.py:139)" -> "dataReceived (origdst/downstream.py:139)"
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
