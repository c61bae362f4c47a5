"""
PyPy's GC pauses from its log (C{PYPYLOG=gc-minor,gc-collect-step:FILE}, the C{-gclog}
variant of a target): how many of each kind, their total, their p99 and max, in ms.

    python -m bench.pypylog FILE [--pypy bench/.venv-pypy/bin/python]

The log's timestamps are PyPy's C{debug_read_timestamp()} ticks (the CPU's time-stamp counter
on x86); their rate is measured with the PyPy given.
"""

import argparse
import re
import subprocess
import sys

LINE = re.compile(r"^\[([0-9a-f]+)\] (\{)?([\w-]+)(\})?$")

CALIBRATE = ("import __pypy__, time\n"
             "t0, c0 = time.perf_counter(), __pypy__.debug_read_timestamp()\n"
             "time.sleep(0.5)\n"
             "print((__pypy__.debug_read_timestamp() - c0) / (time.perf_counter() - t0))\n")


def ticks_per_second(pypy):
    out = subprocess.run([pypy, "-c", CALIBRATE], capture_output=True, text=True, timeout=30)
    return float(out.stdout.strip())


def sections(lines, last=None, rate=None):
    """
    @return: C{{name: [duration in ticks, ...]}} of the log's outermost
        occurrences of each section name (a nested minor collection inside a
        major step is counted as part of the step and also on its own).
    """
    open_at, out = {}, {}
    if last is not None:
        lines = list(lines)
        stamps = [LINE.match(l.strip()) for l in lines[-200:]]
        end = max(int(m.group(1), 16) for m in stamps if m)
        start = end - last * rate
    for line in lines:
        m = LINE.match(line.strip())
        if not m:
            continue
        ts, opening, name, closing = int(m.group(1), 16), m.group(2), m.group(3), m.group(4)
        if last is not None and ts < start:
            continue
        if opening:
            open_at.setdefault(name, []).append(ts)
        elif closing and open_at.get(name):
            out.setdefault(name, []).append(ts - open_at[name].pop())
    return out


def summary(path, rate, last=None):
    with open(path, errors="replace") as f:
        found = sections(f, last, rate)
    result = {}
    for name, ticks in sorted(found.items()):
        ms = sorted(t / rate * 1e3 for t in ticks)
        result[name] = {"count": len(ms), "total_ms": round(sum(ms), 1),
                        "p50_ms": round(ms[len(ms) // 2], 3),
                        "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 3),
                        "max_ms": round(ms[-1], 3),
                        "over_5ms": sum(1 for x in ms if x > 5)}
    return result


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.pypylog")
    p.add_argument("path")
    p.add_argument("--pypy", default="pypy3")
    p.add_argument("--last", type=float, help="only the log's last SECONDS")
    args = p.parse_args(argv)
    rate = ticks_per_second(args.pypy)
    for name, s in summary(args.path, rate, args.last).items():
        print("%-18s %s" % (name, " ".join("%s=%s" % kv for kv in s.items())))


if __name__ == "__main__":
    sys.exit(main())
