#!/usr/bin/env bash
# Send this host's outgoing TCP connections to origdst (iptables nat OUTPUT
# REDIRECT, and reject what was not redirected), or take that away again.
#
#   conf/iptables.sh up   [--port 4999] [--dports 80 | --all-ports] [--uid 0] [-4|-6] [--dry-run]
#   conf/iptables.sh down [-4|-6] [--dry-run]
#   conf/iptables.sh status
#
#   --port    the port origdst listens on (the number in its --port option)
#   --dports  destination ports to redirect: 80, or a list such as 80,8080
#   --all-ports  redirect every TCP port: origdst detects HTTP, TLS and other
#             protocols on its one port (its README, "Protocol detection")
#   --uid     the user origdst runs as (a name or a number); its own
#             connections are left alone
#   -4, -6    IPv4 (iptables) or IPv6 (ip6tables) only; both by default
#   --dry-run print the commands instead of running them
#
# The rules live in chains of their own, ORIGDST in the nat and in the filter
# table, each jumped to from OUTPUT, so "up" replaces them and "down" removes
# exactly them.
#
# Fail closed: the filter rule rejects (with a TCP reset) any packet to a
# redirected port from a uid other than the proxy's whose connection was not
# redirected (-m conntrack ! --ctstate DNAT). The nat rule is consulted only
# for the first packet of a connection conntrack has not seen; a client
# connection that happens to get the addresses and source port of an
# upstream connection the server has just reset (its conntrack entry lingers
# in CLOSE for 10 s) is taken for that connection and would reach the
# destination around the proxy: no policy, no log, no request id. With the
# rule it is refused instead, and origdst binds its upstream connections to
# ports clients are never given (--upstream-source-ports, 61000-65535, above
# the kernel's ephemeral range), so the rule should never have to fire.
#
# Why the owner match (-m owner ! --uid-owner UID) is needed: origdst opens
# its upstream connection to the very address the client asked for, say
# 10.0.0.5:80. That connection also leaves through nat OUTPUT, so without the
# exemption it would match the same rule and be redirected back to origdst,
# which would connect to 10.0.0.5:80 again, and so on: a loop that eats
# connections until something runs out. Exempting the proxy's uid lets its own
# connections through untouched. (origdst recognises a connection whose
# original destination is its own listening address and answers 508 Loop
# Detected instead of looping, but the rule is what makes it work.) Run the
# proxy as a dedicated user and pass that user here; uid 0 (the default)
# exempts everything root runs, which is right only for a proxy run as root.
#
# IPv6: the ip6tables rule redirects to [::1]:PORT, so origdst must also
# listen on IPv6: --port tcp6:PORT is dual-stack (IPv4 and IPv6 on one port).
#
# Rules added here do not survive a reboot: run "up" from the service unit
# (see origdst.service) or save them with your distribution's tool.
set -euo pipefail

CHAIN=ORIGDST
PORT=4999
DPORTS=80
OWNER=0
FAMILIES=(4 6)
DRY_RUN=0

usage() { # EXIT_STATUS
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-2}"
}

[ $# -ge 1 ] || usage >&2
ACTION=$1
shift
case $ACTION in
    up|down|status) ;;
    -h|--help|help) usage 0 ;;
    *) echo "error: unknown action '$ACTION'" >&2; usage >&2 ;;
esac

while [ $# -gt 0 ]; do
    case $1 in
        --port) PORT=${2:?--port needs a value}; shift 2 ;;
        --port=*) PORT=${1#*=}; shift ;;
        --dports) DPORTS=${2:?--dports needs a value}; shift 2 ;;
        --dports=*) DPORTS=${1#*=}; shift ;;
        --all-ports) DPORTS=all; shift ;;
        --uid) OWNER=${2:?--uid needs a value}; shift 2 ;;
        --uid=*) OWNER=${1#*=}; shift ;;
        -4) FAMILIES=(4); shift ;;
        -6) FAMILIES=(6); shift ;;
        --dry-run|-n) DRY_RUN=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "error: unknown option '$1'" >&2; usage >&2 ;;
    esac
done

# The listening port: a bare number, or the port of an endpoint description
# such as tcp6:4999 or tcp:4999:interface=127.0.0.1.
if [[ $PORT =~ ^[0-9]+$ ]]; then
    :
elif [[ $PORT =~ ^tcp6?:([0-9]+)(:.*)?$ ]]; then
    PORT=${BASH_REMATCH[1]}
else
    echo "error: --port must be a port number (or tcp:N / tcp6:N), not '$PORT'" >&2
    exit 2
fi
if [ "$DPORTS" != all ] && ! [[ $DPORTS =~ ^[0-9]+(:[0-9]+)?(,[0-9]+(:[0-9]+)?)*$ ]]; then
    echo "error: --dports must be a port, a range a:b, or a comma-separated list, not '$DPORTS'" >&2
    exit 2
fi
if [[ $OWNER =~ ^[0-9]+$ ]]; then
    :
elif ! getent passwd "$OWNER" >/dev/null; then
    echo "error: --uid: no such user '$OWNER'" >&2
    exit 2
fi

if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    echo "error: changing iptables rules needs root" >&2
    exit 1
fi

run() {
    if [ "$DRY_RUN" = 1 ]; then
        echo "$*"
    else
        "$@"
    fi
}

tool_for() {
    if [ "$1" = 4 ]; then echo iptables; else echo ip6tables; fi
}

up() {
    local ipt=$1 match
    if [ "$DPORTS" = all ]; then
        # Every port. A client connecting to the proxy's own port is
        # redirected to it too, and refused as a loop (508).
        match=()
    elif [[ $DPORTS == *[,:]* ]]; then
        match=(-m multiport --dports "$DPORTS")
    else
        match=(--dport "$DPORTS")
    fi
    if [ "$DRY_RUN" = 1 ] || ! "$ipt" -t nat -n -L "$CHAIN" >/dev/null 2>&1; then
        run "$ipt" -t nat -N "$CHAIN"
    fi
    run "$ipt" -t nat -F "$CHAIN"
    run "$ipt" -t nat -A "$CHAIN" -p tcp "${match[@]}" \
        -m owner ! --uid-owner "$OWNER" -j REDIRECT --to-ports "$PORT"
    if [ "$DRY_RUN" = 1 ] || ! "$ipt" -t nat -C OUTPUT -p tcp -j "$CHAIN" 2>/dev/null; then
        run "$ipt" -t nat -A OUTPUT -p tcp -j "$CHAIN"
    fi
    # Fail closed (see above): what should have been redirected and was not.
    if [ "$DRY_RUN" = 1 ] || ! "$ipt" -t filter -n -L "$CHAIN" >/dev/null 2>&1; then
        run "$ipt" -t filter -N "$CHAIN"
    fi
    run "$ipt" -t filter -F "$CHAIN"
    run "$ipt" -t filter -A "$CHAIN" -p tcp "${match[@]}" \
        -m owner ! --uid-owner "$OWNER" -m conntrack ! --ctstate DNAT \
        -j REJECT --reject-with tcp-reset
    if [ "$DRY_RUN" = 1 ] || ! "$ipt" -t filter -C OUTPUT -p tcp -j "$CHAIN" 2>/dev/null; then
        run "$ipt" -t filter -I OUTPUT -p tcp -j "$CHAIN"
    fi
}

down() {
    local ipt=$1 table
    for table in nat filter; do
        if [ "$DRY_RUN" = 1 ]; then
            run "$ipt" -t "$table" -D OUTPUT -p tcp -j "$CHAIN"
            run "$ipt" -t "$table" -F "$CHAIN"
            run "$ipt" -t "$table" -X "$CHAIN"
            continue
        fi
        while "$ipt" -t "$table" -C OUTPUT -p tcp -j "$CHAIN" 2>/dev/null; do
            "$ipt" -t "$table" -D OUTPUT -p tcp -j "$CHAIN"
        done
        if "$ipt" -t "$table" -n -L "$CHAIN" >/dev/null 2>&1; then
            "$ipt" -t "$table" -F "$CHAIN"
            "$ipt" -t "$table" -X "$CHAIN"
        fi
    done
}

status=0
for family in "${FAMILIES[@]}"; do
    ipt=$(tool_for "$family")
    if [ "$DRY_RUN" = 0 ] && ! command -v "$ipt" >/dev/null 2>&1; then
        echo "warning: $ipt not found: IPv$family left alone" >&2
        [ ${#FAMILIES[@]} -gt 1 ] || status=1
        continue
    fi
    case $ACTION in
        up)
            up "$ipt"
            [ "$DRY_RUN" = 1 ] || echo "IPv$family: TCP to port(s) $DPORTS from any uid but $OWNER -> local port $PORT (not redirected: rejected)"
            ;;
        down)
            down "$ipt"
            [ "$DRY_RUN" = 1 ] || echo "IPv$family: origdst rules removed"
            ;;
        status)
            for table in nat filter; do
                echo "== $ipt -t $table"
                "$ipt" -t "$table" -S OUTPUT | grep -e "-j $CHAIN\$" || echo "(no jump to $CHAIN in OUTPUT)"
                "$ipt" -t "$table" -S "$CHAIN" 2>/dev/null || echo "(no $CHAIN chain)"
            done
            ;;
    esac
done
if [ "$ACTION" = up ] && [ "$DRY_RUN" = 0 ] && [[ " ${FAMILIES[*]} " == *" 6 "* ]]; then
    echo "note: IPv6 connections arrive on [::1]:$PORT: run origdst with --port tcp6:$PORT (dual-stack)"
fi
exit $status
