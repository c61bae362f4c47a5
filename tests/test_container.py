"""
The container image (conf/Containerfile, built by conf/container-run.sh):
it builds, and origdst runs from its files as uid 1337 and proxies the
tutorial's request.

C{podman run} does not work on the machines this is built on (the sandbox
refuses the container's resource limits), so the image's files are used
through C{podman image mount}, chrooted in a test namespace. Skipped where
podman, mmdebstrap or the test bed is missing; the first run makes the base
image from Debian's archive (about a minute), later ones reuse it.
"""

import os
import shutil
import subprocess

import testbed
from testbed import ManagedProcess
from twisted.trial import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SCRIPT = os.path.join(REPO, "conf", "container-run.sh")
IMAGE = "localhost/origdst-test:%d" % os.getpid()
PROXY_PORT = 15051
PROXY_UID = 1337


def _missing():
    for tool in ("podman", "mmdebstrap", "chroot"):
        if shutil.which(tool) is None:
            return "%s is not installed (apt-get install podman mmdebstrap)" % tool
    return None


class ContainerImageTests(testbed.TopologyTestCase):
    tag = "ct"

    @classmethod
    def build(cls, topology):
        reason = _missing()
        if reason:
            raise unittest.SkipTest(reason)
        built = subprocess.run(
            [SCRIPT, "build"], env=dict(os.environ, IMAGE=IMAGE), capture_output=True, text=True, timeout=900
        )
        if built.returncode != 0:
            raise AssertionError("conf/container-run.sh build failed:\n" + (built.stdout + built.stderr)[-4000:])
        topology.track(_Image())
        cls.root = subprocess.run(
            ["podman", "image", "mount", IMAGE], capture_output=True, text=True, check=True
        ).stdout.strip()
        # The rule the script installs on a host, for the image's uid.
        topology.exec(topology.client, [
            "iptables", "-w", "5", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", testbed.SERVER_V4,
            "--dport", "80", "-m", "owner", "!", "--uid-owner", str(PROXY_UID),
            "-j", "REDIRECT", "--to-port", str(PROXY_PORT)])
        topology.start_backend(80)
        argv = [
            "ip", "netns", "exec", topology.client, "env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin",
            "PYTHONPATH=/opt/origdst", "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1",
            shutil.which("chroot"), "--userspec=%d:%d" % (PROXY_UID, PROXY_UID), cls.root,
        ] + cls.entrypoint() + ["--port", "tcp:%d" % PROXY_PORT, "--admin", "none", "--log-level", "debug"]
        cls.proxy = ManagedProcess("image-proxy", argv, os.path.join(topology.workdir, "image-proxy.log"))
        topology.track(cls.proxy)
        testbed.wait_for(
            lambda: cls.proxy.running() and topology.listening(topology.client, PROXY_PORT)
            or (not cls.proxy.running() and cls._died()),
            30, interval=0.1, what="the image's origdst listening",
        )

    @classmethod
    def _died(cls):
        with open(cls.proxy.log_path) as f:
            raise AssertionError("origdst from the image exited:\n" + f.read()[-3000:])

    @staticmethod
    def inspect(template):
        return subprocess.run(
            ["podman", "image", "inspect", "--format", template, IMAGE], capture_output=True, text=True, check=True
        ).stdout.strip()

    @classmethod
    def entrypoint(cls):
        import json

        return json.loads(cls.inspect("{{json .Config.Entrypoint}}"))

    def test_1_runs_as_its_own_uid(self):
        """
        The image runs twistd -n origdst as uid 1337, not root.
        """
        self.assertEqual(self.inspect("{{.Config.User}}"), "%d:%d" % (PROXY_UID, PROXY_UID))
        self.assertEqual(self.entrypoint()[0], "twistd")
        self.assertIn("origdst", self.entrypoint())
        pid = self.proxy.popen.pid
        with open("/proc/%d/status" % pid) as f:
            uids = [line.split()[1:] for line in f if line.startswith("Uid:")][0]
        self.assertEqual(set(uids), {str(PROXY_UID)})

    def test_2_proxies_the_tutorials_request(self):
        """
        A request redirected by the rule for the image's uid is answered by
        the destination through origdst from the image.
        """
        got = self.topology.run_client({
            "host": testbed.SERVER_V4, "port": 80, "requests": [{"path": "/echo"}]})
        [response] = got["responses"]
        self.assertEqual(response["status"], 200, got)
        self.assertIn(["server", "origdst"], [[n.lower(), v] for n, v in response["headers"]])
        with open(self.proxy.log_path) as f:
            self.assertIn("original destination %s:80" % testbed.SERVER_V4, f.read())

    def test_3_ships_the_rule_script(self):
        """
        conf/iptables.sh is in the image, executable, for the Kubernetes
        init containers.
        """
        path = os.path.join(self.root, "opt", "origdst", "conf", "iptables.sh")
        self.assertTrue(os.access(path, os.X_OK))


class _Image:
    """
    Unmounts and removes the test's image with the topology (the base image
    is kept for the next run).
    """

    def stop(self):
        subprocess.run(["podman", "image", "unmount", IMAGE], capture_output=True)
        subprocess.run(["podman", "rmi", "-f", IMAGE], capture_output=True)


def testSuite():
    return testbed.suite(ContainerImageTests)
