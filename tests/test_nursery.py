"""
Tests for L{origdst.nursery}: under PyPy without C{PYPY_GC_NURSERY}, origdst
starts itself again with origdst's nursery; a value the user set is kept.
"""

import errno
import os
import subprocess
import sys

from twisted.trial import unittest

from origdst import nursery
from tests.helpers import capture_log

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


class RestartTests(unittest.TestCase):
    def setUp(self):
        self.calls = []

    def execve(self, path, argv, env):
        self.calls.append((path, argv, env))

    def test_pypy_without_variable(self):
        """
        The same command line, this interpreter, the environment with the
        variable added.
        """
        environ = {"PATH": "/usr/bin", "LISTEN_FDS": "1"}
        nursery.restart(environ, "pypy", "/venv/bin/python", [b"pypy3", b"-c", b"code", b"-n", b"origdst"],
                        self.execve)
        self.assertEqual(self.calls, [(
            "/venv/bin/python", ["/venv/bin/python", b"-c", b"code", b"-n", b"origdst"],
            {"PATH": "/usr/bin", "LISTEN_FDS": "1", "PYPY_GC_NURSERY": nursery.SIZE,
             "PYPY_GC_MIN": nursery.MIN_HEAP},
        )])
        self.assertNotIn("PYPY_GC_NURSERY", environ)

    def test_minimum_kept(self):
        """
        A C{PYPY_GC_MIN} the user set alone is kept; the nursery is added.
        """
        nursery.restart({"PYPY_GC_MIN": "100M"}, "pypy", "/x", [b"x"], self.execve)
        self.assertEqual(self.calls[0][2], {"PYPY_GC_MIN": "100M", "PYPY_GC_NURSERY": nursery.SIZE})

    def test_kept(self):
        """
        A value the user set (any, even empty), or CPython: no restart.
        """
        for environ, implementation in (({"PYPY_GC_NURSERY": "1M"}, "pypy"),
                                        ({"PYPY_GC_NURSERY": ""}, "pypy"),
                                        ({}, "cpython")):
            self.assertFalse(nursery.restart(environ, implementation, "/x", [b"x"], self.execve))
        self.assertEqual(self.calls, [])

    def test_cannot(self):
        """
        No command line, or an exec that fails: the proxy goes on, with a
        log line.
        """
        messages = capture_log(self)

        def failing(path, argv, env):
            raise OSError(errno.ENOENT, "gone")

        self.assertFalse(nursery.restart({}, "pypy", "/x", [b"x"], failing))
        self.assertFalse(nursery.restart({}, "pypy", "/x", [], self.execve))
        self.assertEqual(self.calls, [])
        self.assertEqual(len([m for m in messages if "default nursery" in m]), 2, messages)

    def test_command_line(self):
        """
        /proc/self/cmdline's NUL-separated arguments; none when unreadable.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"pypy3\0-c\0import x; run()\0\0-n\0")
        self.assertEqual(nursery.command_line(path), [b"pypy3", b"-c", b"import x; run()", b"", b"-n"])
        self.assertIsNone(nursery.command_line(path + ".missing"))

    def test_initial_environment(self):
        """
        /proc/self/environ's variables, as the process was started.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"LISTEN_PID=12\0EMPTY=\0A=b=c\0junk\0")
        self.assertEqual(nursery.initial_environment(path), {"LISTEN_PID": "12", "EMPTY": "", "A": "b=c"})
        self.assertIsNone(nursery.initial_environment(path + ".missing"))

    def test_real_process(self):
        """
        A real interpreter: under PyPy it runs again, same PID and command
        line, with the variable set, and once only; under CPython it goes on.
        """
        code = ("import os, sys; from origdst import nursery; "
                "print(os.getpid(), os.environ.get('PYPY_GC_NURSERY'), os.environ.get('PYPY_GC_MIN'), "
                "sys.argv[1:], "
                "os.environ.pop('LISTEN_PID'), flush=True); "
                "nursery.restart(); print('on', flush=True)")
        env = {k: v for k, v in os.environ.items() if k not in ("PYPY_GC_NURSERY", "PYPY_GC_MIN")}
        env["PYTHONPATH"] = REPO
        # Removed from os.environ before the restart, as Twisted does: the
        # restarted process has it again.
        env["LISTEN_PID"] = "7"
        out = subprocess.run([sys.executable, "-c", code, "a b", ""], env=env, stdout=subprocess.PIPE,
                             timeout=120, check=True).stdout.decode().splitlines()
        pid = out[0].split()[0]
        if sys.implementation.name == "pypy":
            self.assertEqual(out, [f"{pid} None None ['a b', ''] 7",
                                   f"{pid} {nursery.SIZE} {nursery.MIN_HEAP} ['a b', ''] 7", "on"])
        else:
            self.assertEqual(out, [f"{pid} None None ['a b', ''] 7", "on"])

    def test_plugin(self):
        """
        The twistd plugin restarts before the service is made.
        """
        from twisted.plugins.origdst_plugin import origdst
        from origdst import tap

        calls = []
        self.patch(nursery, "restart", lambda: calls.append("restart"))
        self.patch(tap, "makeService", lambda options: calls.append(("make", options)) or "service")
        self.assertEqual(origdst.makeService("options"), "service")
        self.assertEqual(calls, ["restart", ("make", "options")])
