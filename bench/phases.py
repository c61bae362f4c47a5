"""
What the benchmark measures: each phase against one target (a proxy, or nginx directly), with
the proxy's CPU time and the CPU time of other work on the machine around it.
"""

import json
import os
import resource
import select
import signal
import statistics
import subprocess
import time

from bench import clients, procfs, profiling
from bench.common import (
    BIG_NAME,
    DIRECT_PORT,
    REDIRECTED_PORT,
    SERVER,
    TCP_DIRECT_PORT,
    TCP_PORT,
    TLS_DIRECT_PORT,
    TLS_PORT,
    BenchError,
    log,
    num,
    run,
)
from bench.launchers import HTTP, TCP, TLS


def with_cpu(bench, proxy, fn):
    """
    Run a phase; add the proxy's CPU time to its result, and how much of
    the machine's CPU went to processes that are not part of the bench
    (other work sharing the cores: the noise of the figures).
    """
    before_split = proxy.cpu_split() if proxy else None
    before_cpu = sum(before_split) if proxy else None
    ours0 = _our_cpu(bench, proxy)
    busy0 = procfs.machine_busy_seconds()
    t0 = time.monotonic()
    result = fn()
    wall = time.monotonic() - t0
    other = (procfs.machine_busy_seconds() - busy0) - (_our_cpu(bench, proxy) - ours0)
    result["other_cpu_util"] = round(max(0.0, other) / wall, 2)
    if proxy:
        cpu = proxy.cpu() - before_cpu
        result["proxy_cpu_s"] = round(cpu, 3)
        result["proxy_cpu_util"] = round(cpu / wall, 3)
        # The kernel's share (system calls, and the TCP work they do).
        system = proxy.cpu_split()[1] - before_split[1]
        result["proxy_cpu_system_share"] = round(system / cpu, 3) if cpu else None
        if result.get("requests"):
            result["proxy_cpu_us_per_req"] = round(cpu / result["requests"] * 1e6, 1)
    return result


def _our_cpu(bench, proxy):
    """
    CPU seconds of the bench's own processes: the proxy, nginx, and the
    clients this process has waited for.
    """
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = children.ru_utime + children.ru_stime
    for backend in (bench.nginx, bench.tcpsource):
        if backend is not None:
            total += procfs.cpu_seconds(procfs.process_tree(backend.popen.pid))
    if proxy:
        total += proxy.cpu()
    self_usage = resource.getrusage(resource.RUSAGE_SELF)
    return total + self_usage.ru_utime + self_usage.ru_stime


def keepalive(bench, port, proxy):
    a = bench.args
    log("  keep-alive: wrk -t1 -c%d -d%ss" % (a.connections, num(a.duration)))
    return with_cpu(bench, proxy, lambda: clients.wrk(bench, port, a.duration))


def close(bench, port, proxy):
    a = bench.args
    log("  Connection: close: wrk -t1 -c%d -d%ss" % (a.connections, num(a.close_duration)))
    return with_cpu(bench, proxy, lambda: clients.wrk(bench, port, a.close_duration, close=True))


def rate(bench, port, proxy):
    a = bench.args
    log("  fixed rate: %s req/s for %ss (open loop, bench/loadgen.py)" % (
        num(a.rate), num(a.rate_duration)))
    argv = ["rate", SERVER, str(port), "/", "--rate", str(a.rate),
            "--duration", str(a.rate_duration), "--connections", "8",
            "--warmup", str(min(1.0, a.rate_duration / 4)),
            "--max-requests", str(int(a.rate * a.rate_duration) + 1)]
    return with_cpu(bench, proxy, lambda: clients.rate_result(
        clients.loadgen(bench, argv, timeout=a.rate_duration + 60)))


def bulk(bench, port, proxy):
    a = bench.args
    log("  bulk: 1 + %d x GET of %d MiB with curl" % (a.bulk_reps, a.bulk_mib))
    url = "http://%s%s/%s" % (SERVER, "" if port == 80 else ":%d" % port, BIG_NAME)
    size = a.bulk_mib * 1024 * 1024

    def download():
        proc = run(bench.as_client(
            ["curl", "-sS", "-o", "/dev/null", "--max-time", "120",
             "-w", "%{http_code} %{size_download} %{time_total}", url]),
            timeout=150, check=False)
        parts = proc.stdout.split()
        if proc.returncode != 0 or len(parts) != 3 or parts[0] != "200" or \
                int(parts[1]) != size:
            raise BenchError("bulk download failed (%d): %s %s" % (
                proc.returncode, proc.stdout, proc.stderr.strip()))
        return float(parts[2])

    return per_gib(with_cpu(bench, proxy, lambda: transfers(proxy, a.bulk_reps, size, download)),
                   (a.bulk_reps + 1) * size)


def per_gib(result, moved):
    """
    Add the proxy's CPU seconds per GiB moved (C{moved} bytes, the
    unmeasured first transfer too) to a transfer phase's C{result}.
    """
    if result.get("proxy_cpu_s") is not None:
        result["proxy_cpu_s_per_gib"] = round(result["proxy_cpu_s"] / (moved / float(1 << 30)), 3)
    return result


def transfers(proxy, reps, size, transfer):
    """
    C{transfer} (one transfer of C{size} bytes; it returns its seconds)
    once unmeasured, then C{reps} times: the median MB/s, and the proxy's
    peak RSS over them (sampled, and its high-water mark) against its RSS
    before.
    """
    base_rss = proxy.rss_kib() if proxy else None
    speeds, peaks = [], []
    # One unmeasured transfer first: the backend's and the proxy's first
    # large transfer is slower than the others.
    for rep in range(reps + 1):
        sampler = None
        if proxy:
            procfs.reset_peak(proxy.pids())
            sampler = procfs.RssSampler(proxy)
            sampler.start()
        try:
            seconds = transfer()
        finally:
            if sampler:
                sampler.stop()
        if rep == 0:
            continue
        speeds.append(size / seconds / 1e6)
        if proxy:
            peaks.append(max(proxy.hwm_kib(), sampler.peak))
    result = {"mb_per_s": round(statistics.median(speeds), 1),
              "mb_per_s_all": [round(s, 1) for s in speeds], "mib": size // (1024 * 1024)}
    if proxy:
        result.update({
            "rss_before_mib": round(base_rss / 1024, 1),
            "peak_rss_mib": round(max(peaks) / 1024, 1),
            "rss_growth_mib": round((max(peaks) - base_rss) / 1024, 1),
        })
    return result


def tcp(bench, port, proxy):
    """
    The TCP relay: the big file as a stream that is not HTTP (bench/tcpsource.py), through
    origdst's relay (its port in --tcp-ports) or Envoy's tcp_proxy, read to its end.
    """
    a = bench.args
    port = TCP_PORT if proxy else TCP_DIRECT_PORT
    size = a.bulk_mib * 1024 * 1024
    log("  TCP relay: 1 + %d x a %d MiB stream from %s:%d" % (a.bulk_reps, a.bulk_mib, SERVER,
                                                             port))

    def measured():
        result = transfers(proxy, a.bulk_reps, size, lambda: clients.fetch(bench, port, size))
        result["streams"] = a.bulk_reps
        return result

    return per_gib(with_cpu(bench, proxy, measured), (a.bulk_reps + 1) * size)


def tls(bench, port, proxy):
    """
    TLS passthrough: new connections, each a full handshake with nginx (certificate verified
    through the proxy) and one request, through origdst's detection and SNI passthrough or
    Envoy's tls_inspector and tcp_proxy.
    """
    a = bench.args
    port = TLS_PORT if proxy else TLS_DIRECT_PORT
    log("  TLS passthrough: new connections from %d threads for %ss (bench/loadgen.py tls)" % (
        a.tls_connections, num(a.tls_duration)))
    result = with_cpu(bench, proxy, lambda: clients.tls_connections(bench, port, a.tls_duration))
    if proxy and result.get("connections"):
        result["proxy_cpu_us_per_conn"] = round(
            result["proxy_cpu_s"] / result["connections"] * 1e6, 1)
    return result


def idle(bench, port, proxy):
    a = bench.args
    log("  idle: %d connections held after one request each" % a.idle_conns)
    for _ in range(5):
        clients.probe(bench, port, proxy.expect_server)
    time.sleep(0.5)
    before = procfs.settled_rss(proxy)
    cmd = bench.as_client([bench.topo.client_python, os.path.join(bench.work, "loadgen.py"),
                           "hold", SERVER, str(port), "/", "--count", str(a.idle_conns),
                           "--parallel", "50", "--max-hold", "120"])
    holder = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        ready, _, _ = select.select([holder.stdout], [], [], 100)
        line = holder.stdout.readline() if ready else ""
        if not line:
            raise BenchError("connection holder did not report: %s" % (
                holder.stderr.read() if holder.poll() is not None else "timeout"))
        report = json.loads(line)
        time.sleep(1.0)
        held_rss = procfs.settled_rss(proxy)
        established = bench.established(proxy.port)
    finally:
        try:
            holder.stdin.close()
        except OSError:
            pass
        try:
            holder.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(holder.pid, signal.SIGKILL)
            holder.wait(5)
    held = report["held"]
    return {
        "connections": held,
        "errors": report["errors"],
        "proxy_established": established,
        "open_seconds": report["open_seconds"],
        "rss_before_mib": round(before / 1024, 1),
        "rss_held_mib": round(held_rss / 1024, 1),
        "kib_per_conn": round((held_rss - before) / held, 2) if held else None,
    }


PHASES = {"keepalive": keepalive, "close": close, "rate": rate, "bulk": bulk, "idle": idle,
          "tcp": tcp, "tls": tls}

#: The phases that each get a fresh proxy process (so that its RSS growth
#: is their own), and what it is set up to carry.
FRESH_PROCESS = (("bulk", HTTP), ("idle", HTTP), ("tcp", TCP), ("tls", TLS))


def run_direct(bench, phases):
    log("target direct: the client to nginx on %s:%d, no proxy" % (SERVER, DIRECT_PORT))
    clients.probe(bench, DIRECT_PORT, "nginx")
    if bench.args.warmup:
        clients.wrk(bench, DIRECT_PORT, bench.args.warmup)
    out = {}
    for phase in phases:
        if phase == "idle":
            continue
        out[phase] = PHASES[phase](bench, DIRECT_PORT, None)
    return out


def _rerun(bench, proxy, phase):
    """
    The work of C{phase} once more, for the profiler.
    """
    if phase == "bulk":
        return bulk(bench, REDIRECTED_PORT, proxy)
    duration = bench.args.duration if phase == "keepalive" else bench.args.close_duration
    return with_cpu(bench, proxy, lambda: clients.wrk(bench, REDIRECTED_PORT, duration,
                                                      close=phase == "close"))


def _maybe_profile(bench, proxy, phase, out):
    profiling.maybe_profile(bench, proxy, phase, out, lambda: _rerun(bench, proxy, phase))


def run_proxy(bench, proxy, phases, warmup):
    """
    Fresh processes: one for the request phases, one for each phase of
    L{FRESH_PROCESS} (the bulk download, the idle connections, the TCP
    relay, TLS passthrough).  The TCP and TLS proxies carry no HTTP to
    probe: the phases check every byte (the stream's length; the
    certificate verified through the proxy).
    """
    log("target %s: %s" % (proxy.name, " ".join(proxy.argv[-8:])))
    out = {}
    request_phases = [p for p in phases if p in ("keepalive", "close", "rate")]
    try:
        if request_phases:
            proxy.start(bench)
            clients.probe(bench, REDIRECTED_PORT, proxy.expect_server)
            out["rss_start_mib"] = round(proxy.rss_kib() / 1024, 1)
            if warmup:
                clients.wrk(bench, REDIRECTED_PORT, warmup)
            for phase in request_phases:
                out[phase] = PHASES[phase](bench, REDIRECTED_PORT, proxy)
                _maybe_profile(bench, proxy, phase, out)
            out["rss_after_requests_mib"] = round(proxy.rss_kib() / 1024, 1)
            proxy.stop()
        for phase, mode in FRESH_PROCESS:
            if phase in phases:
                proxy.start(bench, mode)
                if mode == HTTP:
                    clients.probe(bench, REDIRECTED_PORT, proxy.expect_server)
                elif mode == TLS and warmup:
                    clients.tls_connections(bench, TLS_PORT, warmup)
                out[phase] = PHASES[phase](bench, REDIRECTED_PORT, proxy)
                _maybe_profile(bench, proxy, phase, out)
                proxy.stop()
    except Exception:
        tail = proxy.log_tail()
        if tail:
            log("%s log tail:\n%s" % (proxy.name, tail))
        raise
    finally:
        proxy.stop()
    return out
