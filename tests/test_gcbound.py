"""
Tests for L{origdst.gcbound}: the garbage bound steps a major collection
along only once the heap has outgrown the last one's result by the limit.
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
    def __init__(self):
        self.hooks = FakeHooks()
        self.steps = 0

    def collect_step(self):
        self.steps += 1
        # A step can run a minor collection, which must not step again.
        self.hooks.on_gc_minor(Stats(total_memory_used=10 ** 12))
        return False


class GarbageBoundTests(unittest.TestCase):
    def test_steps_past_limit(self):
        """
        A minor collection that leaves more than the limit above the last
        major collection's result runs one step; one within it runs none.
        """
        fake = FakeGC()
        bound = gcbound.install(fake, limit=100)
        self.assertIs(fake.hooks.on_gc_minor.__self__, bound)
        fake.hooks.on_gc_minor(Stats(total_memory_used=5000))
        self.assertEqual(fake.steps, 0, "no major collection seen yet")
        fake.hooks.on_gc_collect(Stats(arenas_bytes=600, rawmalloc_bytes_after=400))
        fake.hooks.on_gc_minor(Stats(total_memory_used=1100))
        self.assertEqual(fake.steps, 0)
        fake.hooks.on_gc_minor(Stats(total_memory_used=1101))
        self.assertEqual(fake.steps, 1)
        fake.hooks.on_gc_collect(Stats(arenas_bytes=1500, rawmalloc_bytes_after=0))
        fake.hooks.on_gc_minor(Stats(total_memory_used=1101))
        self.assertEqual(fake.steps, 1)

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
