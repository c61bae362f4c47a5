"""
A headless Chromium driven over the DevTools protocol, for testing the admin page.

Chromium is started with C{--remote-debugging-pipe}: it reads protocol messages from its file
descriptor 3 and writes its answers to descriptor 4, each a JSON text ended by a NUL byte.  A
pipe needs no extra package (no websocket client, no chromedriver matching the browser's
version), opens no debugging port that other processes could reach, and goes wherever the
process goes, also into a network namespace through C{ip netns exec}.

Only what the tests need: open a page in a new tab, evaluate JavaScript in it, take a
screenshot, close.
"""

import base64
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--no-first-run",
    "--no-default-browser-check",
    "--mute-audio",
    "--remote-debugging-pipe",
]


class BrowserError(Exception):
    """
    Chromium did not start, answered an error, or did not answer in time.
    """


def find_chromium():
    """
    @return: the path of Debian's C{chromium} (or a C{chromium-browser}), or C{None}.
    """
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _high(fd):
    """
    Move C{fd} to a descriptor above 9 (close-on-exec), so that placing the pipe ends on 3
    and 4 in the child cannot overwrite one with the other.
    """
    # Not F_DUPFD_CLOEXEC: PyPy 3.9's fcntl does not have it.
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.set_inheritable(moved, False)
    os.close(fd)
    return moved


def _exited_unreaped(pid):
    """
    @return: whether child C{pid} has exited (a zombie not yet reaped).
    @raise ChildProcessError: when it is not a child any more.
    """
    if hasattr(os, "waitid"):
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    # PyPy 3.9 has no os.waitid: the kernel's process state says the same.
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except FileNotFoundError:
        raise ChildProcessError(pid)
    return stat[stat.rindex(")") + 2] in "ZX"


class Browser:
    """
    One Chromium process and its protocol pipe.

    @ivar log_path: where Chromium's own output goes.
    """

    def __init__(self, prefix, workdir, chromium=None, flags=()):
        """
        @param prefix: the command Chromium runs under, such as C{["ip", "netns", "exec", ns]}.
        @param workdir: a directory for the profile and the log.
        @param flags: more command-line flags, such as C{--host-resolver-rules=MAP a 127.0.0.1}
            (a name that resolves to loopback, as after DNS rebinding).
        """
        chromium = chromium or find_chromium()
        if chromium is None:
            raise BrowserError("chromium is not installed")
        self.profile = tempfile.mkdtemp(prefix="chromium-", dir=workdir)
        self.log_path = os.path.join(workdir, "chromium.log")
        to_browser_r, to_browser_w = (_high(fd) for fd in os.pipe())
        from_browser_r, from_browser_w = (_high(fd) for fd in os.pipe())

        def place_pipe():
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        argv = list(prefix) + [chromium] + FLAGS + list(flags) + ["--user-data-dir=" + self.profile, "about:blank"]
        self._log = open(self.log_path, "ab")
        try:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                close_fds=False,
                preexec_fn=place_pipe,
                start_new_session=True,
            )
        finally:
            os.close(to_browser_r)
            os.close(from_browser_w)
        self._out = to_browser_w
        self._in = from_browser_r
        self._buf = b""
        self._ids = 0
        self._events = []

    # -- the protocol --------------------------------------------------------------------

    def _send(self, message):
        data = json.dumps(message).encode("utf-8") + b"\0"
        while data:
            try:
                written = os.write(self._out, data)
            except BrokenPipeError:
                raise BrowserError("chromium went away:\n%s" % self.log_tail())
            data = data[written:]

    def _receive(self, deadline):
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("no answer from chromium in time:\n%s" % self.log_tail())
            ready, _, _ = select.select([self._in], [], [], left)
            if ready:
                chunk = os.read(self._in, 65536)
                if not chunk:
                    raise BrowserError("chromium closed its pipe:\n%s" % self.log_tail())
                self._buf += chunk
        message, _, self._buf = self._buf.partition(b"\0")
        return json.loads(message)

    def call(self, method, params=None, session=None, timeout=15):
        """
        Send one command and wait for its answer; events that arrive meanwhile are kept.

        @return: the command's C{result}.
        @raise BrowserError: for an error answer or none in time.
        """
        self._ids += 1
        message = {"id": self._ids, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._send(message)
        deadline = time.monotonic() + timeout
        while True:
            answer = self._receive(deadline)
            if answer.get("id") != self._ids:
                self._events.append(answer)
                del self._events[:-100]
                continue
            if "error" in answer:
                raise BrowserError("%s: %s" % (method, answer["error"]))
            return answer.get("result", {})

    # -- pages ---------------------------------------------------------------------------

    def open(self, url):
        """
        Open C{url} in a new tab.

        @return: the protocol session of the tab, for L{evaluate}.
        """
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable", session=session)
        self.call("Runtime.enable", session=session)
        navigated = self.call("Page.navigate", {"url": url}, session=session)
        if navigated.get("errorText"):
            raise BrowserError("cannot open %s: %s" % (url, navigated["errorText"]))
        return session

    def evaluate(self, session, expression):
        """
        Evaluate a JavaScript expression in the tab.

        @return: its value, as JSON brings it back.
        """
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=session,
        )
        if "exceptionDetails" in result:
            raise BrowserError("%s: %s" % (expression, result["exceptionDetails"]))
        return result["result"].get("value")

    def wait_for(self, session, expression, timeout, what="condition"):
        """
        Evaluate C{expression} until it is true, for at most C{timeout} seconds; while the
        page is still loading it may throw, which counts as false.

        @return: its last value.
        """
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(session, expression)
            except BrowserError as e:
                if not self.running():
                    raise
                value = e
            else:
                if value:
                    return value
            time.sleep(0.2)
        raise BrowserError("timed out after %ss waiting for %s; last value %r" % (timeout, what, value))

    def screenshot(self, session, path):
        """
        Save a PNG of the tab to C{path}.
        """
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": 1200, "height": 700, "deviceScaleFactor": 1, "mobile": False},
                  session=session)
        data = self.call("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    # -- ending ----------------------------------------------------------------------------

    def log_tail(self, lines=20):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def running(self):
        return self.popen.poll() is None

    def stop(self, timeout=5):
        """
        Ask Chromium to close, then kill what is left of its process group (the browser and
        the helper processes it started).  The group is signalled only while its leader is
        not yet reaped, so its id cannot belong to anyone else.  Safe to call more than once.
        """
        if self.popen.returncode is None:
            try:
                self._send({"id": self._ids + 1, "method": "Browser.close", "params": {}})
            except (BrowserError, OSError):
                pass
            self._wait_unreaped(timeout)
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(timeout)
        for fd in (self._out, self._in):
            if fd >= 0:
                os.close(fd)
        self._out = self._in = -1
        if not self._log.closed:
            self._log.close()
        shutil.rmtree(self.profile, ignore_errors=True)
        return self.popen.returncode

    def _wait_unreaped(self, timeout):
        """
        Wait until the browser process has exited, without reaping it.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if _exited_unreaped(self.popen.pid):
                    return
            except ChildProcessError:
                return
            time.sleep(0.05)
