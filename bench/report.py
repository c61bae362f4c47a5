"""
What a run reports: the table on the terminal, the ratios between targets, the targets of
bench/targets.json checked against this run's figures, the profiles, and the run's metadata.
"""

import json
import operator
import os
import platform
import sys
import time

from bench import procfs
from bench.common import HERE, REPO, run

TARGETS_PATH = os.path.join(HERE, "targets.json")

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

_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


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


def load_targets(path=TARGETS_PATH):
    """
    @return: the targets file, its operators checked.
    @raise ValueError: naming the check with an unknown operator.
    """
    with open(path) as f:
        targets = json.load(f)
    for check in targets["checks"]:
        for kind in ("ratio", "value"):
            if kind in check and check[kind]["op"] not in _OPS:
                raise ValueError("%s: %r: unknown op %r" % (path, check["what"], check[kind]["op"]))
    return targets


def targets_check(results, targets=None):
    """
    The targets of bench/targets.json, as figures of this run.

    @return: one C{{"target", "pass", "detail"}} per check; C{pass} is
        L{None} when a figure was not measured.  No checks at all when the
        subject or the reference did not run.
    """
    targets = targets or load_targets()
    subject, reference = targets["subject"], targets["reference"]
    if subject not in results or reference not in results:
        return []
    checks = []
    for check in targets["checks"]:
        who = check.get("subject", subject)
        oks, details = [], []
        if who not in results:
            checks.append({"target": check["what"], "pass": None,
                           "detail": "not measured (no %s in this run)" % who})
            continue
        if "ratio" in check:
            c = check["ratio"]
            a = value(results, who, c["phase"], c["key"])
            b = value(results, reference, c["phase"], c["key"])
            if a is None or b in (None, 0):
                oks.append(None)
            else:
                r = a / b
                oks.append(_OPS[c["op"]](r, c["limit"]))
                details.append("%.3g / %.3g = %.2fx (needs %s %.2gx)" % (
                    a, b, r, c["op"], c["limit"]))
        if "value" in check:
            c = check["value"]
            a = value(results, who, c["phase"], c["key"])
            if a is None:
                oks.append(None)
            else:
                oks.append(_OPS[c["op"]](a, c["limit"]))
                details.append("%.3g %s (needs %s %g)" % (a, c.get("unit", ""), c["op"],
                                                          c["limit"]))
        if None in oks:
            checks.append({"target": check["what"], "pass": None, "detail": "not measured"})
        else:
            checks.append({"target": check["what"], "pass": all(oks),
                           "detail": ", ".join(details)})
    return checks


def render(results, order, ratio_pairs, checks, bulk_mib, targets=None):
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

    def fmt_row(r):
        return "  ".join(
            (c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])) for i, c in enumerate(r))

    lines.append(fmt_row(headers))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(fmt_row(r) for r in table)
    for t in cols:
        if "error" in results[t]:
            lines.append("%s: FAILED: %s" % (t, results[t]["error"].splitlines()[0][:200]))
    if checks:
        targets = targets or load_targets()
        lines.append("")
        lines.append("issue 6 targets (%s vs %s, this run):" % (targets["subject"],
                                                                 targets["reference"]))
        for c in checks:
            mark = {True: "PASS", False: "FAIL", None: "n/a "}[c["pass"]]
            lines.append("  %s  %s: %s" % (mark, c["target"], c["detail"]))
    return "\n".join(lines)


def print_profiles(results, order):
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


def meta(args, envoy, pypy):
    def out(argv):
        try:
            p = run(argv, check=False, timeout=30)
            return (p.stdout + p.stderr).strip().splitlines()[0][:200]
        except Exception as e:
            return "unavailable: %s" % e
    rev = out(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
    dirty = run(["git", "-C", REPO, "status", "--porcelain", "--", "origdst"], check=False).stdout
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "cpu_busy_before_start": procfs.machine_busy(),
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
