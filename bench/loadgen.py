"""
The benchmark's own client tools, run by the benchmark (bench/clients.py) inside the client
namespace as an unprivileged user (so the REDIRECT rule's owner match sends
them to the proxy).  Standard library only, so any python3 the unprivileged
user can run will do; every mode is bounded in count and in time.

    loadgen.py probe HOST PORT PATH
        one GET; prints {"status", "server", "body_len"} as JSON.
    loadgen.py rate HOST PORT PATH --rate R --duration S [--connections N]
        open-loop load at a fixed rate over keep-alive connections; prints
        latency percentiles as JSON.
    loadgen.py hold HOST PORT PATH --count N [--parallel P] [--max-hold S]
        opens N connections, sends one request on each, reads the response
        and keeps the connections open; prints a JSON line once they are all
        open, then holds them until stdin closes or --max-hold passes.
    loadgen.py fetch HOST PORT - --expect-bytes N
        one connection that sends nothing and reads to the end of the stream
        (the TCP relay phase: a stream that is not HTTP); prints its bytes
        and seconds.
    loadgen.py tls HOST PORT PATH --ca-file F --server-name NAME --duration S
        [--connections N] [--max-conns M] [--warmup S]
        new connections from N threads, each a full TLS handshake (the
        certificate verified with F for NAME) and one GET with Connection:
        close, for S seconds or M connections; prints connections/s and
        latency percentiles.
"""

import argparse
import asyncio
import json
import socket
import ssl
import sys
import threading
import time


def request_bytes(host, port, path, close=False):
    authority = host if port == 80 else "%s:%d" % (host, port)
    head = "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: origdst-bench\r\n" % (path, authority)
    if close:
        head += "Connection: close\r\n"
    return (head + "\r\n").encode("ascii")


async def read_response(reader):
    """
    Read one response with a Content-Length body (all the bench backend
    sends).

    @return: C{(status, headers dict, body length)}.
    """
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if length:
        await reader.readexactly(length)
    return status, headers, length


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    # Nearest rank, as wrk and most tools report it.
    rank = max(1, int(round(p / 100.0 * len(sorted_values) + 0.5 - 1e-9)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


async def probe(args):
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(args.host, args.port), args.timeout)
    writer.write(request_bytes(args.host, args.port, args.path, close=True))
    status, headers, length = await asyncio.wait_for(read_response(reader), args.timeout)
    writer.close()
    return {"status": status, "server": headers.get("server", ""), "body_len": length,
            "headers": sorted(headers)}


async def rate(args):
    """
    Open loop: request i is due at start + i / rate whatever happened to the
    earlier ones; a due request waits for a free connection.  The latency
    reported is from the moment a request is written to the moment its
    response is complete ("service"), and from the moment it was due
    ("from_schedule", which includes any wait for a connection and so shows
    coordinated omission if the target falls behind).
    """
    loop = asyncio.get_running_loop()
    total = min(int(args.rate * args.duration), args.max_requests)
    request = request_bytes(args.host, args.port, args.path)
    queue = asyncio.Queue()
    service, scheduled, errors = [], [], []
    deadline = loop.time() + args.duration + args.grace

    async def worker():
        reader = writer = None
        while True:
            due = await queue.get()
            if due is None:
                break
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(args.host, args.port), args.timeout)
                sent = time.perf_counter()
                writer.write(request)
                status, _, _ = await asyncio.wait_for(read_response(reader), args.timeout)
                done = time.perf_counter()
                if status != 200:
                    errors.append("status %d" % status)
                if due >= counted_from:
                    service.append(done - sent)
                    scheduled.append(done - due)
            except Exception as e:
                errors.append(type(e).__name__)
                if writer is not None:
                    writer.close()
                reader = writer = None
            if loop.time() > deadline:
                break
        if writer is not None:
            writer.close()

    workers = [asyncio.ensure_future(worker()) for _ in range(args.connections)]
    start = time.perf_counter()
    counted_from = start + args.warmup
    total += int(args.rate * args.warmup)
    deadline += args.warmup
    for i in range(total):
        due = start + i / args.rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if loop.time() > deadline:
            break
        queue.put_nowait(due)
    for _ in workers:
        queue.put_nowait(None)
    remaining = max(0.1, deadline - loop.time())
    done, pending = await asyncio.wait(workers, timeout=remaining)
    for task in pending:
        task.cancel()
    elapsed = time.perf_counter() - counted_from
    service.sort()
    scheduled.sort()

    def us(value):
        return None if value is None else round(value * 1e6, 1)

    return {
        "requests": len(service),
        "offered_rate": args.rate,
        "achieved_rate": round(len(service) / elapsed, 1) if elapsed else None,
        "errors": len(errors),
        "error_kinds": sorted(set(errors))[:5],
        "p50_us": us(percentile(service, 50)),
        "p90_us": us(percentile(service, 90)),
        "p99_us": us(percentile(service, 99)),
        "p999_us": us(percentile(service, 99.9)),
        "max_us": us(service[-1] if service else None),
        "sched_p50_us": us(percentile(scheduled, 50)),
        "sched_p99_us": us(percentile(scheduled, 99)),
        "connections": args.connections,
    }


async def hold(args):
    """
    Open C{count} connections, at most C{parallel} at a time, each carrying
    one request, and keep them.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.max_hold
    request = request_bytes(args.host, args.port, args.path)
    held, errors = [], []
    gate = asyncio.Semaphore(args.parallel)

    async def one():
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(args.host, args.port), args.timeout)
                writer.write(request)
                status, _, _ = await asyncio.wait_for(read_response(reader), args.timeout)
                if status != 200:
                    errors.append("status %d" % status)
                held.append((reader, writer))
            except Exception as e:
                errors.append(type(e).__name__)

    started = time.perf_counter()
    tasks = [asyncio.ensure_future(one()) for _ in range(args.count)]
    _, pending = await asyncio.wait(tasks, timeout=max(1.0, deadline - loop.time()))
    for task in pending:
        task.cancel()
    if pending:
        errors.append("deadline")
    report = {"held": len(held), "errors": len(errors),
              "error_kinds": sorted(set(errors))[:5],
              "open_seconds": round(time.perf_counter() - started, 2)}
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    # Hold until the controller closes our stdin, or the deadline.
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    try:
        await asyncio.wait_for(stdin_closed, max(0.1, deadline - loop.time()))
    except asyncio.TimeoutError:
        pass
    for reader, writer in held:
        writer.close()
    return None


def fetch(args):
    """
    Read one stream to its end: the client side of the TCP relay phase.
    """
    buf = bytearray(1024 * 1024)
    view = memoryview(buf)
    limit = args.expect_bytes + len(buf)
    started = time.perf_counter()
    sock = socket.create_connection((args.host, args.port), timeout=args.timeout)
    try:
        connected = time.perf_counter()
        deadline = started + args.max_seconds
        total = 0
        while total <= limit:
            if time.perf_counter() > deadline:
                raise SystemExit("fetch: %d bytes after %ss" % (total, args.max_seconds))
            n = sock.recv_into(view)
            if not n:
                break
            total += n
        done = time.perf_counter()
    finally:
        sock.close()
    return {"bytes": total, "seconds": round(done - started, 6),
            "connect_ms": round((connected - started) * 1000, 3)}


def connection_summary(latencies, errors, seconds, workers):
    """
    The figures of a run of new connections.

    @param latencies: seconds from connect to the end of each counted
        connection that succeeded.
    @param errors: a name per connection that failed.
    @param seconds: how long the counted part of the run took.
    """
    latencies = sorted(latencies)

    def us(value):
        return None if value is None else round(value * 1e6, 1)

    return {
        "connections": len(latencies),
        "conns_per_s": round(len(latencies) / seconds, 1) if seconds > 0 else None,
        "seconds": round(seconds, 3),
        "errors": len(errors),
        "error_kinds": sorted(set(errors))[:5],
        "p50_us": us(percentile(latencies, 50)),
        "p90_us": us(percentile(latencies, 90)),
        "p99_us": us(percentile(latencies, 99)),
        "max_us": us(latencies[-1] if latencies else None),
        "workers": workers,
    }


def tls(args):
    """
    Full TLS handshakes on new connections, from threads with blocking
    sockets (the handshake runs in OpenSSL without the GIL), bounded by
    --duration (after --warmup) and by --max-conns counted connections.
    No session is resumed: each connection starts a fresh one.
    """
    context = ssl.create_default_context(cafile=args.ca_file)
    request = ("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: origdst-bench\r\n"
               "Connection: close\r\n\r\n" % (args.path, args.server_name)).encode("ascii")
    start = time.perf_counter()
    counted_from = start + args.warmup
    deadline = counted_from + args.duration
    lock = threading.Lock()
    latencies, errors = [], []

    def one():
        t0 = time.perf_counter()
        raw = socket.create_connection((args.host, args.port), timeout=args.timeout)
        try:
            with context.wrap_socket(raw, server_hostname=args.server_name) as sock:
                sock.sendall(request)
                got = []
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    got.append(chunk)
        finally:
            raw.close()
        head = b"".join(got)[:12]
        if head != b"HTTP/1.1 200":
            raise ValueError("status %r" % head)
        return t0, time.perf_counter()

    def worker():
        while True:
            now = time.perf_counter()
            with lock:
                if now >= deadline or len(latencies) + len(errors) >= args.max_conns:
                    return
            try:
                t0, t1 = one()
            except (OSError, ValueError) as e:
                if time.perf_counter() >= counted_from:
                    with lock:
                        errors.append(type(e).__name__)
                continue
            if t0 >= counted_from and t1 <= deadline:
                with lock:
                    latencies.append(t1 - t0)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.1, deadline + args.timeout * 2 - time.perf_counter()))
    ended = min(time.perf_counter(), deadline)
    return connection_summary(latencies, errors, ended - counted_from, args.connections)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("probe", "rate", "hold", "fetch", "tls"))
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("path")
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--grace", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=0.0,
                        help="rate: seconds of requests sent first and not counted")
    parser.add_argument("--max-requests", type=int, default=100000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--parallel", type=int, default=50)
    parser.add_argument("--max-hold", type=float, default=120.0)
    parser.add_argument("--expect-bytes", type=int, default=256 * 1024 * 1024,
                        help="fetch: reading stops a buffer beyond this")
    parser.add_argument("--max-seconds", type=float, default=120.0,
                        help="fetch: the longest a stream may take")
    parser.add_argument("--ca-file", help="tls: the CA that signed the server's certificate")
    parser.add_argument("--server-name", help="tls: the SNI sent and verified")
    parser.add_argument("--max-conns", type=int, default=100000,
                        help="tls: the most connections counted")
    args = parser.parse_args(argv)
    if args.mode in ("fetch", "tls"):
        result = {"fetch": fetch, "tls": tls}[args.mode](args)
    else:
        result = asyncio.run({"probe": probe, "rate": rate, "hold": hold}[args.mode](args))
    if result is not None:
        sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
