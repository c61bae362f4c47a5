"""
C{python -m bench.micro}: the cost of one keep-alive request through origdst's
own objects, in one process, without sockets.

A L{origdst.downstream.ProxyChannel} from a real L{ListenerFactory} is fed
the GETs wrk sends (one at a time, or C{--pipeline} at once) and a fake
upstream answers each with nginx's 13-byte response; the transports only
count bytes, so what is measured is origdst's Python, not a test double's.
The reactor's part (epoll, the transports' buffering, C{send}/C{recv}) is
not in it: C{make bench} measures that.

The machine is shared and noisy, so besides wall time per request the tool
counts instructions, which do not depend on what else runs:

    python -m bench.micro -n 20000             # wall µs per request
    python -m bench.micro -n 5000 --instructions
    python -m bench.micro -n 20000 --profile   # cProfile, top functions
    python -m bench.micro --loopback 5 [--instructions]   # wrk, real sockets

C{--instructions} runs the tool twice under C{valgrind --tool=callgrind}, with
no requests and with C{-n}, and divides the difference by C{-n}, so start-up
and imports drop out. C{--loopback} runs a real proxy process on 127.0.0.1
(its destination fixed to a local backend, so no REDIRECT rule is needed)
under wrk: a load, so take the benchmark lock for it.
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock

from origdst.cluster import OriginalDstCluster
from origdst.config import Settings
from origdst.listener import ListenerFactory

DEST = ("10.250.0.3", 80)
REQUEST = b"GET / HTTP/1.1\r\nHost: 10.250.0.3\r\n\r\n"
# What nginx answers for a 13-byte file.
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: nginx/1.22.1\r\n"
    b"Date: Tue, 01 Dec 2026 21:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 13\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
    b"hello, world\n"
)


class CountingTransport:
    """
    The part of a TCP transport origdst uses, keeping only a byte count (and
    the last write, to check a response) so its own cost stays near zero.
    """

    def __init__(self, host, peer):
        self.host = IPv4Address("TCP", *host)
        self.peer = IPv4Address("TCP", *peer)
        self.written = 0
        self.writes = 0
        self.last = b""
        self.producer = None
        self.paused = False
        self.bufferSize = 65536
        self.on_write = None

    def write(self, data):
        self.written += len(data)
        self.writes += 1
        self.last = data
        if self.on_write is not None:
            self.on_write(data)

    def writeSequence(self, pieces):
        self.write(b"".join(pieces))

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def loseConnection(self):
        raise AssertionError("the connection was closed: %r" % (self.last,))

    abortConnection = loseConnection

    def getPeer(self):
        return self.peer

    def getHost(self):
        return self.host

    def getHandle(self):
        return self


class Bench:
    """
    One client connection and one upstream connection, as in a wrk run with
    a warm pool.
    """

    def __init__(self, **settings):
        settings.setdefault("log_level", "warn")
        self.reactor = MemoryReactorClock()
        self.settings = Settings(**settings)
        self.cluster = OriginalDstCluster(self.settings, self.reactor)
        self.factory = ListenerFactory(
            self.cluster, self.settings, self.reactor, original_destination=lambda h: DEST
        )
        self.client = CountingTransport(("127.0.0.1", 4999), ("10.250.0.2", 40000))
        self.channel = self.factory.buildProtocol(None)
        self.channel.makeConnection(self.client)
        self.upstream = None
        self.heads = 0
        self.request(1)

    def _connect_upstream(self):
        host, port, factory, timeout, bind = self.reactor.tcpClients[-1]
        proto = factory.buildProtocol(None)
        transport = CountingTransport(("10.250.0.2", 50000), (host, port))
        proto.makeConnection(transport)
        self.upstream = proto

    def request(self, n, pipeline=1):
        """
        Send C{n} requests, C{pipeline} at a time, each answered by the
        upstream as soon as its head arrives.
        """
        # The listener's detector hands the connection to a ProxyChannel,
        # which becomes the transport's protocol.
        channel = getattr(self.client, "protocol", self.channel)
        data = REQUEST * pipeline
        for _ in range(n // pipeline):
            before = self.heads
            channel.dataReceived(data)
            if self.upstream is None:
                self._connect_upstream()
            upstream = self.upstream
            transport = upstream.transport
            while self.heads < before + pipeline:
                if transport.writes == self.heads:
                    raise AssertionError("no request went upstream")
                self.heads += 1
                upstream.dataReceived(RESPONSE)
        if not self.client.last.endswith(b"hello, world\n"):
            raise AssertionError("unexpected response: %r" % (self.client.last,))


def run(n, pipeline, profile):
    bench = Bench()
    bench.request(200, pipeline)  # warm up (and let PyPy's JIT compile)
    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(bench.request, n, pipeline)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(int(os.environ.get("MICRO_TOP", "25")))
        return
    start = time.perf_counter()
    cpu = time.process_time()
    bench.request(n, pipeline)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu
    if n:
        print(
            "%d requests (pipeline %d): %.2f µs wall, %.2f µs CPU per request; "
            "%d client writes, %d upstream writes"
            % (n, pipeline, wall / n * 1e6, cpu / n * 1e6, bench.client.writes,
               bench.upstream.transport.writes)
        )


def instructions(n, pipeline):
    """
    @return: instructions per request, from two callgrind runs.
    """
    counts = []
    with tempfile.TemporaryDirectory() as tmp:
        for requests in (0, n):
            out = os.path.join(tmp, "callgrind.%d" % requests)
            subprocess.run(
                ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out,
                 sys.executable, "-m", "bench.micro", "-n", str(requests),
                 "--pipeline", str(pipeline)],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            with open(out) as f:
                total = re.search(r"^summary: (\d+)", f.read(), re.M)
            counts.append(int(total.group(1)))
    return (counts[1] - counts[0]) / n


class Backend(Protocol):
    """
    A plain HTTP server for L{loopback}: each request head gets L{RESPONSE}.
    """

    buf = b""

    def dataReceived(self, data):
        buf = self.buf + data
        count = buf.count(b"\r\n\r\n")
        if count:
            self.transport.write(RESPONSE * count)
            buf = buf[buf.rindex(b"\r\n\r\n") + 4 :]
        self.buf = buf


def serve(role, port, backend_port):
    """
    Run the backend, or the proxy with its destination fixed to the backend
    (so no REDIRECT rule is needed), on 127.0.0.1:C{port}.
    """
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory

    from origdst import eventloop, gcbound

    if role == "backend":
        factory = Factory.forProtocol(Backend)
    else:
        # As makeService does.
        eventloop.tune(reactor)
        gcbound.install()
        settings = Settings(log_level="warn")
        cluster = OriginalDstCluster(settings, reactor)
        factory = ListenerFactory(
            cluster, settings, reactor, original_destination=lambda h: ("127.0.0.1", backend_port)
        )
    reactor.listenTCP(port, factory, interface="127.0.0.1")
    print("ready", flush=True)
    reactor.run()


def _cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start(argv):
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    if process.stdout.readline().strip() != "ready":
        raise RuntimeError("%s did not start" % (argv,))
    return process


def _proxy_run(duration, connections, callgrind, port, backend_port):
    """
    One proxy process (under callgrind if asked) and one wrk run through it.

    @return: C{(requests, proxy CPU seconds, instructions or None)}.
    """
    me = [sys.executable, "-m", "bench.micro"]
    backend = _start(me + ["--serve", "backend", "--port", str(backend_port)])
    out = None
    proxy_argv = me + ["--serve", "proxy", "--port", str(port), "--backend-port", str(backend_port)]
    if callgrind:
        out = tempfile.mktemp(prefix="micro-callgrind.")
        proxy_argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out] + proxy_argv
    proxy = _start(proxy_argv)
    try:
        load = ["wrk", "-t1", "-c%d" % connections, "-d%ds" % duration,
                "http://127.0.0.1:%d/" % port]
        cpu = _cpu_seconds(proxy.pid)
        report = subprocess.run(load, check=True, stdout=subprocess.PIPE, text=True).stdout
        cpu = _cpu_seconds(proxy.pid) - cpu
    finally:
        proxy.send_signal(signal.SIGTERM)
        proxy.wait()
        backend.send_signal(signal.SIGTERM)
        backend.wait()
    requests = int(re.search(r"(\d+) requests in", report).group(1))
    total = None
    if callgrind:
        with open(out) as f:
            total = int(re.search(r"^summary: (\d+)", f.read(), re.M).group(1))
        os.unlink(out)
    return requests, cpu, total


def loopback(duration, connections, callgrind, port=24999, backend_port=24998):
    """
    Proxy wrk's keep-alive requests over loopback to a local backend: the
    reactor's part (epoll, transports, send/recv) is in it.

    With C{callgrind}, two proxy processes run, one for a second and one
    for C{duration} seconds; the difference of their instructions over the
    difference of their requests leaves out start-up and the connections'
    set-up.

    @return: the line to print: requests, the proxy's CPU (user and system)
        per request, and with C{callgrind} its instructions per request.
    """
    requests, cpu, total = _proxy_run(duration, connections, callgrind, port, backend_port)
    line = "%d requests over loopback (-c%d): %.2f µs proxy CPU per request" % (
        requests, connections, cpu / requests * 1e6)
    if callgrind:
        short, _, short_total = _proxy_run(1, connections, callgrind, port, backend_port)
        line += ", %.0f instructions per request" % (
            (total - short_total) / (requests - short))
    return line + " (%s)" % sys.implementation.name


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20000, help="requests measured")
    parser.add_argument("--pipeline", type=int, default=1, help="requests sent at once")
    parser.add_argument("--instructions", action="store_true", help="count them with callgrind")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    parser.add_argument("--loopback", type=int, metavar="SECONDS",
                        help="wrk through a real proxy process on 127.0.0.1 for SECONDS "
                             "(a load: run it under the benchmark lock)")
    parser.add_argument("--connections", type=int, default=50, help="wrk's -c, for --loopback")
    parser.add_argument("--serve", choices=["proxy", "backend"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--backend-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, args.backend_port)
        return 0
    if args.loopback:
        print(loopback(args.loopback, args.connections, args.instructions))
        return 0
    if args.n % args.pipeline:
        parser.error("-n must be a multiple of --pipeline")
    if args.instructions:
        per = instructions(args.n, args.pipeline)
        print("%d requests (pipeline %d): %.0f instructions per request (%s)"
              % (args.n, args.pipeline, per, sys.implementation.name))
        return 0
    run(args.n, args.pipeline, args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
