"""
The listening TCP sockets of this network namespace, and who holds them.

C{/proc/net/tcp} and C{tcp6} list the sockets of the reader's network
namespace (so the doctor run with C{ip netns exec} sees that namespace's);
the processes holding a socket are found through C{/proc/<pid>/fd}. Whether
an IPv6 socket also takes IPv4 (dual-stack) is not in C{/proc}: C{ss -e}
says it (C{v6only:0}), and without C{ss} the system default
(C{net.ipv6.bindv6only}) is assumed.
"""

import ipaddress
import os
import re
import shutil
import socket
import subprocess

_LISTEN = "0A"


class Listener:
    """
    One listening socket.

    @ivar family: C{4} or C{6}.
    @ivar ip: the address it is bound to (C{0.0.0.0}, C{::}, C{127.0.0.1}).
    @ivar port: its port.
    @ivar inode: its inode, which names it in C{/proc/<pid>/fd}.
    @ivar uid: the uid of the socket (whoever created it).
    @ivar dual: for IPv6, whether it takes IPv4 connections too.
    @ivar holders: C{(pid, uid, command)} of each process holding it.
    """

    def __init__(self, family, ip, port, inode, uid):
        self.family = family
        self.ip = ip
        self.port = port
        self.inode = inode
        self.uid = uid
        self.dual = False
        self.holders = []

    def wildcard(self):
        return ipaddress.ip_address(self.ip).is_unspecified

    def loopback(self):
        return ipaddress.ip_address(self.ip).is_loopback

    def takes(self, family):
        """
        @return: whether a connection of C{family} (4 or 6) can reach this
            socket at all.
        """
        if family == self.family:
            return True
        return family == 4 and self.dual

    def name(self):
        """
        @return: the address as people write it, C{*:4999} for a dual-stack one.
        """
        if self.family == 6 and self.dual and self.wildcard():
            return f"*:{self.port}"
        return f"[{self.ip}]:{self.port}" if self.family == 6 else f"{self.ip}:{self.port}"

    def __repr__(self):
        return f"<Listener {self.name()}>"


def _address(family, text):
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, bytes.fromhex(text)[::-1])
    # Four 32-bit words, each in host (little-endian) order.
    raw = b"".join(bytes.fromhex(text[i:i + 8])[::-1] for i in range(0, 32, 8))
    return socket.inet_ntop(socket.AF_INET6, raw)


def parse_proc(family, text):
    """
    @param text: the content of C{/proc/net/tcp} (C{family} 4) or C{tcp6}.
    @return: the L{Listener}s it lists.
    """
    out = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _LISTEN:
            continue
        ip, _, port = fields[1].partition(":")
        out.append(Listener(family, _address(family, ip), int(port, 16), int(fields[9]), int(fields[7])))
    return out


def parse_ss(text):
    """
    @param text: the output of C{ss -Hltne}.
    @return: C{{inode: dual}} for the IPv6 sockets it names.
    """
    out = {}
    for line in text.splitlines():
        inode = re.search(r"\bino:(\d+)", line)
        v6only = re.search(r"\bv6only:([01])", line)
        if inode and v6only:
            out[int(inode.group(1))] = v6only.group(1) == "0"
    return out


def _holders():
    """
    @return: C{{inode: [(pid, uid, command), ...]}} for every socket some
        process here holds (those we may read: all of them, as root).
    """
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            with open(f"/proc/{pid}/status") as f:
                uid = int(next(line for line in f if line.startswith("Uid:")).split()[2])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except (OSError, StopIteration, ValueError):
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                holders = out.setdefault(int(link[8:-1]), [])
                if not any(h[0] == pid for h in holders):
                    holders.append((pid, uid, command))
    return out


def _bindv6only():
    try:
        with open("/proc/sys/net/ipv6/bindv6only") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def listeners():
    """
    @return: every listening TCP socket of this network namespace, with
        L{Listener.dual} and L{Listener.holders} filled in.
    """
    found = []
    for family, path in ((4, "/proc/net/tcp"), (6, "/proc/net/tcp6")):
        try:
            with open(path) as f:
                found += parse_proc(family, f.read())
        except OSError:
            continue
    dual = {}
    if shutil.which("ss"):
        try:
            proc = subprocess.run(["ss", "-Hltne"], capture_output=True, text=True, timeout=10)
            dual = parse_ss(proc.stdout)
        except (OSError, subprocess.SubprocessError):
            pass
    default = not _bindv6only()
    holders = _holders()
    for listener in found:
        if listener.family == 6:
            listener.dual = listener.wildcard() and dual.get(listener.inode, default)
        listener.holders = holders.get(listener.inode, [])
    return found


def proxy_uid(listener):
    """
    The uid the process behind C{listener} runs as, which makes the upstream
    connections: not the socket's, which twistd may have made as root before
    switching to C{--uid}. A socket that systemd passed is held by systemd
    (pid 1) too, so that holder counts last.

    @return: C{(uid, what)}, C{what} naming the process for messages.
    """
    holders = sorted(listener.holders, key=lambda h: (h[0] == 1, "origdst" not in h[2], h[0]))
    if not holders:
        return listener.uid, f"the socket's owner, uid {listener.uid}"
    pid, uid, command = holders[0]
    program = "origdst" if "origdst" in command else os.path.basename(command.split(" ", 1)[0]) or "?"
    return uid, f"{program} (pid {pid}, uid {uid})"
