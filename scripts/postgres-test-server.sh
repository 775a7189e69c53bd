#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster on loopback, for Airflow's metadata
# database in the end-to-end tests, the Airflow bench and `cargo xtask
# stack`, and prints its URL on stdout (everything else goes to stderr):
#
#   url="$(scripts/postgres-test-server.sh)"   # postgresql://maestro:...@127.0.0.1:5440/airflow
#   scripts/postgres-test-server.sh stop       # stops it and deletes the cluster
#
# Idempotent: installs Debian's postgresql when it is missing, and reuses
# the cluster it started earlier while that one still answers. The cluster
# lives in MAESTRO_TEST_POSTGRES_DIR (default: maestro-postgres-test under
# TMPDIR or /tmp): its data, its unix socket, pid, port and password files,
# and its log. It listens on 127.0.0.1 only, on MAESTRO_TEST_POSTGRES_PORT
# or the first free port from 5440 on, runs without fsync (it is thrown
# away, and fast is what matters), and holds one database,
# MAESTRO_TEST_POSTGRES_DB (default `airflow`), owned by the superuser
# `maestro`, whose random password is in the URL. Over TCP it asks for that
# password (scram-sha-256); the unix socket, in the cluster's own
# directory, trusts local users, for this script's own set-up.
#
# PostgreSQL refuses to run as root: as root, the script runs the server as
# Debian's `postgres` user, and then the directory must be reachable by
# that user (a parent directory that is not, such as a home directory with
# mode 0700, makes the script keep the cluster under /tmp instead and say
# so).
set -euo pipefail

dir="${MAESTRO_TEST_POSTGRES_DIR:-${TMPDIR:-/tmp}/maestro-postgres-test}"
database="${MAESTRO_TEST_POSTGRES_DB:-airflow}"
user="maestro"

log() { echo "postgres-test-server: $*" >&2; }

# The newest installed server's programs: Debian keeps them out of PATH, in
# /usr/lib/postgresql/<major>/bin (where a client-only package has no initdb).
bindir() {
    local candidate
    for candidate in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
        if [[ -x "$candidate/initdb" && -x "$candidate/pg_ctl" ]]; then
            echo "$candidate"
            return 0
        fi
    done
    if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        dirname "$(command -v pg_ctl)"
    else
        return 1
    fi
}

# Runs a server program as the user the server runs as.
as_server() {
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Where the cluster's data and socket are: in $dir, or under /tmp when the
# server's user cannot reach $dir (recorded in $dir/cluster).
cluster_dir() {
    if [[ -f "$dir/cluster" ]]; then
        cat "$dir/cluster"
    else
        echo "$dir/cluster.d"
    fi
}

running_url() {
    local cluster bin port password
    cluster="$(cluster_dir)"
    [[ -f "$cluster/data/postmaster.pid" && -f "$dir/port" && -f "$dir/password" ]] || return 1
    bin="$(bindir)" || return 1
    port="$(cat "$dir/port")"
    password="$(cat "$dir/password")"
    as_server "$bin/pg_isready" -q -h "$cluster/run" -p "$port" || return 1
    echo "postgresql://$user:$password@127.0.0.1:$port/$database"
}

port_taken() {
    # A connection that succeeds means someone listens there.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

if [[ "${1:-start}" == "stop" ]]; then
    cluster="$(cluster_dir)"
    if [[ -f "$cluster/data/postmaster.pid" ]] && bin="$(bindir)"; then
        as_server "$bin/pg_ctl" -s -D "$cluster/data" stop -m fast -w -t 30 >&2 || true
        log "stopped"
    fi
    rm -rf "$cluster" "$dir/cluster" "$dir/port" "$dir/password"
    exit 0
fi

if ! bin="$(bindir)"; then
    log "installing Debian's postgresql"
    sudo=""
    [[ "$(id -u)" == 0 ]] || sudo="sudo"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >&2
    bin="$(bindir)"
fi

mkdir -p "$dir"
if url="$(running_url)"; then
    log "reusing the cluster on port $(cat "$dir/port")"
    echo "$url"
    exit 0
fi

# What an earlier run left behind (a stopped or crashed cluster) goes.
rm -rf "$(cluster_dir)" "$dir/cluster"
cluster="$dir/cluster.d"
mkdir -p "$cluster"
if [[ "$(id -u)" == 0 ]]; then
    chown postgres: "$cluster"
    # The socket path must also fit in a sockaddr_un (107 bytes).
    if ! runuser -u postgres -- test -w "$cluster" || ((${#cluster} > 80)); then
        rmdir "$cluster"
        cluster="$(mktemp -d /tmp/maestro-postgres-XXXXXX)"
        chown postgres: "$cluster"
        echo "$cluster" >"$dir/cluster"
        log "the postgres user cannot use $dir; the cluster lives in $cluster"
    fi
elif ((${#cluster} > 80)); then
    rmdir "$cluster"
    cluster="$(mktemp -d /tmp/maestro-postgres-XXXXXX)"
    echo "$cluster" >"$dir/cluster"
fi
as_server mkdir -m 0700 "$cluster/data" "$cluster/run"

port="${MAESTRO_TEST_POSTGRES_PORT:-}"
if [[ -z "$port" ]]; then
    for candidate in $(seq 5440 5540); do
        if ! port_taken "$candidate"; then
            port="$candidate"
            break
        fi
    done
    [[ -n "$port" ]] || { log "no free port in 5440-5540"; exit 1; }
fi
password="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"

as_server "$bin/initdb" -D "$cluster/data" -U "$user" --encoding=UTF8 --locale=C \
    --auth-local=trust --auth-host=scram-sha-256 --no-sync >/dev/null
# No fsync, no full-page writes, no waiting for the WAL flush: a crash loses
# the cluster, which is thrown away anyway. Airflow's API server, scheduler,
# DAG processor, triggerer and task processes each keep a pool of
# connections (up to 65 each in the harnesses), hence the headroom above
# the default 100.
as_server "$bin/pg_ctl" -s -D "$cluster/data" -l "$cluster/postgres.log" -w -t 60 start -o "\
 -c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$cluster/run\
 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400" >&2
echo "$port" >"$dir/port"
(umask 077 && echo "$password" >"$dir/password")

as_server "$bin/psql" -q -v ON_ERROR_STOP=1 -h "$cluster/run" -p "$port" -U "$user" -d postgres \
    -c "ALTER ROLE $user PASSWORD '$password'" -c "CREATE DATABASE $database" >&2
log "started on port $port (data in $cluster/data, log $cluster/postgres.log)"
echo "postgresql://$user:$password@127.0.0.1:$port/$database"
