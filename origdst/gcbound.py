"""
A bound on PyPy's garbage between major collections.

PyPy's garbage collector starts a major collection only when its heap has
grown by about 80% (C{PYPY_GC_MAJOR_COLLECT}) since the last one. Bytes that
stream through the proxy and survive a minor collection (they wait in a
transport's write buffer) are that garbage: a 256 MiB download to a slow
reader grew the resident size by 52 MiB, against 1 MiB on CPython. The
environment variables that tune this are read only when the interpreter
starts, so origdst uses PyPy's GC hooks instead: after a minor collection
that leaves more than C{limit} bytes above what the last major collection
kept, it runs one incremental step of the next major one (PyPy's own kind of
step, so no long pause). Measured on that download: 25 MiB of growth, with
13 major collections instead of 9. CPython has no such hooks and frees the
bytes at once: nothing is done there.
"""

import gc

#: How far the GC's memory may grow above the last major collection's result
#: before the next one is stepped along.
LIMIT = 8 * 1024 * 1024


class GarbageBound:
    """
    The GC hooks: C{on_gc_collect} records what a major collection kept,
    C{on_gc_minor} steps the next one along once the heap has outgrown it.
    """

    def __init__(self, collect_step, limit=LIMIT):
        self.collect_step = collect_step
        self.limit = limit
        self.floor = None
        self.stepping = False

    def on_gc_collect(self, stats):
        self.floor = stats.arenas_bytes + stats.rawmalloc_bytes_after

    def on_gc_minor(self, stats):
        if self.floor is None or self.stepping:
            return
        if stats.total_memory_used > self.floor + self.limit:
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
    bound = GarbageBound(gc.collect_step, limit)
    hooks.on_gc_collect = bound.on_gc_collect
    hooks.on_gc_minor = bound.on_gc_minor
    return bound
