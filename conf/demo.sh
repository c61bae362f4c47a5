#!/usr/bin/env bash
# Envoy's original-destination tutorial, end to end, in throwaway network
# namespaces (run it with "make demo", as root):
#
#   client namespace 10.250.0.2/24              server namespace 10.250.0.3/24
#     curl (uid 65534) -> 10.250.0.3:80           httpbin on twistd web, tcp:80
#       | iptables nat OUTPUT REDIRECT               ^
#       v (owner match: not uid 0)                   |
#     origdst :4999 (uid 0) ---- original destination 10.250.0.3:80
#
# then an https:// request to port 443 (httpbin with a throwaway CA's
# certificate), passed through untouched with its SNI in the access log.
#
# This script checks root, the tools and the virtualenv; conf/demo.py runs the
# steps in the namespaces of the test bed (the testbed package, which the
# end-to-end tests and the benchmark use too). Nothing outside the two
# namespaces it creates is touched: no host iptables rule, no host address.
# Everything it starts is stopped by its process group and both namespaces
# are deleted on exit, also on failure or Ctrl-C.
#
# Environment: ORIGDST_VENV (default <repo>/.venv, with origdst's
# dependencies and httpbin installed: "make demo" does that), PROXY_PORT
# (4999), SWEEP_WAIT (seconds to wait for the cleanup sweep, 15).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${ORIGDST_VENV:-$REPO/.venv}
PROXY_PORT=${PROXY_PORT:-4999}
SWEEP_WAIT=${SWEEP_WAIT:-15}

if [ "$(id -u)" != 0 ]; then
    echo "error: the demo needs root (it creates network namespaces and iptables rules in them): sudo make demo" >&2
    exit 1
fi

# Tools: ip and ss (iproute2), iptables and ip6tables, curl, setpriv (util-linux).
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v ss >/dev/null 2>&1 || missing+=(iproute2)
{ command -v iptables && command -v ip6tables; } >/dev/null 2>&1 || missing+=(iptables)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: missing ${missing[*]} and no apt-get to install them" >&2
        exit 1
    fi
    echo "== installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! PYTHONPATH=$REPO "$VENV/bin/python" -c 'import httpbin, twisted, testbed' 2>/dev/null; then
    echo "error: $VENV has no httpbin or Twisted: run 'make demo' (it installs them)" >&2
    exit 1
fi

export PROXY_PORT SWEEP_WAIT
exec env PYTHONPATH="$REPO" "$VENV/bin/python" "$REPO/conf/demo.py"
