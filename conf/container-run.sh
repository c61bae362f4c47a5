#!/usr/bin/env bash
# Build the origdst image and run it as the tutorial runs Envoy
# (build_docker_net_admin.sh): on the host's network, with the REDIRECT rule
# for the image's uid (1337) installed by this script on the host, and
# removed again when the container stops.
#
#   conf/container-run.sh base   [--suite bookworm]   make the base image from Debian's archive
#   conf/container-run.sh build  [--suite bookworm]   build localhost/origdst (and the base if missing)
#   conf/container-run.sh run    [--port 4999] [--dports 80] [origdst options...]
#
# "run" needs root (iptables), runs podman run --network host in the
# foreground, and on exit (the container ending, Ctrl-C, SIGTERM) stops the
# container with time to drain and removes the rules (conf/iptables.sh down).
# The container needs no capability: the rule is the host's, put in place
# here. PODMAN (default podman) may name docker instead.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(dirname "$HERE")
PODMAN=${PODMAN:-podman}
IMAGE=${IMAGE:-localhost/origdst:latest}
NAME=${NAME:-origdst}
SUITE=bookworm
PORT=4999
DPORTS=80
PROXY_UID=1337
# Python, Twisted and what origdst depends on, and iptables for
# conf/iptables.sh (the Kubernetes init containers run it from the image).
PACKAGES=python3,python3-twisted,python3-openssl,python3-service-identity,python3-zope.interface,iptables,ca-certificates

usage() {
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-2}"
}

[ $# -ge 1 ] || usage >&2
ACTION=$1
shift

base_image() { echo "localhost/origdst-base:$SUITE"; }

make_base() {
    command -v mmdebstrap >/dev/null || { echo "error: mmdebstrap is needed to make the base image" >&2; exit 1; }
    local tar
    tar=$(mktemp --suffix=.tar)
    trap 'rm -f "$tar"' RETURN
    mmdebstrap --variant=minbase --include="$PACKAGES" \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        "$SUITE" "$tar"
    "$PODMAN" import --change 'CMD ["/bin/bash"]' "$tar" "$(base_image)"
}

case $ACTION in
    base|build)
        while [ $# -gt 0 ]; do
            case $1 in
                --suite) SUITE=${2:?--suite needs a value}; shift 2 ;;
                *) echo "error: unknown option '$1'" >&2; usage >&2 ;;
            esac
        done
        if [ "$ACTION" = base ] || ! "$PODMAN" image exists "$(base_image)"; then
            make_base
        fi
        if [ "$ACTION" = build ]; then
            "$PODMAN" build --isolation chroot --build-arg BASE="$(base_image)" \
                -f "$HERE/Containerfile" -t "$IMAGE" "$TOP"
        fi
        ;;
    run)
        ARGS=()
        while [ $# -gt 0 ]; do
            case $1 in
                --port) PORT=${2:?--port needs a value}; shift 2 ;;
                --dports) DPORTS=${2:?--dports needs a value}; shift 2 ;;
                *) ARGS+=("$1"); shift ;;
            esac
        done
        [ "$(id -u)" = 0 ] || { echo "error: run needs root, for the iptables rule" >&2; exit 1; }
        cleanup() {
            "$PODMAN" stop -t 40 "$NAME" >/dev/null 2>&1 || true
            "$HERE/iptables.sh" down
        }
        trap cleanup EXIT
        trap 'exit 0' INT TERM
        "$HERE/iptables.sh" up --port "$PORT" --dports "$DPORTS" --uid "$PROXY_UID"
        # tcp6: dual-stack, for the IPv6 rule too; --stop-timeout leaves
        # the drain its 25 s.
        "$PODMAN" run --rm --name "$NAME" --network host --stop-timeout 40 \
            --cap-drop ALL --security-opt no-new-privileges --read-only \
            "$IMAGE" --port "tcp6:$PORT" "${ARGS[@]}"
        ;;
    -h|--help|help) usage 0 ;;
    *) echo "error: unknown action '$ACTION'" >&2; usage >&2 ;;
esac
