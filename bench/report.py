"""
What a run reports: the table on the terminal, the ratios between targets, the targets of
bench/targets.json checked against this run's figures, the profiles, and the run's metadata.
"""

import json
import operator
import os
import platform
import statistics
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
    ("keep-alive p99.9 ms", "keepalive", "p999_ms", "{:.2f}", "low"),
    ("keep-alive max ms", "keepalive", "max_ms", "{:.1f}", "low"),
    ("proxy CPU us/req (keep-alive)", "keepalive", "proxy_cpu_us_per_req", "{:.0f}", "low"),
    ("proxy CPU use (keep-alive)", "keepalive", "proxy_cpu_util", "{:.2f}", None),
    ("  of it in the kernel", "keepalive", "proxy_cpu_system_share", "{:.0%}", None),
    ("Connection: close req/s", "close", "rps", "{:,.0f}", "high"),
    ("proxy CPU us/req (close)", "close", "proxy_cpu_us_per_req", "{:.0f}", "low"),
    ("close p50 ms", "close", "p50_ms", "{:.2f}", "low"),
    ("close p99 ms", "close", "p99_ms", "{:.2f}", "low"),
    ("close p99.9 ms", "close", "p999_ms", "{:.2f}", "low"),
    ("close max ms", "close", "max_ms", "{:.1f}", "low"),
    ("fixed-rate achieved req/s", "rate", "rps", "{:,.0f}", None),
    ("fixed-rate p50 ms", "rate", "p50_ms", "{:.3f}", "low"),
    ("fixed-rate p99 ms", "rate", "p99_ms", "{:.3f}", "low"),
    ("fixed-rate p99.9 ms", "rate", "p999_ms", "{:.3f}", "low"),
    ("fixed-rate max ms", "rate", "max_ms", "{:.2f}", "low"),
    ("proxy CPU us/req (fixed rate)", "rate", "proxy_cpu_us_per_req", "{:.0f}", "low"),
    ("proxy RSS at start MiB", None, "rss_start_mib", "{:.1f}", None),
    ("bulk MB/s (%d MiB)", "bulk", "mb_per_s", "{:,.0f}", "high"),
    ("bulk: RSS before MiB", "bulk", "rss_before_mib", "{:.1f}", None),
    ("bulk: peak RSS MiB", "bulk", "peak_rss_mib", "{:.1f}", "low"),
    ("bulk: RSS growth MiB", "bulk", "rss_growth_mib", "{:.1f}", "low"),
    ("bulk: proxy CPU s/GiB", "bulk", "proxy_cpu_s_per_gib", "{:.2f}", "low"),
    ("bulk: proxy CPU system share", "bulk", "proxy_cpu_system_share", "{:.2f}", None),
    ("TCP relay MB/s (%d MiB)", "tcp", "mb_per_s", "{:,.0f}", "high"),
    ("TCP relay: RSS before MiB", "tcp", "rss_before_mib", "{:.1f}", None),
    ("TCP relay: RSS growth MiB", "tcp", "rss_growth_mib", "{:.1f}", "low"),
    ("TCP relay: proxy CPU s/GiB", "tcp", "proxy_cpu_s_per_gib", "{:.2f}", "low"),
    ("TLS passthrough conn/s", "tls", "conns_per_s", "{:,.0f}", "high"),
    ("TLS p50 ms", "tls", "p50_ms", "{:.2f}", "low"),
    ("TLS p99 ms", "tls", "p99_ms", "{:.2f}", "low"),
    ("proxy CPU us/conn (TLS)", "tls", "proxy_cpu_us_per_conn", "{:.0f}", "low"),
    ("idle: KiB per connection", "idle", "kib_per_conn", "{:.1f}", "low"),
    ("idle: connections held", "idle", "connections", "{:,}", None),
    ("idle: RSS with them MiB", "idle", "rss_held_mib", "{:.1f}", None),
    ("other work, cores (keep-alive)", "keepalive", "other_cpu_util", "{:.2f}", None),
    ("other work, cores (close)", "close", "other_cpu_util", "{:.2f}", None),
    ("other work, cores (TLS)", "tls", "other_cpu_util", "{:.2f}", None),
    ("errors (wrk+loadgen)", None, "errors", "{:,}", None),
    ("TLS connections failed", "tls", "errors", "{:,.0f}", None),
]

_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


def value(results, target, phase, key):
    t = results.get(target) or {}
    if phase is None and key != "errors":
        return t.get(key)
    if phase is None:
        total = 0
        for ph in ("keepalive", "close", "rate", "idle", "tls"):
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


def _is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _merge(values):
    """
    The median of a list of round values (numbers), or the first one.
    """
    nums = [v for v in values if _is_number(v)]
    if nums and len(nums) == len(values):
        return statistics.median(nums)
    return values[0]


def aggregate(rounds):
    """
    One result per target from several rounds: the median of every figure,
    over the rounds in which that target did not fail.

    @param rounds: a list of C{{target: result}}, one per round.
    @return: C{(results, spread)}; C{spread[target][phase][key]} (or
        C{spread[target][key]} for a figure outside the phases) is C{[min,
        max]} over the rounds.
    """
    names = []
    for r in rounds:
        names.extend(n for n in r if n not in names)
    results, spread = {}, {}
    for name in names:
        good = [r[name] for r in rounds if name in r and "error" not in r[name]]
        if not good:
            results[name] = next(r[name] for r in rounds if name in r)
            continue
        merged, ranges = {}, {}
        for key in good[0]:
            vals = [g[key] for g in good if key in g]
            if isinstance(vals[0], dict) and key != "profile":
                merged[key], ranges[key] = {}, {}
                for k in vals[0]:
                    inner = [v[k] for v in vals if k in v]
                    merged[key][k] = _merge(inner)
                    if all(_is_number(x) for x in inner):
                        ranges[key][k] = [min(inner), max(inner)]
            else:
                merged[key] = _merge(vals)
                if all(_is_number(x) for x in vals):
                    ranges[key] = [min(vals), max(vals)]
        merged["rounds_ok"] = len(good)
        failed = [r[name]["error"] for r in rounds if "error" in r.get(name, {})]
        if failed:
            merged["round_errors"] = failed
        results[name], spread[name] = merged, ranges
    return results, spread


def round_ratios(rounds, num, den, phase, key):
    """
    @return: C{num}'s figure over C{den}'s, one per round in which both
        were measured (the pairs ran minutes apart at most: the ratio of a
        round cancels much of the machine's drift).
    """
    out = []
    for r in rounds:
        a = value(r, num, phase, key)
        b = value(r, den, phase, key)
        if _is_number(a) and _is_number(b) and b and "error" not in r.get(num, {}) \
                and "error" not in r.get(den, {}):
            out.append(a / b)
    return out


def ratio_summary(rounds, num, den):
    """
    @return: C{{"phase.key": {"median", "min", "max", "n"}}} of the
        per-round ratios C{num}/C{den}.
    """
    out = {}
    for label, phase, key, _, better in ROWS:
        if better is None:
            continue
        rs = round_ratios(rounds, num, den, phase, key)
        if rs:
            out["%s.%s" % (phase, key)] = {
                "median": round(statistics.median(rs), 3), "min": round(min(rs), 3),
                "max": round(max(rs), 3), "n": len(rs)}
    return out


def targets_check(results, targets=None, rounds=None):
    """
    The targets of bench/targets.json, as figures of this run: a ratio is
    the median of the per-round ratios (with their range), a value the
    median over the rounds.

    @return: one C{{"target", "pass", "detail", "figure", "low", "high"}} per
        check; C{pass} is L{None} when a figure was not measured.
    """
    targets = targets or load_targets()
    rounds = rounds or [results]
    checks = []
    for check in targets["checks"]:
        who = check.get("subject", targets["subject"])
        ref = check.get("reference", targets["reference"])
        oks, details, entry = [], [], {"target": check["what"], "subject": who}
        if who not in results or "error" in results[who]:
            checks.append(dict(entry, **{"pass": None,
                                         "detail": "not measured (no %s in this run)" % who}))
            continue
        if "ratio" in check:
            c = check["ratio"]
            rs = round_ratios(rounds, who, ref, c["phase"], c["key"])
            if not rs:
                oks.append(None)
            else:
                r = statistics.median(rs)
                a = value(results, who, c["phase"], c["key"])
                b = value(results, ref, c["phase"], c["key"])
                oks.append(_OPS[c["op"]](r, c["limit"]))
                entry.update({"reference": ref, "figure": round(r, 3), "low": round(min(rs), 3),
                              "high": round(max(rs), 3), "op": c["op"], "limit": c["limit"],
                              "kind": "ratio"})
                details.append("%.3g vs %s %.3g: %.2fx [%.2f-%.2f] (needs %s %.2gx)" % (
                    a, ref, b, r, min(rs), max(rs), c["op"], c["limit"]))
        if "value" in check:
            c = check["value"]
            a = value(results, who, c["phase"], c["key"])
            if a is None:
                oks.append(None)
            else:
                oks.append(_OPS[c["op"]](a, c["limit"]))
                vals = [value(r, who, c["phase"], c["key"]) for r in rounds]
                vals = [v for v in vals if _is_number(v)]
                entry.setdefault("value", {"figure": a, "low": min(vals), "high": max(vals),
                                           "op": c["op"], "limit": c["limit"]})
                details.append("%.3g %s [%.3g-%.3g] (needs %s %g)" % (
                    a, c.get("unit", ""), min(vals), max(vals), c["op"], c["limit"]))
        if None in oks:
            checks.append(dict(entry, **{"pass": None, "detail": "not measured"}))
        else:
            checks.append(dict(entry, **{"pass": all(oks), "detail": ", ".join(details)}))
    return checks


def _spread_pct(spread, target, phase, key, median):
    rng = (spread.get(target) or {})
    rng = rng.get(key) if phase is None else (rng.get(phase) or {}).get(key)
    if not rng or not median:
        return ""
    return " ±%.0f%%" % (50.0 * (rng[1] - rng[0]) / abs(median))


def _table(headers, table):
    widths = [max(len(r[i]) for r in [headers] + table) for i in range(len(headers))]

    def fmt_row(r):
        return "  ".join(
            (c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])) for i, c in enumerate(r))

    return [fmt_row(headers), "  ".join("-" * w for w in widths)] + [fmt_row(r) for r in table]


def render(results, order, ratio_pairs, checks, bulk_mib, targets=None, spread=None,
           rounds=None):
    """
    The medians of every target (± half the min-max range over the rounds,
    as a share of the median), the per-round ratios of C{ratio_pairs}
    (median [min-max]), and the targets.
    """
    spread = spread or {}
    rounds = rounds or [results]
    cols = [t for t in order if t in results]
    table = []
    for label, phase, key, fmt, better in ROWS:
        if "%d" in label:
            label = label % bulk_mib
        row = [label]
        any_value = False
        for t in cols:
            x = value(results, t, phase, key)
            cell = "-" if x is None else fmt.format(x)
            if _is_number(x) and len(rounds) > 1:
                cell += _spread_pct(spread, t, phase, key, x)
            row.append(cell)
            any_value = any_value or x is not None
        if any_value:
            table.append(row)
    lines = ["medians of %d round(s); ±: half the min-max range over the rounds, in %% of "
             "the median" % len(rounds)]
    lines.extend(_table(["metric"] + cols, table))
    for t in cols:
        if "error" in results[t]:
            lines.append("%s: FAILED: %s" % (t, results[t]["error"].splitlines()[0][:200]))
        for e in results[t].get("round_errors", []):
            lines.append("%s: a round failed: %s" % (t, e.splitlines()[0][:200]))
    pairs = [p for p in ratio_pairs if p[0] in results and p[1] in results]
    if pairs:
        table = []
        for label, phase, key, fmt, better in ROWS:
            if better is None:
                continue
            if "%d" in label:
                label = label % bulk_mib
            row, any_value = [label], False
            for num, den in pairs:
                rs = round_ratios(rounds, num, den, phase, key)
                if rs:
                    any_value = True
                    row.append("%.2fx [%.2f-%.2f]" % (statistics.median(rs), min(rs), max(rs))
                               if len(rs) > 1 else "%.2fx" % rs[0])
                else:
                    row.append("")
            if any_value:
                table.append(row)
        lines.append("")
        lines.append("ratios: the median of the per-round ratios [min-max]")
        lines.extend(_table(["ratio"] + ["%s/%s" % p for p in pairs], table))
    if checks:
        lines.append("")
        lines.append("targets (bench/targets.json, this run):")
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
                            "idle": "bench/loadgen.py hold",
                            "tcp": "bench/loadgen.py fetch (from bench/tcpsource.py)",
                            "tls": "bench/loadgen.py tls (threads, blocking ssl sockets, "
                                   "a full handshake per connection)"},
        "args": vars(args),
    }
