"""
A bound on PyPy's garbage between major collections.

PyPy's garbage collector starts a major collection only when its heap has
grown by about 80% (C{PYPY_GC_MAJOR_COLLECT}) since the last one. Bytes that
stream through the proxy and survive a minor collection (they wait in a
transport's write buffer) are that garbage: a 256 MiB download to a slow
reader grew the resident size by 52 MiB, against 1 MiB on CPython. The
environment variables that tune this are read only when the interpreter
starts, so origdst uses PyPy's GC hooks instead: after a minor collection
that leaves more than C{limit} bytes of large objects (the ones the GC
allocates outside its arenas with malloc: the bytes of bodies) above what
the last major collection kept, it runs one incremental step of the next
major one (PyPy's own kind of step, so no long pause). Measured on that
download: 25 MiB of growth, with 13 major collections instead of 9, with a
limit of 8 MiB; that limit let the suite's slow-reader download grow by
36-38 MiB in some runs, 4 MiB keeps it at 15-21 MiB.

Only the large objects count: a first version counted the whole heap, and
under keep-alive load the small objects of requests that outlive a minor
collection pass 8 MiB in a fraction of a second, so it ran about three
major collections a second (PYPYLOG: 96 in a 30 s benchmark run, 3.7 s of
major steps of up to 7 ms), and p99 at saturation was 37 ms instead of 24.
Those small objects are PyPy's own business, at its own pace. CPython has no
such hooks and frees the bytes at once: nothing is done there.
"""

import gc

#: How far the GC's large objects may grow above what the last major
#: collection kept before the next one is stepped along.
LIMIT = 4 * 1024 * 1024


def raw_bytes(gc=gc):
    """
    @return: the bytes of the GC's large (malloc'ed) objects now.
    """
    # gc._get_stats() is what gc.get_stats() formats, without the
    # formatting: a few counters, cheap enough for every minor collection.
    get = getattr(gc, "_get_stats", None) or gc.get_stats
    return get().total_rawmalloced_memory


class GarbageBound:
    """
    The GC hooks: C{on_gc_collect} records the large objects a major
    collection kept, C{on_gc_minor} steps the next one along once they have
    outgrown that by the limit.

    @ivar raw_bytes: returns the bytes of large objects now.
    """

    def __init__(self, collect_step, raw_bytes, limit=LIMIT):
        self.collect_step = collect_step
        self.raw_bytes = raw_bytes
        self.limit = limit
        self.floor = None
        self.stepping = False

    def on_gc_collect(self, stats):
        self.floor = stats.rawmalloc_bytes_after

    def on_gc_minor(self, stats):
        if self.floor is None or self.stepping:
            return
        if self.raw_bytes() > self.floor + self.limit:
            # A step may run minor collections of its own.
            self.stepping = True
            try:
                self.collect_step()
            finally:
                self.stepping = False


def install(gc=gc, limit=LIMIT):
    """
    Bound the garbage, where the interpreter has GC hooks (PyPy).

    @return: the installed L{GarbageBound}, or L{None} when there are no hooks.
    """
    hooks = getattr(gc, "hooks", None)
    if hooks is None:
        return None
    bound = GarbageBound(gc.collect_step, lambda: raw_bytes(gc), limit)
    hooks.on_gc_collect = bound.on_gc_collect
    hooks.on_gc_minor = bound.on_gc_minor
    return bound
