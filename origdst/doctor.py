"""
C{python -m origdst.doctor} (also C{origdst-doctor}): checks a running
set-up and says, one line each, what is wrong and the command that fixes it.

It reads the nat and filter rules (C{iptables-save}, C{ip6tables-save}) and
the listening sockets of the network namespace it runs in, checks that
conntrack is loaded, makes a test connection from an unprivileged uid and
looks at the admin port. Exit status 0 when all is well, 1 when something
is not, 2 for a usage error. Run it as root where the proxy runs (in a
network namespace: C{ip netns exec NAME python -m origdst.doctor}).

The proxy's port and admin port come from C{--port}, C{--admin} and
C{--config} as for the proxy itself (L{origdst.config}), with the same
defaults.
"""

import ipaddress
import os
import pwd
import re
import signal
import subprocess
import sys

from twisted.python import usage

from origdst import __version__, checks, config, listening, netfilter, workers

#: The help's description: the module docstring's second paragraph.
_LONGDESC = re.sub(r"C\{([^}]*)\}", r"\1", __doc__.strip().split("\n\n")[1])
_SAVE = {4: "iptables-save", 6: "ip6tables-save"}


def _port_number(option, description):
    """
    @return: the TCP port of an endpoint description (C{tcp6:4999}, C{4999}).
    @raise usage.UsageError: naming C{option} for one without a port number.
    """
    try:
        return workers.parse_tcp(description)[2]
    except workers.UnsupportedEndpoint:
        raise usage.UsageError(
            f"--{option}: {description!r} names no TCP port; give the doctor the port number, "
            f"e.g. --{option} {4999 if option == 'port' else 9901}")


def _uid(value):
    if value.isdigit():
        return int(value)
    try:
        return pwd.getpwnam(value).pw_uid
    except KeyError:
        raise usage.UsageError(f"--uid: no such user {value!r}")


def _probe(value):
    if value.lower() == "none":
        return "none"
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = str(ipaddress.ip_address(host))
        number = int(port)
        if not sep or not 0 < number < 65536:
            raise ValueError(value)
    except ValueError:
        raise usage.UsageError(f"--probe: not ADDR:PORT (an IP address and a port) or none: {value!r}")
    return ip, number


class Options(usage.Options):
    """
    The doctor's options: where the proxy should be, and what to test with.
    """

    synopsis = "Usage: python -m origdst.doctor [options]"
    longdesc = _LONGDESC
    optParameters = [
        ["config", "c", None, "The proxy's config file (its port and admin settings are read)."],
        ["port", None, None, f"The proxy's --port [default: from --config, else {config.default('port')}]."],
        ["admin", None, None, f"The proxy's --admin, or none [default: from --config, else "
                              f"{config.default('admin')}]."],
        ["uid", None, None, "The uid (or user) the proxy runs as [default: the listening process's]."],
        ["probe", None, None, "Test with a connection to ADDR:PORT instead of the doctor's own "
                              "destination, or none for no test connection."],
    ]

    def opt_version(self):
        """
        Display origdst's version and exit.
        """
        print(f"origdst-doctor {__version__}")
        sys.exit(0)

    def postOptions(self):
        values = {}
        try:
            if self["config"] is not None:
                values.update(config.read_file(self["config"]))
            for option in ("port", "admin"):
                if self[option] is not None:
                    values[option] = config.parse(option, self[option])
        except config.ConfigError as e:
            raise usage.UsageError(str(e) if str(e).startswith("config") else f"--{e}")
        settings = config.build({k: v for k, v in values.items() if k in config.OPTIONS})
        self.settings = settings
        self.port = _port_number("port", settings.port)
        self.admin = None if settings.admin == "none" else _port_number("admin", settings.admin)
        self.uid = None if self["uid"] is None else _uid(self["uid"])
        self.probe = None if self["probe"] is None else _probe(self["probe"])


def _save(family, table):
    """
    @return: the parsed tables of C{iptables-save -t table}, or the error as text.
    """
    argv = [_SAVE[family], "-t", table]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except OSError as e:
        return f"{argv[0]}: {e.strerror}"
    except subprocess.TimeoutExpired:
        return f"{argv[0]} did not finish in 20 s"
    if proc.returncode != 0:
        return f"{argv[0]}: {(proc.stderr or proc.stdout).strip() or 'exit status %d' % proc.returncode}"
    return netfilter.parse(proc.stdout)


def conntrack_loaded():
    """
    @return: whether nf_conntrack is there (a module, or built in: its
        sysctls exist then).
    """
    if os.path.exists("/proc/sys/net/netfilter/nf_conntrack_max") or os.path.isdir("/sys/module/nf_conntrack"):
        return True
    try:
        with open("/proc/modules") as f:
            return any(line.split()[0] == "nf_conntrack" for line in f if line.strip())
    except OSError:
        return False


def gather(options):
    """
    @return: the L{checks.Facts} of this host (network namespace) and C{options}.
    """
    facts = checks.Facts(
        port=options.port,
        admin=options.admin,
        probe=options.probe,
        prefix=options.settings.header_prefix,
        listeners=listening.listeners(),
        conntrack=conntrack_loaded(),
    )
    for family in (4, 6):
        facts.nat[family] = _save(family, "nat")
        facts.filter[family] = _save(family, "filter")
    proxy = facts.on(options.port)
    if proxy:
        uid, facts.who = listening.proxy_uid(proxy[0])
    else:
        uid, facts.who = None, "nothing"
    facts.uid = uid if options.uid is None else options.uid
    return facts


class Interrupted(Exception):
    """
    SIGTERM, turned into an exception so that what the doctor set up is
    removed on the way out, as on Ctrl-C.
    """


def _on_sigterm(number, frame):
    raise Interrupted()


def main(argv=None, out=None):
    """
    @return: the exit status: 0 all is well, 1 a problem, 2 a usage error.
    """
    out = out or sys.stdout
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        sys.stderr.write(f"{options.synopsis}\norigdst-doctor: error: {e}\n")
        return 2
    if os.geteuid() != 0:
        out.write(f"{'note':<5} root: not root: the rules, the processes and the test connection need root "
                  "(sudo python -m origdst.doctor)\n")
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        findings = checks.run_all(gather(options))
    except (Interrupted, KeyboardInterrupt):
        sys.stderr.write("origdst-doctor: interrupted; what it set up is removed\n")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    for finding in findings:
        out.write(finding.line() + "\n")
    failed = [f for f in findings if f.status == checks.FAIL]
    out.write(f"{len(failed)} problem(s)\n" if failed else "all is well\n")
    out.flush()
    return 1 if failed else 0


def run():
    """
    The console script's entry point.
    """
    sys.exit(main())


__all__ = ["Options", "main"]

if __name__ == "__main__":
    run()
