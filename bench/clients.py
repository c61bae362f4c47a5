"""
The load generators, run in C as the unprivileged client: wrk (with bench/report.lua for exact
counts and percentiles) and bench/loadgen.py (probe, fixed rate, held connections).
"""

import json
import os

from bench.common import BODY, SERVER, TLS_NAME, BenchError, run


def loadgen(bench, argv, timeout):
    """
    Run C{loadgen.py argv} to completion.

    @return: the JSON of its last line.
    """
    cmd = bench.as_client([bench.topo.client_python, os.path.join(bench.work, "loadgen.py")]
                          + argv)
    proc = run(cmd, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise BenchError("loadgen %s failed: %s" % (argv[0], proc.stderr.strip()[-800:]))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def probe(bench, port, expect_server):
    """
    One GET /: a 200 with the 13-byte body from C{expect_server}, or L{BenchError}.
    """
    got = loadgen(bench, ["probe", SERVER, str(port), "/"], timeout=20)
    if got["status"] != 200 or got["server"].lower().split("/")[0] != expect_server or \
            got["body_len"] != len(BODY):
        raise BenchError("probe of %s:%d expected 200 from %r with a %d-byte body, got %r"
                         % (SERVER, port, expect_server, len(BODY), got))
    return got


def wrk(bench, port, duration, close=False, connections=None):
    """
    C{wrk -t1} against SERVER:C{port} for C{duration} seconds.

    @return: req/s, latency percentiles and error counts.
    """
    connections = connections or bench.args.connections
    url = "http://%s%s/" % (SERVER, "" if port == 80 else ":%d" % port)
    duration = max(1, int(round(duration)))  # wrk takes whole seconds
    argv = ["wrk", "-t1", "-c%d" % connections, "-d%ds" % duration, "--timeout", "5s",
            "-s", os.path.join(bench.work, "report.lua")]
    if close:
        argv += ["-H", "Connection: close"]
    proc = run(bench.as_client(argv + [url]), timeout=duration + 60, check=False)
    line = [l for l in proc.stdout.splitlines() if l.startswith("BENCH ")]
    if proc.returncode != 0 or not line:
        raise BenchError("wrk failed (%d): %s %s" % (proc.returncode, proc.stdout[-500:],
                                                     proc.stderr[-500:]))
    out = json.loads(line[-1][6:])
    secs = out["duration_us"] / 1e6
    errors = (out["connect_errors"] + out["read_errors"] + out["write_errors"]
              + out["status_errors"] + out["timeouts"])
    return {
        "rps": round(out["requests"] / secs, 1),
        "requests": out["requests"],
        "seconds": round(secs, 3),
        "p50_ms": out["p50_us"] / 1000.0,
        "p90_ms": out["p90_us"] / 1000.0,
        "p99_ms": out["p99_us"] / 1000.0,
        "p999_ms": out["p999_us"] / 1000.0,
        "max_ms": out["max_us"] / 1000.0,
        "errors": errors,
        "error_detail": {k: out[k] for k in ("connect_errors", "read_errors", "write_errors",
                                             "status_errors", "timeouts") if out[k]},
        "connections": connections,
    }


def rate_result(r):
    """
    loadgen's fixed-rate report in the units of the others (ms).
    """
    def ms(key):
        return r[key] / 1000.0 if r[key] is not None else None

    return {
        "rps": r["achieved_rate"],
        "offered_rps": r["offered_rate"],
        "requests": r["requests"],
        "p50_ms": ms("p50_us"),
        "p90_ms": ms("p90_us"),
        "p99_ms": ms("p99_us"),
        "p999_ms": ms("p999_us"),
        "max_ms": ms("max_us"),
        "sched_p99_ms": ms("sched_p99_us"),
        "errors": r["errors"],
        "error_kinds": r["error_kinds"],
    }


def fetch(bench, port, size):
    """
    One stream of C{size} bytes from bench/tcpsource.py on SERVER:C{port}, read to its end.

    @return: its seconds (from connecting to the end of the stream).
    @raise BenchError: if it was not C{size} bytes.
    """
    got = loadgen(bench, ["fetch", SERVER, str(port), "-", "--expect-bytes", str(size),
                          "--max-seconds", "120"], timeout=150)
    if got["bytes"] != size:
        raise BenchError("TCP stream from %s:%d: %d bytes, expected %d" % (
            SERVER, port, got["bytes"], size))
    return got["seconds"]


def tls_connections(bench, port, duration, warmup=0.0):
    """
    New connections with full TLS handshakes to SERVER:C{port} for C{duration} seconds
    (bench/loadgen.py tls).
    """
    a = bench.args
    argv = ["tls", SERVER, str(port), "/", "--ca-file", bench.tls_ca, "--server-name", TLS_NAME,
            "--duration", str(duration), "--warmup", str(warmup),
            "--connections", str(a.tls_connections), "--max-conns", str(a.tls_max_conns)]
    return tls_result(loadgen(bench, argv, timeout=warmup + duration + 60))


def tls_result(r):
    """
    loadgen's TLS report in the units of the others (ms).
    """
    def ms(key):
        return r[key] / 1000.0 if r.get(key) is not None else None

    return {
        "conns_per_s": r["conns_per_s"],
        "connections": r["connections"],
        "seconds": r["seconds"],
        "p50_ms": ms("p50_us"),
        "p90_ms": ms("p90_us"),
        "p99_ms": ms("p99_us"),
        "max_ms": ms("max_us"),
        "errors": r["errors"],
        "error_kinds": r["error_kinds"],
        "client_threads": r["workers"],
    }
