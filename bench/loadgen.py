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
"""

import argparse
import asyncio
import json
import sys
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("probe", "rate", "hold"))
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
    args = parser.parse_args(argv)
    result = asyncio.run({"probe": probe, "rate": rate, "hold": hold}[args.mode](args))
    if result is not None:
        sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
