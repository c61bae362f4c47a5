"""
The deployment files (conf/kubernetes/, the systemd units) against the
Kubernetes API schemas and against origdst's real options.

The schemas are those that kubernetes-validate ships (the test extra, pinned
in pyproject.toml): the check runs offline.
"""

import glob
import os
import re
import shlex
import subprocess
import sys

from twisted.trial import unittest

from origdst import config
from testbed import TWISTD

try:
    import kubernetes_validate
    import yaml
except ImportError:  # pragma: no cover - depends on the environment
    kubernetes_validate = yaml = None

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CONF = os.path.join(REPO, "conf")
MANIFESTS = sorted(glob.glob(os.path.join(CONF, "kubernetes", "*.yaml")))
#: The Kubernetes version the manifests are checked against (kubernetes-validate's newest).
KUBERNETES = "1.37.0"
#: The uid the image runs origdst as (conf/Containerfile).
PROXY_UID = "1337"


def _needs_validator():
    if kubernetes_validate is None:
        raise unittest.SkipTest(
            "kubernetes-validate is not installed (pip install -e '.[test]' installs it)"
        )


def documents():
    """
    @return: C{(path, document)} for every YAML document of the manifests.
    """
    for path in MANIFESTS:
        with open(path) as f:
            for document in yaml.safe_load_all(f):
                if document is not None:
                    yield os.path.basename(path), document


def pod_specs():
    for name, document in documents():
        spec = document.get("spec", {})
        if "template" in spec:
            yield name, spec["template"]["spec"]


def containers(spec):
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def origdst_arguments(container):
    """
    @return: the origdst options of a container that runs C{twistd ...
        origdst ...}, or C{None} for another container.
    """
    argv = list(container.get("command", [])) + list(container.get("args", []))
    if not argv or os.path.basename(argv[0]) != "twistd" or "origdst" not in argv:
        return None
    return argv[argv.index("origdst") + 1 :]


def option_names(argv):
    return [arg[2:].partition("=")[0] for arg in argv if arg.startswith("--")]


_help_cache = []


def help_options():
    """
    @return: the long option names C{twistd origdst --help} lists.
    """
    if not _help_cache:
        out = subprocess.run(
            [sys.executable, "-c", TWISTD, "origdst", "--help"],
            env=dict(os.environ, PYTHONPATH=REPO),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        _help_cache.append(set(re.findall(r"--([a-z][a-z0-9-]*)", out)))
    return _help_cache[0]


class ManifestTests(unittest.TestCase):
    def setUp(self):
        _needs_validator()

    def test_there_are_manifests(self):
        """
        The DaemonSet, the sidecar, the ConfigMap and the Namespace are there.
        """
        kinds = sorted(document["kind"] for _, document in documents())
        self.assertEqual(kinds, ["ConfigMap", "DaemonSet", "Deployment", "Namespace"])

    def test_schemas(self):
        """
        Every document is valid against the Kubernetes API schema of its
        kind, strictly (no field the API does not know).
        """
        for name, document in documents():
            try:
                kubernetes_validate.validate(document, KUBERNETES, strict=True)
            except kubernetes_validate.ValidationError as e:
                self.fail(f"{name}: {document['kind']}: {e}")

    def test_validator_catches_a_typo(self):
        """
        The validator is not a formality: a misspelt probe field fails.
        """
        _, document = next((n, d) for n, d in documents() if d["kind"] == "DaemonSet")
        document["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["prot"] = 9901
        self.assertRaises(
            kubernetes_validate.ValidationError, kubernetes_validate.validate, document, KUBERNETES, True
        )

    def test_options_exist(self):
        """
        Every origdst option a manifest passes, and every key of the
        ConfigMap's origdst.conf, is one that twistd origdst --help lists.
        """
        known = help_options()
        used = []
        for name, spec in pod_specs():
            for container in containers(spec):
                argv = origdst_arguments(container)
                if argv is not None:
                    used += [(name, option) for option in option_names(argv)]
        self.assertIn(("daemonset.yaml", "admin-allow-remote"), used)
        for name, document in documents():
            if document["kind"] == "ConfigMap":
                text = document["data"]["origdst.conf"]
                keys = re.findall(r"(?m)^([a-z][a-z0-9-]*)\s*=", text)
                self.assertTrue(keys)
                used += [(name, key) for key in keys]
        self.assertEqual([(name, option) for name, option in used if option not in known], [])

    def test_config_map_parses(self):
        """
        The ConfigMap's origdst.conf is a config file origdst reads.
        """
        [text] = [d["data"]["origdst.conf"] for _, d in documents() if d["kind"] == "ConfigMap"]
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        values = config.read_file(path)
        self.assertEqual(values["port"], "tcp6:4999")
        self.assertLess(values["drain-timeout"], 40)

    def test_rules_and_probes(self):
        """
        Each pod installs the REDIRECT rule to the port origdst listens on
        with the owner match for the uid origdst runs as, gives the drain
        time to end, and probes /ready on the admin port.
        """
        for name, spec in pod_specs():
            rules = [c for c in containers(spec) if c.get("command", [""])[0].endswith("iptables.sh")]
            [up] = [c["command"] for c in rules if "up" in c["command"]]
            self.assertEqual(up[up.index("--port") + 1], "4999", name)
            self.assertEqual(up[up.index("--uid") + 1], PROXY_UID, name)
            [proxy] = [c for c in containers(spec) if origdst_arguments(c) is not None]
            self.assertEqual(str(proxy["securityContext"]["runAsUser"]), PROXY_UID, name)
            self.assertGreater(spec["terminationGracePeriodSeconds"], 25, name)
            for probe in ("readinessProbe", "livenessProbe"):
                self.assertEqual(proxy[probe]["httpGet"]["path"], "/ready", name)
                self.assertEqual(proxy[probe]["httpGet"]["port"], 9901, name)
        [daemonset] = [spec for name, spec in pod_specs() if name == "daemonset.yaml"]
        self.assertTrue(daemonset["hostNetwork"])
        # Fail closed: nothing removes the rules when the pod ends, so no
        # connection reaches its destination around a draining proxy.
        stops = [c for c in containers(daemonset) if "preStop" in c.get("lifecycle", {})]
        self.assertEqual(stops, [])


class UnitOptionTests(unittest.TestCase):
    def test_units_use_real_options(self):
        """
        Every origdst option the systemd unit's ExecStart passes exists.
        """
        with open(os.path.join(CONF, "origdst.service")) as f:
            [start] = re.findall(r"(?m)^ExecStart=(.*)$", f.read())
        argv = shlex.split(start)
        used = option_names(argv[argv.index("origdst") + 1 :])
        self.assertIn("port", used)
        self.assertEqual([option for option in used if option not in help_options()], [])
