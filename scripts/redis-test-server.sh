#!/usr/bin/env bash
# Starts a throwaway redis-server on loopback for the Redis tests, and
# prints its URL on stdout (everything else goes to stderr).
#
#   export MAESTRO_TEST_REDIS_URL="$(scripts/redis-test-server.sh)"
#   cargo test -p adapter-redis --features redis-server --test redis_server
#   scripts/redis-test-server.sh stop
#
# Idempotent: installs Debian's redis-server when it is missing, and reuses
# the server it started earlier while that one still answers. The server
# keeps nothing on disk (no RDB snapshots, no AOF) and listens on
# 127.0.0.1 only, on MAESTRO_TEST_REDIS_PORT or the first free port from
# 6390 on. Its pid file, log and state live in MAESTRO_TEST_REDIS_DIR
# (default: maestro-redis-test under TMPDIR or /tmp).
set -euo pipefail

dir="${MAESTRO_TEST_REDIS_DIR:-${TMPDIR:-/tmp}/maestro-redis-test}"
pidfile="$dir/redis.pid"
portfile="$dir/port"

log() { echo "redis-test-server: $*" >&2; }

running_port() {
    [[ -f "$pidfile" && -f "$portfile" ]] || return 1
    local pid port
    pid="$(cat "$pidfile")"
    port="$(cat "$portfile")"
    kill -0 "$pid" 2>/dev/null || return 1
    [[ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" == "PONG" ]] || return 1
    echo "$port"
}

port_taken() {
    # A connection that succeeds means someone listens there.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

if [[ "${1:-start}" == "stop" ]]; then
    if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        kill "$(cat "$pidfile")"
        log "stopped"
    fi
    rm -f "$pidfile" "$portfile"
    exit 0
fi

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    log "installing Debian's redis-server"
    sudo=""
    [[ "$(id -u)" == 0 ]] || sudo="sudo"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >&2
fi

mkdir -p "$dir"
if port="$(running_port)"; then
    log "reusing the server on port $port"
    echo "redis://127.0.0.1:$port"
    exit 0
fi

port="${MAESTRO_TEST_REDIS_PORT:-}"
if [[ -z "$port" ]]; then
    for candidate in $(seq 6390 6490); do
        if ! port_taken "$candidate"; then
            port="$candidate"
            break
        fi
    done
    [[ -n "$port" ]] || { log "no free port in 6390-6490"; exit 1; }
fi

redis-server \
    --bind 127.0.0.1 \
    --port "$port" \
    --protected-mode yes \
    --save '' \
    --appendonly no \
    --daemonize yes \
    --pidfile "$pidfile" \
    --logfile "$dir/redis.log" \
    --dir "$dir" >&2
echo "$port" >"$portfile"

for _ in $(seq 1 50); do
    if [[ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" == "PONG" ]]; then
        log "started on port $port"
        echo "redis://127.0.0.1:$port"
        exit 0
    fi
    sleep 0.1
done
log "redis-server did not answer on port $port; see $dir/redis.log"
exit 1
