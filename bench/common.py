"""
What every part of the benchmark shares: where things are, the fixed ports and body, the error
type, logging and bounded commands.
"""

import os
import subprocess
import sys
import time

import testbed

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TEMPLATES = os.path.join(HERE, "templates")

SERVER = testbed.SERVER_V4
REDIRECTED_PORT = 80
DIRECT_PORT = 8080
ORIGDST_PORT = 15001
ENVOY_PORT = 15002
#: The TCP relay phase's raw byte source in S (bench/tcpsource.py): redirected, and direct.
TCP_PORT = 9000
TCP_DIRECT_PORT = 9001
#: The TLS phase's nginx server in S: redirected, and direct.
TLS_PORT = 443
TLS_DIRECT_PORT = 8443
#: The server name the TLS clients send and verify (the throwaway certificate's).
TLS_NAME = "bench.origdst.test"
BODY = b"hello, world\n"  # 13 bytes, as in the reference runs
BIG_NAME = "big.bin"
CLIENT_UID = testbed.CLIENT_UID
LOCK_PATH = "/tmp/origdst-bench.lock"
PYPY_VENV = os.path.join(HERE, ".venv-pypy")

ALL_PHASES = ("keepalive", "close", "rate", "bulk", "idle", "tcp", "tls")

#: Every process this run started and has not stopped yet, for the cleanup
#: paths (finally, atexit, SIGTERM/SIGHUP).
live = []


class BenchError(Exception):
    pass


_STARTED = time.monotonic()


def log(message):
    """
    A progress line, with the time since the run started.
    """
    elapsed = int(time.monotonic() - _STARTED)
    sys.stderr.write("== [%2d:%02d] %s\n" % (elapsed // 60, elapsed % 60, message))
    sys.stderr.flush()


def run(argv, timeout=60, check=True, **kwargs):
    """
    Run a short command, bounded in time.

    @raise BenchError: if C{check} and it exits non-zero.
    """
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise BenchError("%s failed (%d): %s" % (
            " ".join(argv), proc.returncode, (proc.stderr or proc.stdout).strip()[-800:]))
    return proc


def num(x):
    return ("%g" % x)
