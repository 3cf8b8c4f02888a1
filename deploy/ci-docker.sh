#!/usr/bin/env bash
# A Docker engine and the mirrord image for the compose test (tests/docker), on a
# Debian 12 machine where we are root and no container registry is reachable.
#
#     bash deploy/ci-docker.sh start   # exit 0: engine up, image built; else the reason is on stderr
#     bash deploy/ci-docker.sh stop    # remove test leftovers, stop the dockerd we started (by PID)
#
# start: apt-get installs docker.io docker-compose debootstrap (when missing),
# starts dockerd in the background (unless an engine already answers) and waits
# for `docker info`; makes the base image python:3.11-slim from a debootstrapped
# Debian 12 with Python 3.11 (`docker import`), unless the engine has one;
# downloads every wheel the image needs on the host (containers here cannot
# verify TLS to the package index) into deploy/wheels; builds mirrord:local
# offline from them. The rootfs tarball and the wheels are cached under
# $MIRRORD_CI_CACHE (default /var/cache/mirrord-ci) between runs.
# Every step has a deadline. The reason of a failure also goes to
# $MIRRORD_CI_STATE/failure, for .ci/run to pass on as the test's skip reason.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CACHE=${MIRRORD_CI_CACHE:-/var/cache/mirrord-ci}
STATE=${MIRRORD_CI_STATE:-/tmp/mirrord-ci}
MIRROR=${MIRRORD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_IMAGE=python:3.11-slim
ROOTFS_TAR=$CACHE/python311-bookworm-rootfs.tar
WHEELS_CACHE=$CACHE/wheels
WHEELS=deploy/wheels            # inside the build context (the repository root)
PIDFILE=$STATE/dockerd.pid
DOCKERD_LOG=$STATE/dockerd.log
COMPOSE=(docker-compose -f deploy/docker-compose.yml)

say() { printf '== docker: %s\n' "$*"; }

fail() {
    mkdir -p "$STATE"
    printf '%s\n' "$*" > "$STATE/failure"
    printf 'docker: %s\n' "$*" >&2
    exit 1
}

engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

# The PID in $PIDFILE is a running dockerd (not a stale file, not a recycled PID).
our_dockerd() {
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]
}

install_packages() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" = 0 ] || fail "not root: cannot apt-get install ${missing[*]}"
    command -v apt-get >/dev/null 2>&1 || fail "no apt-get: cannot install ${missing[*]}"
    say "apt-get install ${missing[*]}"
    timeout 600 apt-get update -qq >/dev/null || fail "apt-get update failed (or took over 600 s)"
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq "${missing[@]}" >/dev/null \
        || fail "apt-get install ${missing[*]} failed (or took over 900 s)"
}

# SIGTERM the dockerd with this PID; SIGKILL if it is still there after 30 s.
end_dockerd() {
    local pid=$1 deadline=$((SECONDS + 30))
    kill -0 "$pid" 2>/dev/null || return 0
    say "stopping dockerd (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
        say "dockerd still running after 30 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
}

start_engine() {
    if engine_answers; then
        if our_dockerd; then
            say "the dockerd an earlier start began (pid $(cat "$PIDFILE")) answers: using it"
        else
            rm -f "$PIDFILE"  # not ours: `stop` leaves it running
            say "an engine already answers: using it (and leaving it running)"
        fi
        return 0
    fi
    mkdir -p "$STATE"
    say "starting dockerd (log $DOCKERD_LOG)"
    # own session: signals meant for this script's process group do not reach it
    setsid dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
    local pid=$! deadline=$((SECONDS + 60))
    echo "$pid" > "$PIDFILE"  # written before the wait, so `stop` ends it even if the start fails
    until engine_answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$DOCKERD_LOG" >&2 || true
            rm -f "$PIDFILE"
            fail "dockerd exited at start: $(tail -n 1 "$DOCKERD_LOG" 2>/dev/null)"
        fi
        if [ $SECONDS -ge $deadline ]; then
            tail -n 20 "$DOCKERD_LOG" >&2 || true
            end_dockerd "$pid"
            rm -f "$PIDFILE"
            fail "dockerd did not answer docker info within 60 s"
        fi
        sleep 0.5
    done
    # the daemon's own record of its PID (setsid may have forked)
    if [ -s /var/run/docker.pid ]; then
        pid=$(cat /var/run/docker.pid)
        echo "$pid" > "$PIDFILE"
    fi
    say "dockerd is up (pid $pid)"
}

base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        say "base image $BASE_IMAGE present"
        return 0
    fi
    if [ ! -s "$ROOTFS_TAR" ]; then
        local dir
        mkdir -p "$CACHE"
        dir=$(mktemp -d "$CACHE/rootfs.XXXXXX")
        say "debootstrap Debian 12 with Python 3.11 into $dir (about a minute)"
        if ! timeout 900 debootstrap --variant=minbase \
                --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
                bookworm "$dir" "$MIRROR" >"$STATE/debootstrap.log" 2>&1; then
            tail -n 20 "$STATE/debootstrap.log" >&2 || true
            rm -rf "$dir"
            fail "debootstrap of bookworm from $MIRROR failed (log $STATE/debootstrap.log)"
        fi
        rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
        tar -C "$dir" -c . > "$ROOTFS_TAR.tmp" && mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
        rm -rf "$dir"
    fi
    say "docker import $ROOTFS_TAR as $BASE_IMAGE"
    timeout 300 docker import "$ROOTFS_TAR" "$BASE_IMAGE" >/dev/null || fail "docker import of $ROOTFS_TAR failed"
    timeout 60 docker run --rm "$BASE_IMAGE" python3 -c "import sys, venv; assert sys.version_info[:2] == (3, 11)" \
        || fail "the imported base image cannot run Python 3.11"
}

download_wheels() {
    local py=python3 build
    "$py" -m pip --version >/dev/null 2>&1 || fail "python3 -m pip is missing on the host (apt-get install python3-pip)"
    mkdir -p "$WHEELS_CACHE"
    build=$(mktemp -d "$STATE/wheel.XXXXXX")
    say "wheels for Python 3.11 $(uname -m) into $WHEELS_CACHE"
    # mirrord's own wheel only to learn its dependencies; the image installs from the sources
    timeout 600 "$py" -m pip wheel --quiet --no-deps -w "$build" . \
        || fail "pip wheel of the project failed"
    # pip download takes a file it finds in the destination as the one asked for: a cached mirrord wheel of an
    # older version would stand in for this one, with its older dependencies (it missed apsw)
    rm -f "$WHEELS_CACHE"/mirrord-*.whl
    local arch platforms=()
    arch=$(uname -m)
    for tag in manylinux_2_28 manylinux_2_17 manylinux2014; do platforms+=(--platform "${tag}_$arch"); done
    timeout 600 "$py" -m pip download --quiet --only-binary=:all: --python-version 3.11 --implementation cp \
            --abi cp311 --abi abi3 --abi none "${platforms[@]}" --platform any \
            -d "$WHEELS_CACHE" "$build"/mirrord-*.whl "setuptools>=68" wheel \
        || fail "pip download of the wheels failed"
    rm -rf "$build" "$WHEELS"
    mkdir -p "$WHEELS"
    cp "$WHEELS_CACHE"/*.whl "$WHEELS"/
    rm -f "$WHEELS"/mirrord-*.whl
}

build_image() {
    say "building mirrord:local offline from $WHEELS"
    MIRRORD_PIP_WHEELS=$WHEELS timeout 900 "${COMPOSE[@]}" build --quiet --force-rm >"$STATE/build.log" 2>&1 \
        || { tail -n 30 "$STATE/build.log" >&2; fail "docker-compose build failed (log $STATE/build.log)"; }
}

start() {
    rm -f "$STATE/failure"
    mkdir -p "$STATE"
    install_packages
    start_engine
    base_image
    download_wheels
    build_image
    say "ready: $(docker-compose version --short 2>/dev/null || true), engine $(docker version -f '{{.Server.Version}}' 2>/dev/null)"
}

stop() {
    if command -v docker >/dev/null 2>&1 && engine_answers; then
        # projects a killed test run left behind (the test brings its own down)
        local project
        for project in $(docker ps -a --format '{{.Label "com.docker.compose.project"}}' | grep '^mirrordtest' | sort -u); do
            say "removing leftover compose project $project"
            timeout 120 "${COMPOSE[@]}" -p "$project" down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 || true
        done
        # earlier builds of mirrord:local, so a machine that keeps /var/lib/docker does not fill up
        timeout 120 docker image prune -f >/dev/null 2>&1 || true
    fi
    rm -rf "$WHEELS"
    if ! our_dockerd; then
        rm -f "$PIDFILE"
        return 0
    fi
    end_dockerd "$(cat "$PIDFILE")"
    rm -f "$PIDFILE"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
