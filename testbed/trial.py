"""
Trial test cases that share one L{Topology} per class.
"""

from twisted.trial import runner, unittest as _trial

from testbed.names import list_namespaces
from testbed.process import TopologyError, unavailable_reason
from testbed.topology import Topology


class TopologyTestCase(_trial.TestCase):
    """
    Tests that share one L{Topology} per class: trial has no C{setUpClass}, so
    the first C{setUp} builds it (L{build} adds rules and starts processes)
    and L{suite} appends a test that tears it down and checks that its
    namespaces are gone.

    A machine that cannot build namespaces or add the rules skips the tests;
    a fixture whose processes fail to start fails them, with the proxy's log.
    """

    tag = ""
    topology = None
    skipReason = None
    fixtureError = None
    _fixtureTried = False

    @classmethod
    def build(cls, topology):
        """
        Add rules and start the processes the class needs.
        """
        raise NotImplementedError()

    @classmethod
    def setUpClass(cls):
        cls._fixtureTried = True
        reason = unavailable_reason()
        if reason:
            cls.skipReason = reason
            return
        topology = Topology(tag=cls.tag)
        try:
            topology.start()
        except TopologyError as e:
            cls.skipReason = "cannot build network namespaces: %s" % (e,)
            return
        cls.topology = topology
        try:
            cls.build(topology)
        except _trial.SkipTest as e:
            cls.skipReason = str(e)
        except Exception as e:
            cls.fixtureError = "fixture failed: %s\nproxy log:\n%s" % (
                e, topology.proxy_log()[-4000:])

    @classmethod
    def tearDownClass(cls):
        """
        Stop everything; raise if our namespaces are still there.
        """
        topology, cls.topology = cls.topology, None
        cls._fixtureTried = False
        cls.skipReason = cls.fixtureError = None
        if topology is not None:
            left = topology.stop()
            if left:
                raise AssertionError("namespaces left behind: %r" % (left,))

    def setUp(self):
        cls = type(self)
        if not cls._fixtureTried:
            cls.setUpClass()
        if cls.skipReason:
            raise _trial.SkipTest(cls.skipReason)
        if cls.fixtureError:
            self.fail(cls.fixtureError)
        self.topology = cls.topology
        if self.topology.proxy is not None and not self.topology.proxy.running():
            self.fail("the proxy exited (%s) during an earlier test:\n%s" % (
                self.topology.proxy.popen.returncode, self.topology.proxy_log()[-4000:]))


def suite(cls, names=None):
    """
    @return: a trial suite running C{cls}'s tests (C{names}, in that order, or
        all of them sorted), then the teardown of its shared topology.
    """
    if names is None:
        names = sorted(name for name in dir(cls) if name.startswith("test_"))

    class Teardown(_trial.TestCase):
        def test_teardown(self):
            """
            Stopping the fixture removes its namespaces, rules and veths.
            """
            reason = unavailable_reason()
            if reason:
                raise _trial.SkipTest(reason)
            topology = cls.topology
            cls.tearDownClass()
            if topology is not None:
                left = [ns for ns in list_namespaces() if ns in (topology.client, topology.server)]
                self.assertEqual(left, [])

    base = cls.__name__[:-len("Tests")] if cls.__name__.endswith("Tests") else cls.__name__
    Teardown.__name__ = Teardown.__qualname__ = base + "TeardownTests"
    Teardown.__module__ = cls.__module__
    tests = runner.TestSuite([cls(name) for name in names])
    tests.addTest(Teardown("test_teardown"))
    return tests
