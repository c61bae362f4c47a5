"""
The TCP relay, TLS passthrough and protocol detection end to end, in the
test namespaces: an unprivileged client's connections go through the
iptables REDIRECT rule to origdst and on to servers made by the test
(tests/relayserver.py), among them a TLS server with a certificate from a
throwaway CA.
"""

import os
import sys
import time

import testbed
from testbed.certs import Authority

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT = os.path.join(HERE, "relayclient.py")
SERVER = os.path.join(HERE, "relayserver.py")
PROXY_PORT = 15010
TLS_PORT = 443
ECHO_PORT = 7000
TCP_PORT = 7001
BANNER_PORT = 2222
SOURCE_PORT = 2223
#: A download four times the proxy's memory budget while the client reads nothing.
SOURCE_SIZE = 128 * 1024 * 1024
RSS_BUDGET = 32 * 1024 * 1024
NAME = "backend.example.test"
DENIED = "denied.example.test"
# Several MiB each way.
SIZE = 8 * 1024 * 1024


def rss(pid):
    """
    @return: a process's resident memory in bytes.
    """
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ValueError("no VmRSS")


def make_certificates(directory):
    """
    A throwaway CA (L{testbed.certs.Authority}) and a certificate for
    L{NAME} (and L{DENIED}) signed by it, as PEM files in C{directory}.

    @return: the paths of the CA certificate, the server certificate and
        its key.
    """
    authority = Authority()
    cert, key = authority.issue(names=(NAME, DENIED))
    return [
        authority.write(os.path.join(directory, "ca.pem")),
        authority.write(os.path.join(directory, "server.pem"), cert),
        authority.write(os.path.join(directory, "server.key"), key),
    ]


class RelayTests(testbed.TopologyTestCase):
    """
    One proxy, a TLS server, an echo server and a server that speaks first.
    """

    tag = "r"

    @classmethod
    def build(cls, topology):
        ports = [TLS_PORT, ECHO_PORT, TCP_PORT, BANNER_PORT, SOURCE_PORT]
        topology.add_redirect(testbed.SERVER_V4, ports, PROXY_PORT)
        # The client runs from a world-readable directory: the CA goes there.
        directory = os.path.dirname(topology.client_script)
        cls.ca, cert, key = make_certificates(directory)
        python = sys.executable
        topology.start_server("tls", [python, SERVER, "tls", str(TLS_PORT), cert, key], TLS_PORT)
        topology.start_server("echo", [python, SERVER, "echo", str(ECHO_PORT)], ECHO_PORT)
        topology.start_server("echo2", [python, SERVER, "echo", str(TCP_PORT)], TCP_PORT)
        topology.start_server("banner", [python, SERVER, "banner", str(BANNER_PORT)], BANNER_PORT)
        topology.start_server(
            "source", [python, SERVER, "source", str(SOURCE_PORT), str(SOURCE_SIZE)], SOURCE_PORT
        )
        topology.start_proxy(
            ["--port", "tcp:%d" % PROXY_PORT, "--access-log", "-",
             "--deny-sni", DENIED, "--tcp-ports", str(TCP_PORT)],
            PROXY_PORT,
        )

    def client(self, *args, timeout=120):
        return self.topology.finish_script(self.topology.start_script(CLIENT, list(args)), timeout)

    def log_lines(self, fragment):
        return [line for line in self.topology.proxy_log().splitlines() if fragment in line]

    def test_tls_passthrough(self):
        """
        A client that trusts only the test's CA verifies the real server's
        certificate through the proxy (nothing was changed on the way), and
        the access log names the server name.
        """
        result = self.client("tls", testbed.SERVER_V4, TLS_PORT, NAME, self.ca)
        self.assertTrue(result["handshake"], result)
        self.assertEqual(result["echo"], "echo:ping")
        self.assertIn(NAME, result["subject_alt_name"])
        testbed.wait_for(lambda: self.log_lines('"%s" "10.250.0.3:443"' % NAME), 5, what="access log line")
        line = self.log_lines('"%s" "10.250.0.3:443"' % NAME)[0]
        self.assertIn('"- - ', line)

    def test_tls_one_byte_at_a_time(self):
        """
        A ClientHello sent one byte per segment is read whole: the handshake
        completes, and the server name is logged.
        """
        before = len(self.log_lines('"%s" "10.250.0.3:443"' % NAME))
        result = self.client("tls", testbed.SERVER_V4, TLS_PORT, NAME, self.ca, "bytewise")
        self.assertTrue(result["handshake"], result)
        self.assertEqual(result["echo"], "echo:ping")
        testbed.wait_for(
            lambda: len(self.log_lines('"%s" "10.250.0.3:443"' % NAME)) > before, 5, what="access log line"
        )

    def test_sni_denied(self):
        """
        A denied server name: the connection is closed before anything is
        connected, and one log line names the rule.
        """
        result = self.client("tls", testbed.SERVER_V4, TLS_PORT, DENIED, self.ca)
        self.assertFalse(result["handshake"], result)
        testbed.wait_for(lambda: self.log_lines("denied by --deny-sni %s" % DENIED), 5, what="the log line")
        self.assertEqual(len(self.log_lines("denied by --deny-sni %s" % DENIED)), 1)

    def test_echo_with_half_close(self):
        """
        Several MiB each way, detected as not HTTP: the echo arrives intact,
        and after the client's half-close the server's last bytes still do.
        """
        result = self.client("echo", testbed.SERVER_V4, ECHO_PORT, SIZE)
        self.assertEqual((result["received"], result["intact"], result["tail"]), (SIZE + 3, True, "bye"))

    def test_tcp_ports(self):
        """
        The same through a port in --tcp-ports (no detection).
        """
        result = self.client("echo", testbed.SERVER_V4, TCP_PORT, SIZE)
        self.assertEqual((result["received"], result["intact"], result["tail"]), (SIZE + 3, True, "bye"))

    def test_server_speaks_first(self):
        """
        A server that speaks first is reached after the detect timeout.
        """
        result = self.client("banner", testbed.SERVER_V4, BANNER_PORT)
        self.assertEqual(result["greeting"], "SSH-2.0-relaytest\r\n")
        self.assertEqual(result["answer"], "got hello\n")
        self.assertGreaterEqual(result["waited"], 0.25)

    def test_slow_reader(self):
        """
        A client that reads nothing pauses the server instead of filling the
        proxy's memory; the bytes then arrive intact.
        """
        pid = self.topology.proxy.popen.pid
        before = rss(pid)
        proc = self.topology.start_script(CLIENT, ["slowread", testbed.SERVER_V4, SOURCE_PORT, SOURCE_SIZE, 3])
        time.sleep(2.5)
        during = rss(pid)
        result = self.topology.finish_script(proc, timeout=300)
        self.assertEqual(result, {"length": SOURCE_SIZE, "intact": True})
        self.assertLess(during - before, RSS_BUDGET, "RSS grew from %d to %d" % (before, during))

    def test_no_traceback(self):
        """
        After all that, the proxy logged no traceback.
        """
        self.client("echo", testbed.SERVER_V4, TCP_PORT, 1000)
        log = self.topology.proxy_log()
        self.assertNotIn("Traceback", log)
        self.assertNotIn("Unhandled", log)


def testSuite():
    return testbed.suite(RelayTests)
