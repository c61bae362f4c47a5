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
# Nothing outside the two namespaces it creates is touched: no host iptables
# rule, no host address. Everything it starts is stopped by PID and both
# namespaces are deleted on exit, also on failure or Ctrl-C.
#
# Environment: ORIGDST_VENV (default <repo>/.venv, with origdst's
# dependencies and httpbin installed: "make demo" does that), PROXY_PORT
# (4999), SWEEP_WAIT (seconds to wait for the cleanup sweep, 15).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${ORIGDST_VENV:-$REPO/.venv}
PROXY_PORT=${PROXY_PORT:-4999}
SWEEP_WAIT=${SWEEP_WAIT:-15}
CLIENT_IP=10.250.0.2
SERVER_IP=10.250.0.3
NOBODY=65534

if [ "$(id -u)" != 0 ]; then
    echo "error: the demo needs root (it creates network namespaces and iptables rules in them): sudo make demo" >&2
    exit 1
fi

# Tools: ip and ss (iproute2), iptables, curl, setpriv (util-linux).
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v ss >/dev/null 2>&1 || missing+=(iproute2)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
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

if ! PYTHONPATH=$REPO "$VENV/bin/python" -c 'import httpbin, twisted' 2>/dev/null; then
    echo "error: $VENV has no httpbin or Twisted: run 'make demo' (it installs them)" >&2
    exit 1
fi

# Unique names, so concurrent runs and leftovers of a killed run never clash.
# Interface names stay under the 15-character limit.
NS_CLIENT=origdst-demo-client-$$
NS_SERVER=origdst-demo-server-$$
VETH_CLIENT=odc$$
VETH_SERVER=ods$$
WORK=$(mktemp -d /tmp/origdst-demo.XXXXXX)
PIDS=()

cleanup() {
    local status=$? pid
    set +e
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    ip netns del "$NS_CLIENT" 2>/dev/null
    ip netns del "$NS_SERVER" 2>/dev/null
    rm -rf "$WORK"
    if [ "$status" = 0 ]; then
        echo "== cleaned up: processes stopped, namespaces $NS_CLIENT and $NS_SERVER deleted"
    elif [ "$status" = 130 ] || [ "$status" = 143 ]; then
        echo "== demo interrupted; cleaned up: processes stopped, namespaces deleted" >&2
    else
        echo "== demo FAILED (exit $status); cleaned up: processes stopped, namespaces deleted" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

in_client() { ip netns exec "$NS_CLIENT" "$@"; }
in_server() { ip netns exec "$NS_SERVER" "$@"; }

show_log() {
    echo "---- $1 ----"
    cat "$2"
    echo "---- end of $1 ----"
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds.
wait_for() {
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            echo "error: timed out waiting for $what" >&2
            return 1
        fi
        sleep 0.2
    done
}

listening() { # NS PORT
    [ -n "$(ip netns exec "$1" ss -Hltn "sport = :$2")" ]
}

echo "== creating namespaces $NS_CLIENT ($CLIENT_IP) and $NS_SERVER ($SERVER_IP)"
ip netns add "$NS_CLIENT"
ip netns add "$NS_SERVER"
ip link add "$VETH_CLIENT" netns "$NS_CLIENT" type veth peer name "$VETH_SERVER" netns "$NS_SERVER"
in_client ip link set lo up
in_server ip link set lo up
in_client ip addr add "$CLIENT_IP/24" dev "$VETH_CLIENT"
in_server ip addr add "$SERVER_IP/24" dev "$VETH_SERVER"
in_client ip link set "$VETH_CLIENT" up
in_server ip link set "$VETH_SERVER" up

echo "== starting httpbin (twistd web --wsgi httpbin.app --listen tcp:80) in $NS_SERVER"
# Started with ip directly, not through in_server: a function in the
# background would run in a subshell and $! would not be twistd's PID.
ip netns exec "$NS_SERVER" "$VENV/bin/twistd" -n --pidfile= \
    web --wsgi httpbin.app --listen tcp:80 >"$WORK/httpbin.log" 2>&1 &
PIDS+=($!)
if ! wait_for 60 "httpbin to listen on $SERVER_IP:80" listening "$NS_SERVER" 80; then
    show_log "httpbin log" "$WORK/httpbin.log"
    exit 1
fi
# As root, the client namespace reaches the server directly: the rule below
# exempts uid 0, which is also what keeps the proxy's own connections out.
wait_for 10 "$SERVER_IP:80 to answer from $NS_CLIENT" \
    in_client curl -q -sf --max-time 2 -o /dev/null "http://$SERVER_IP/get"

RULE=(-t nat -A OUTPUT -p tcp --dport 80 -d "$SERVER_IP" -m owner ! --uid-owner 0 -j REDIRECT --to-port "$PROXY_PORT")
echo "== in $NS_CLIENT: iptables ${RULE[*]}"
in_client iptables "${RULE[@]}"

echo "== starting origdst (uid 0) in $NS_CLIENT: twistd -n origdst --port $PROXY_PORT --log-level debug --cleanup-interval 5"
ip netns exec "$NS_CLIENT" env PYTHONPATH="$REPO" "$VENV/bin/twistd" -n --pidfile= \
    origdst --port "$PROXY_PORT" --log-level debug --cleanup-interval 5 >"$WORK/origdst.log" 2>&1 &
PROXY_PID=$!
PIDS+=("$PROXY_PID")
if ! wait_for 30 "origdst to listen on port $PROXY_PORT" listening "$NS_CLIENT" "$PROXY_PORT"; then
    show_log "origdst log" "$WORK/origdst.log"
    exit 1
fi

echo "== as uid $NOBODY in $NS_CLIENT: curl -v http://$SERVER_IP/get"
echo
set +e
in_client setpriv --reuid=$NOBODY --regid=$NOBODY --clear-groups \
    env HOME=/ curl -q -sS -v --max-time 20 "http://$SERVER_IP/get" >"$WORK/curl.out" 2>&1
CURL_STATUS=$?
set -e
cat "$WORK/curl.out"
echo
# httpbin hides x-request-id and x-forwarded-proto unless asked (show_env):
# a second request shows every header the backend received from the proxy.
echo "== as uid $NOBODY: curl -s http://$SERVER_IP/headers?show_env=1 (all the headers httpbin received)"
set +e
in_client setpriv --reuid=$NOBODY --regid=$NOBODY --clear-groups \
    env HOME=/ curl -q -sS --max-time 20 "http://$SERVER_IP/headers?show_env=1" >"$WORK/headers.out" 2>&1
HEADERS_STATUS=$?
set -e
cat "$WORK/headers.out"
echo

echo "== waiting up to ${SWEEP_WAIT}s for a cleanup sweep to remove the unused host"
SWEPT=0
wait_for "$SWEEP_WAIT" "'Removing stale host $SERVER_IP:80.' in the proxy log" \
    grep -q "Removing stale host $SERVER_IP:80" "$WORK/origdst.log" && SWEPT=1
show_log "origdst debug log" "$WORK/origdst.log"

# What the client saw must have come through the proxy: the proxy's server
# name and the headers it adds upstream, echoed back by httpbin.
problems=()
[ "$CURL_STATUS" = 0 ] || problems+=("curl failed with exit status $CURL_STATUS")
grep -q '^< HTTP/1.1 200' "$WORK/curl.out" || problems+=("the response was not 200")
grep -qi '^< server: origdst' "$WORK/curl.out" || problems+=("no 'server: origdst' response header")
grep -qi '"X-Envoy-Expected-Rq-Timeout-Ms": "15000"' "$WORK/curl.out" || problems+=("httpbin saw no x-envoy-expected-rq-timeout-ms: 15000")
[ "$HEADERS_STATUS" = 0 ] || problems+=("the show_env request failed with exit status $HEADERS_STATUS")
grep -qiE '"X-Request-Id": "[0-9a-f-]{36}"' "$WORK/headers.out" || problems+=("httpbin saw no x-request-id uuid")
grep -qi '"X-Forwarded-Proto": "http"' "$WORK/headers.out" || problems+=("httpbin saw no x-forwarded-proto: http")
grep -q "Created host $SERVER_IP:80" "$WORK/origdst.log" || problems+=("no 'Created host $SERVER_IP:80.' in the proxy log")
[ "$SWEPT" = 1 ] || problems+=("no 'Removing stale host $SERVER_IP:80.' in the proxy log")
if ! kill -0 "$PROXY_PID" 2>/dev/null; then
    problems+=("origdst exited")
fi

if [ ${#problems[@]} -gt 0 ]; then
    show_log "httpbin log" "$WORK/httpbin.log"
    printf 'error: %s\n' "${problems[@]}" >&2
    exit 1
fi
echo "== demo OK: uid $NOBODY's connection to $SERVER_IP:80 went through origdst to its original destination"
