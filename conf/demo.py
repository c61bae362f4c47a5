"""
Envoy's original-destination tutorial, end to end, in the throwaway namespaces of L{testbed}
(run by conf/demo.sh, which checks root, the tools and the virtualenv first)::

    client namespace 10.250.0.2/24              server namespace 10.250.0.3/24
      curl (uid 65534) -> 10.250.0.3:80           httpbin on twistd web, tcp:80
        | iptables nat OUTPUT REDIRECT               ^
        v (owner match: not uid 0)                   |
      origdst :4999 (uid 0) ---- original destination 10.250.0.3:80

and then an C{https://} request to port 443 (httpbin there too, with a certificate from a
throwaway CA): origdst detects TLS and passes it through untouched, the client verifies the real
server's certificate, and the access log names the SNI.

Nothing outside the two namespaces it creates is touched.  Everything it starts is stopped by
its process group and both namespaces are deleted on exit, also on failure or Ctrl-C (the test
bed's layered cleanup).

Environment: PROXY_PORT (4999), SWEEP_WAIT (seconds to wait for the cleanup sweep, 15).
"""

import os
import re
import subprocess
import sys

import testbed
from testbed.certs import Authority

PROXY_PORT = int(os.environ.get("PROXY_PORT", "4999"))
SWEEP_WAIT = float(os.environ.get("SWEEP_WAIT", "15"))
SERVER = testbed.SERVER_V4
NOBODY = testbed.CLIENT_UID
# The name the https:// request asks for (curl --resolve maps it to SERVER).
TLS_NAME = "demo.example.test"


def say(message):
    print("== %s" % message, flush=True)


def show(title, text):
    print("---- %s ----" % title)
    print(text, end="" if text.endswith("\n") else "\n")
    print("---- end of %s ----" % title, flush=True)


def curl(topology, args):
    """
    curl as uid 65534 in C, bounded in time.

    @return: C{(exit status, stdout and stderr)}.
    """
    argv = topology.as_client(["env", "HOME=/", "curl", "-q", "-sS", "--max-time", "20"] + args)
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=30)
    return proc.returncode, proc.stdout


def reachable(topology):
    """
    As root, C reaches S directly: the rule exempts uid 0, which is also what keeps the
    proxy's own connections out of it.
    """
    return topology.exec(topology.client, [
        "curl", "-q", "-sf", "--max-time", "2", "-o", "/dev/null", "http://%s/get" % SERVER,
    ], check=False).returncode == 0


def run(topology):
    """
    The tutorial's steps.

    @return: the problems found (none when the demo worked).
    """
    say("creating namespaces %s (%s) and %s (%s)" % (
        topology.client, testbed.CLIENT_V4, topology.server, SERVER))
    topology.start()
    # The client (uid 65534) reads the CA from the world-readable directory of its scripts.
    directory = os.path.dirname(topology.client_script)
    authority = Authority("origdst demo CA")
    ca = authority.write(os.path.join(directory, "ca.pem"))
    cert, key = authority.issue([TLS_NAME])
    cert = authority.write(os.path.join(topology.workdir, "server.pem"), cert)
    key = authority.write(os.path.join(topology.workdir, "server.key"), key)
    tls_listen = "ssl:443:privateKey=%s:certKey=%s" % (key, cert)
    say("starting httpbin (twistd web --wsgi httpbin.app --listen tcp:80 --listen %s, "
        "a certificate for %s from a throwaway CA) in %s" % (tls_listen, TLS_NAME, topology.server))
    httpbin = topology.start_server("httpbin", [
        topology.python, "-c", testbed.TWISTD, "-n", "--pidfile=",
        "web", "--wsgi", "httpbin.app", "--listen", "tcp:80", "--listen", tls_listen], 80,
        timeout=60)
    testbed.wait_for(lambda: reachable(topology), 10, interval=0.2,
                     what="%s:80 to answer from %s" % (SERVER, topology.client))
    testbed.wait_for(lambda: topology.listening(topology.server, 443), 10, interval=0.2,
                     what="httpbin listening on 443")

    say("in %s: iptables -t nat -A OUTPUT -p tcp -d %s -m multiport --dports 80,443 "
        "-m owner ! --uid-owner 0 -j REDIRECT --to-port %d" % (topology.client, SERVER, PROXY_PORT))
    topology.add_redirect(SERVER, [80, 443], PROXY_PORT)

    args = ["--port", str(PROXY_PORT), "--log-level", "debug", "--cleanup-interval", "5",
            "--access-log", "-"]
    say("starting origdst (uid 0) in %s: twistd -n origdst %s" % (topology.client, " ".join(args)))
    try:
        proxy = topology.start_proxy(args, PROXY_PORT)
    except testbed.TopologyError:
        show("origdst log", topology.proxy_log())
        raise

    say("as uid %d in %s: curl -v http://%s/get" % (NOBODY, topology.client, SERVER))
    print()
    curl_status, curl_out = curl(topology, ["-v", "http://%s/get" % SERVER])
    print(curl_out)
    # httpbin hides x-request-id and x-forwarded-proto unless asked (show_env):
    # a second request shows every header the backend received from the proxy.
    say("as uid %d: curl -s http://%s/headers?show_env=1 (all the headers httpbin received)"
        % (NOBODY, SERVER))
    headers_status, headers_out = curl(topology, ["http://%s/headers?show_env=1" % SERVER])
    print(headers_out)

    # TLS on the same port: detected, passed through untouched (nothing decrypted), so the
    # client verifies httpbin's own certificate against the throwaway CA.
    tls_args = ["-v", "--cacert", ca, "--resolve", "%s:443:%s" % (TLS_NAME, SERVER),
                "https://%s/get" % TLS_NAME]
    say("as uid %d: curl %s (TLS passthrough: origdst reads the SNI, decrypts nothing)"
        % (NOBODY, " ".join(tls_args)))
    print()
    tls_status, tls_out = curl(topology, tls_args)
    print(tls_out)
    sni_line = '"%s" "%s:443"' % (TLS_NAME, SERVER)
    try:
        testbed.wait_for(lambda: sni_line in topology.proxy_log(), 5, interval=0.1,
                         what="the TLS connection's access-log line")
    except testbed.TopologyError as e:
        print("error: %s" % e, file=sys.stderr)

    say("waiting up to %gs for a cleanup sweep to remove the unused host" % SWEEP_WAIT)
    removed = "Removing stale host %s:80" % SERVER
    try:
        testbed.wait_for(lambda: removed in topology.proxy_log(), SWEEP_WAIT, interval=0.2,
                         what="%r in the proxy log" % removed)
        swept = True
    except testbed.TopologyError as e:
        print("error: %s" % e, file=sys.stderr)
        swept = False
    log = topology.proxy_log()
    show("origdst debug log", log)

    # What the client saw must have come through the proxy: the proxy's server
    # name and the headers it adds upstream, echoed back by httpbin.
    checks = [
        (curl_status == 0, "curl failed with exit status %d" % curl_status),
        (re.search(r"^< HTTP/1.1 200", curl_out, re.M), "the response was not 200"),
        (re.search(r"^< server: origdst", curl_out, re.M | re.I),
         "no 'server: origdst' response header"),
        (re.search(r'"X-Envoy-Expected-Rq-Timeout-Ms": "15000"', curl_out, re.I),
         "httpbin saw no x-envoy-expected-rq-timeout-ms: 15000"),
        (headers_status == 0,
         "the show_env request failed with exit status %d" % headers_status),
        (re.search(r'"X-Request-Id": "[0-9a-f-]{36}"', headers_out, re.I),
         "httpbin saw no x-request-id uuid"),
        (re.search(r'"X-Forwarded-Proto": "http"', headers_out, re.I),
         "httpbin saw no x-forwarded-proto: http"),
        (tls_status == 0, "the https:// request failed with exit status %d" % tls_status),
        (re.search(r'"url": "https://%s/get"' % re.escape(TLS_NAME), tls_out),
         "httpbin did not answer the https:// request"),
        (not re.search(r"^< server: origdst", tls_out, re.M | re.I),
         "the https:// response came from origdst, not passed through"),
        (any(sni_line in line for line in log.splitlines()),
         "no access-log line naming %s" % sni_line),
        ("Created host %s:80" % SERVER in log,
         "no 'Created host %s:80.' in the proxy log" % SERVER),
        (swept, "no '%s.' in the proxy log" % removed),
        (proxy.running(), "origdst exited"),
    ]
    problems = [problem for ok, problem in checks if not ok]
    if problems:
        show("httpbin log", testbed.process.tail(httpbin.log_path, 1000))
    return problems


def main():
    topology = testbed.Topology(tag="d")
    status = 1
    try:
        problems = run(topology)
        for problem in problems:
            print("error: %s" % problem, file=sys.stderr)
        status = 1 if problems else 0
    except KeyboardInterrupt:
        status = 130
    except (testbed.TopologyError, subprocess.TimeoutExpired) as e:
        print("error: %s" % e, file=sys.stderr)
    finally:
        left = topology.stop()
    if left:
        print("error: namespaces left behind: %s" % ", ".join(left), file=sys.stderr)
        status = status or 1
    if status == 0:
        say("demo OK: uid %d's connection to %s:80 went through origdst to its original "
            "destination" % (NOBODY, SERVER))
        say("demo OK: its https://%s connection (port 443) was passed through with its SNI "
            "in the access log, the certificate verified by curl" % TLS_NAME)
        say("cleaned up: processes stopped, namespaces %s and %s deleted"
            % (topology.client, topology.server))
    elif status == 130:
        say("demo interrupted; cleaned up: processes stopped, namespaces deleted")
    else:
        say("demo FAILED (exit %d); cleaned up: processes stopped, namespaces deleted" % status)
    return status


if __name__ == "__main__":
    sys.exit(main())
