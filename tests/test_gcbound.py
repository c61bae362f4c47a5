"""
Tests for L{origdst.gcbound}: the garbage bound steps a major collection
along only once the large objects have outgrown what the last one kept by
the limit.
"""

import sys

from twisted.trial import unittest

from origdst import gcbound


class Stats:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class FakeHooks:
    on_gc_collect = on_gc_minor = None


class FakeGC:
    """
    PyPy's gc module as the bound uses it: hooks, collect_step, and
    _get_stats with the bytes of large objects in C{raw}.
    """

    def __init__(self):
        self.hooks = FakeHooks()
        self.steps = 0
        self.raw = 0

    def _get_stats(self):
        return Stats(total_rawmalloced_memory=self.raw)

    def collect_step(self):
        self.steps += 1
        # A step can run a minor collection, which must not step again.
        self.raw, raw = 10 ** 12, self.raw
        self.hooks.on_gc_minor(Stats(total_memory_used=10 ** 12))
        self.raw = raw
        return False


def minor(fake, raw):
    fake.raw = raw
    fake.hooks.on_gc_minor(Stats(total_memory_used=raw + 10 ** 9))


class GarbageBoundTests(unittest.TestCase):
    def test_steps_past_limit(self):
        """
        A minor collection that leaves more than the limit of large objects
        above what the last major collection kept runs one step; one within
        it runs none.
        """
        fake = FakeGC()
        bound = gcbound.install(fake, limit=100)
        self.assertIs(fake.hooks.on_gc_minor.__self__, bound)
        minor(fake, 5000)
        self.assertEqual(fake.steps, 0, "no major collection seen yet")
        fake.hooks.on_gc_collect(Stats(arenas_bytes=600, rawmalloc_bytes_after=400))
        minor(fake, 500)
        self.assertEqual(fake.steps, 0)
        minor(fake, 501)
        self.assertEqual(fake.steps, 1)
        fake.hooks.on_gc_collect(Stats(arenas_bytes=1500, rawmalloc_bytes_after=500))
        minor(fake, 501)
        self.assertEqual(fake.steps, 1)

    def test_small_objects_do_not_count(self):
        """
        A heap that grows by small objects alone (the arenas), however far,
        is left to PyPy's own pace: under keep-alive load, stepping for them
        ran three major collections a second.
        """
        fake = FakeGC()
        gcbound.install(fake, limit=100)
        fake.hooks.on_gc_collect(Stats(arenas_bytes=600, rawmalloc_bytes_after=400))
        fake.raw = 400
        fake.hooks.on_gc_minor(Stats(total_memory_used=10 ** 9))
        self.assertEqual(fake.steps, 0)

    def test_get_stats_fallback(self):
        """
        Without C{_get_stats}, the bytes of large objects come from C{get_stats}.
        """
        class Public:
            def get_stats(self):
                return Stats(total_rawmalloced_memory=1234)

        self.assertEqual(gcbound.raw_bytes(Public()), 1234)

    def test_no_hooks(self):
        """
        Without GC hooks (CPython) nothing is installed.
        """
        self.assertIsNone(gcbound.install(object()))

    def test_pypy_has_hooks(self):
        """
        PyPy's GC hooks are there and report the fields the bound reads.
        """
        if sys.implementation.name != "pypy":
            raise unittest.SkipTest("PyPy's")
        import gc
        seen = {}
        for name in ("on_gc_minor", "on_gc_collect"):
            self.addCleanup(setattr, gc.hooks, name, getattr(gc.hooks, name))
        gc.hooks.on_gc_minor = lambda s: seen.setdefault("minor", s.total_memory_used)
        gc.hooks.on_gc_collect = lambda s: seen.setdefault(
            "major", s.arenas_bytes + s.rawmalloc_bytes_after)
        gc.collect()
        garbage = [bytearray(100) for _ in range(100000)]
        del garbage
        gc.collect()
        self.assertEqual(sorted(seen), ["major", "minor"])
        self.assertGreater(seen["major"], 0)

    def test_pypy_raw_bytes(self):
        """
        Under PyPy the bytes of large objects are counted: a body-sized
        bytes object adds about its size.
        """
        if sys.implementation.name != "pypy":
            raise unittest.SkipTest("PyPy's")
        before = gcbound.raw_bytes()
        body = b"x" * (4 * 1024 * 1024)
        self.assertGreaterEqual(gcbound.raw_bytes() - before, len(body) - 64 * 1024)
