"""
Socket activation: C{--port systemd:domain=INET6:index=0} serves on a socket
passed the way systemd passes it, and the shipped units say so.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from twisted.internet import endpoints
from twisted.python import usage
from twisted.python.systemd import ListenFDs
from twisted.trial import unittest

from origdst.tap import Options
from testbed import TWISTD

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CONF = os.path.join(REPO, "conf")
SYSTEMD_PORT = "systemd:domain=INET6:index=0"


class OptionTests(unittest.TestCase):
    def parse(self, *argv):
        options = Options()
        options.parseOptions(list(argv))
        return options.settings

    def test_accepted_with_a_passed_socket(self):
        """
        --port takes the systemd: description when systemd passed a socket.
        """
        self.patch(endpoints._SystemdParser, "_sddaemon", ListenFDs([3], ["origdst.socket"]))
        self.assertEqual(self.parse("--port", SYSTEMD_PORT).port, SYSTEMD_PORT)

    def test_refused_without_one(self):
        """
        Without a passed socket, the error names the option and says where
        the socket should have come from.
        """
        self.patch(endpoints._SystemdParser, "_sddaemon", ListenFDs([], ()))
        e = self.assertRaises(usage.UsageError, self.parse, "--port", SYSTEMD_PORT)
        self.assertIn("--port: invalid endpoint description " + repr(SYSTEMD_PORT), str(e))
        self.assertIn("passed by systemd", str(e))

    def test_workers_need_tcp(self):
        """
        --workers says plainly that it needs a tcp: port, not systemd's.
        """
        self.patch(endpoints._SystemdParser, "_sddaemon", ListenFDs([3], ["origdst.socket"]))
        e = self.assertRaises(usage.UsageError, self.parse, "--port", SYSTEMD_PORT, "--workers", "2")
        self.assertIn("--workers: 2 workers need a tcp: or tcp6: --port", str(e))
        self.assertIn(repr(SYSTEMD_PORT), str(e))


def _ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


_LAUNCHER = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


class SocketActivationTests(unittest.TestCase):
    """
    A C{twistd -n origdst} subprocess given a listening socket as fd 3 with
    C{LISTEN_FDS=1}, C{LISTEN_FDNAMES} and C{LISTEN_PID} set to its own pid
    (what systemd does; Twisted ignores the descriptors without
    C{LISTEN_FDNAMES}, which systemd has set since version 227) serves on it.
    """

    def setUp(self):
        if not _ipv6_loopback():
            raise unittest.SkipTest("no IPv6 loopback to bind the passed socket to")

    def test_serves_on_the_passed_socket(self):
        """
        The proxy answers on the passed socket (a connection that was not
        redirected gets its 503 no healthy upstream), logs where it listens,
        and a SIGTERM drains and exits 0.
        """
        listening = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.addCleanup(listening.close)
        listening.bind(("::1", 0))
        listening.listen(16)
        port = listening.getsockname()[1]
        fd = listening.fileno()
        env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1", LISTEN_FDS="1", LISTEN_FDNAMES="origdst.socket")
        # A small launcher moves the socket to fd 3 and sets LISTEN_PID to
        # its own pid, which exec keeps for twistd.  (Not sh: dash cannot
        # name a descriptor above 9, and the socket's number varies.)
        argv = [sys.executable, "-c", _LAUNCHER, str(fd), sys.executable, "-c", TWISTD, "-n", "--pidfile=",
                "--logfile=-", "origdst", "--port", SYSTEMD_PORT, "--admin", "none"]
        log = tempfile.TemporaryFile()
        self.addCleanup(log.close)
        proc = subprocess.Popen(argv, env=env, pass_fds=(fd,), stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        # Only the child listens from now on.
        listening.close()

        def output():
            log.seek(0)
            return log.read().decode("utf-8", "replace")

        deadline = time.monotonic() + 20
        while "origdst listening on " + SYSTEMD_PORT not in output():
            if proc.poll() is not None or time.monotonic() > deadline:
                self.fail("twistd did not serve on the passed socket:\n" + output())
            time.sleep(0.05)
        with socket.create_connection(("::1", port), timeout=10) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
            answer = b""
            while True:
                data = client.recv(4096)
                if not data:
                    break
                answer += data
        self.assertTrue(answer.startswith(b"HTTP/1.1 503 "), answer)
        self.assertIn(b"no healthy upstream", answer)
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(20), 0, output())
        self.assertIn("Draining:", output())


def _unit(name):
    with open(os.path.join(CONF, name)) as f:
        return f.read()


class UnitTests(unittest.TestCase):
    def test_service_takes_the_socket(self):
        """
        origdst.service needs origdst.socket and listens on what it passes;
        the socket is dual-stack, as domain=INET6 and the IPv6 rule need, and
        its port is the one the iptables line redirects to.
        """
        service, sock = _unit("origdst.service"), _unit("origdst.socket")
        self.assertIn("\nRequires=origdst.socket\n", service)
        [start] = re.findall(r"(?m)^ExecStart=(.*)$", service)
        self.assertIn("--port " + SYSTEMD_PORT, start)
        self.assertIn("\nBindIPv6Only=both\n", sock)
        [listen] = re.findall(r"(?m)^ListenStream=(\d+)$", sock)
        [up] = re.findall(r"(?m)^ExecStartPre=.* up --port (\d+) ", service)
        self.assertEqual(listen, up)
        # Stopping waits longer than the drain.
        [stop] = re.findall(r"(?m)^TimeoutStopSec=(\d+)$", service)
        self.assertGreater(int(stop), 25 + 5)

    def test_systemd_analyze_verify(self):
        """
        systemd-analyze verify finds nothing wrong with the two units (with
        the installed programs' paths replaced by one that exists).
        """
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise unittest.SkipTest("systemd-analyze is not installed")
        directory = tempfile.mkdtemp(prefix="od-units-")
        self.addCleanup(shutil.rmtree, directory)
        true = shutil.which("true")
        for name in ("origdst.service", "origdst.socket"):
            text = _unit(name)
            text = text.replace("/opt/origdst/bin/twistd", true).replace("/usr/local/sbin/origdst-iptables", true)
            with open(os.path.join(directory, name), "w") as f:
                f.write(text)
        result = subprocess.run(
            [analyze, "verify", os.path.join(directory, "origdst.socket"), os.path.join(directory, "origdst.service")],
            capture_output=True, text=True, timeout=60,
        )
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))
