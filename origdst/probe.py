"""
The doctor's test connection: from an unprivileged uid, to a destination
the doctor sets up itself, or to one the user names.

The destination is a network namespace of its own (C{origdst-doctor-<pid>}),
joined to the current one by a veth pair on a free C{10.250.N.0/30} (and
C{fd00:250:N::/64}); a small HTTP server inside answers with the request
head it received. A connection that went through the proxy arrives with the
proxy's headers (C{x-forwarded-proto}, C{x-request-id}); one that went
around it arrives without. Removing the namespace removes the veth pair
with it; L{Destination.remove} runs on any way out, and the next run removes
what a run that was killed outright left behind.
"""

import ipaddress
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time

#: The unprivileged uid the test connection is made as (nobody).
CLIENT_UID = 65534
PREFIX = "origdst-doctor-"
_NAME = re.compile(r"^%s(\d+)$" % re.escape(PREFIX))

#: Runs as root inside the namespace, on the ports its arguments name: answers
#: every request with the head it received as JSON; says "ready" once it listens.
_SERVER = r"""
import json, socket, sys, threading
servers = []
for port in sys.argv[1:]:
    server = socket.socket(socket.AF_INET6)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    server.bind(("::", int(port)))
    server.listen(16)
    servers.append(server)
print("ready", flush=True)
def serve(conn):
    conn.settimeout(10)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        lines = data.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = json.dumps({"origdst-doctor": lines[0], "headers": headers}).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (len(body), body))
    except OSError:
        pass
    finally:
        conn.close()
def accept(server):
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
for server in servers[1:]:
    threading.Thread(target=accept, args=(server,), daemon=True).start()
accept(servers[0])
"""


class ProbeError(Exception):
    """
    The test destination could not be set up.
    """


def _run(argv):
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ProbeError("%s: %s" % (" ".join(argv), e))
    if proc.returncode != 0:
        raise ProbeError("%s: %s" % (" ".join(argv), (proc.stderr or proc.stdout).strip()))
    return proc.stdout


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _quiet(argv):
    """
    Run a clean-up command; what it says does not matter.

    @return: its output, C{""} if it could not run.
    """
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def namespaces():
    out = _quiet(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _veth(pid):
    """
    @return: the names of the veth pair of the doctor run C{pid}: this
        namespace's end, the test namespace's end.
    """
    return f"oddoc{pid}h", f"oddoc{pid}n"


def remove_stale():
    """
    Remove the namespaces and veths of doctor runs whose process is gone.
    """
    for name in namespaces():
        match = _NAME.match(name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            _quiet(["ip", "netns", "del", name])
    links = _quiet(["ip", "-o", "link", "show"])
    for pid in re.findall(r"^\d+: oddoc(\d+)h[@:]", links, re.M):
        if int(pid) != os.getpid() and not _pid_alive(int(pid)):
            _quiet(["ip", "link", "del", _veth(pid)[0]])


def _free_subnet():
    """
    @return: N such that 10.250.N.0/24 is used by no address or route here.
    """
    used = _run(["ip", "-o", "addr", "show"]) + _run(["ip", "route", "show", "table", "all"])
    start = 128 + os.getpid() % 120
    for step in range(120):
        n = 128 + (start - 128 + step) % 120
        if f"10.250.{n}." not in used:
            return n
    raise ProbeError("no free 10.250.N.0/24 subnet for the test destination")


class Destination:
    """
    The namespace with the test server; L{start} builds it, L{remove} takes
    it all away again (and is safe to call twice).
    """

    def __init__(self, ports, python=None):
        """
        @param ports: the ports the test server listens on.
        """
        self.ports = sorted(set(ports))
        self.python = python or sys.executable
        self.name = f"{PREFIX}{os.getpid()}"
        self.server = None
        self.v4 = self.v6 = None
        self._built = False

    def start(self, v6=False):
        remove_stale()
        n = _free_subnet()
        host, peer = _veth(os.getpid())
        self._built = True
        _run(["ip", "netns", "add", self.name])
        _run(["ip", "link", "add", host, "type", "veth", "peer", "name", peer, "netns", self.name])
        inside = ["ip", "-n", self.name]
        _run(["ip", "addr", "add", f"10.250.{n}.1/30", "dev", host])
        _run(inside + ["addr", "add", f"10.250.{n}.2/30", "dev", peer])
        self.v4 = f"10.250.{n}.2"
        if v6:
            _quiet(["ip", "netns", "exec", self.name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0"])
            _run(["ip", "-6", "addr", "add", f"fd00:250:{n}::1/64", "dev", host, "nodad"])
            _run(inside + ["-6", "addr", "add", f"fd00:250:{n}::2/64", "dev", peer, "nodad"])
            self.v6 = f"fd00:250:{n}::2"
        for argv in (inside + ["link", "set", "lo", "up"], inside + ["link", "set", peer, "up"],
                     ["ip", "link", "set", host, "up"]):
            _run(argv)
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.name, self.python, "-c", _SERVER] + [str(p) for p in self.ports],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        ready, _, _ = select.select([self.server.stdout], [], [], 15)
        if not ready or self.server.stdout.readline().strip() != b"ready":
            raise ProbeError("the test server did not start: %s" % self._server_error())

    def _server_error(self):
        if self.server.poll() is None:
            return "no answer in 15 s"
        return self.server.stderr.read().decode("utf-8", "replace").strip()[-300:]

    def remove(self):
        if self.server is not None and self.server.poll() is None:
            try:
                os.killpg(self.server.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.server.wait(10)
        if self._built:
            # Deleting one end deletes the pair; deleting the namespace alone
            # has left this end behind (the kernel frees a namespace lazily).
            _quiet(["ip", "link", "del", _veth(os.getpid())[0]])
            if self.name in namespaces():
                _quiet(["ip", "netns", "del", self.name])
        self._built = False


def connect(ip, port, uid=CLIENT_UID, timeout=5.0):
    """
    Make one HTTP request to C{ip:port} from a child process running as
    C{uid} (the nat rule's owner match sees that uid).

    @return: a dict: C{error} (a text) or C{status}, C{headers} (lower-case
        names) and C{body}.
    """
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    host = f"[{ip}]" if family == socket.AF_INET6 else ip
    request = (f"GET /origdst-doctor HTTP/1.1\r\nHost: {host}:{port}\r\n"
               f"User-Agent: origdst-doctor\r\nConnection: close\r\n\r\n").encode()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to uid, connect, report, exit
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            result = _request(family, ip, port, request, timeout)
        except BaseException as e:
            result = {"error": "%s" % (e,)}
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    data = b""
    try:
        deadline = time.monotonic() + timeout + 5
        while time.monotonic() < deadline:
            ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(read_end)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError:
        return {"error": "no answer within %g s" % (timeout,)}


def _request(family, ip, port, request, timeout):
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((ip, port))
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        return {"error": "no answer within %g s" % (timeout,)}
    except OSError as e:
        return {"error": e.strerror or str(e)}
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/"):
        return {"error": "not an HTTP answer: %r" % (data[:60],)}
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return {"status": lines[0], "headers": headers, "body": body.decode("utf-8", "replace")}


def admin_hosts(ip, port, timeout=5.0):
    """
    @return: C{{"ip:port": rq_total}} from the admin's C{/clusters}, or
        L{None} when it cannot be read.
    """
    import urllib.request

    host = f"[{ip}]" if ":" in ip else ip
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/clusters?format=json", timeout=timeout) as response:
            clusters = json.loads(response.read().decode("utf-8"))
    except (OSError, ValueError):
        return None
    out = {}
    for cluster in clusters.get("cluster_statuses", []):
        for status in cluster.get("host_statuses", []):
            totals = [s.get("value", 0) for s in status.get("stats", []) if s.get("name") == "rq_total"]
            out[status.get("key", "")] = totals[0] if totals else 0
    return out


def key(ip, port):
    """
    @return: the cluster's name for a host, C{10.0.0.5:80}, C{[fd00::5]:80}.
    """
    address = ipaddress.ip_address(ip)
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
