#!/usr/bin/env bash
# Counts the instructions `maestro` runs per execute, under valgrind's
# callgrind: a count, not a time, so that it repeats on a shared, noisy
# machine where throughput ratios swing by a fifth from one run to the
# next. It is for telling whether a change to the request path does less
# work; `cargo xtask bench` stays the measure of speed.
#
#   scripts/instructions-per-execute.sh target/release/maestro            # RUST_LOG=warn
#   RUST_LOG=info scripts/instructions-per-execute.sh target/release/maestro
#
# Starts the binary on the embedded default under callgrind twice, sends
# N (default 450) executes of the demo pipeline, one at a time on one
# keep-alive connection, to the first and 2N to the second, and prints
# (instructions of the second - instructions of the first) / N: the cost
# of one execute, start-up and shutdown taken out. The demo pipeline
# queues at most 1,000 runs, so N stays at 500 or under.
#
# Only the connection's task is counted (`Server::spawn`'s: reading and
# parsing the request, routing, the middleware, the handler with its
# backend call, the answer and the access log), in user space: the
# feed's and the webhook dispatcher's tasks batch by time, so their share
# of a request follows how fast the machine is at the moment, and counted
# with them the same build spread by a fifth. Counted so, it repeats to
# within a few hundred instructions. Needs valgrind and python3.
set -euo pipefail

bin="${1:?usage: $0 path/to/maestro [executes]}"
n="${2:-450}"
port="${MAESTRO_INSTRUCTIONS_PORT:-18191}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

command -v valgrind > /dev/null || { echo "needs valgrind (Debian's package valgrind)" >&2; exit 1; }

# Instructions of one run of the binary that answers $1 executes.
count() {
    local executes="$1" out="$work/$1"
    MAESTRO_BIND="127.0.0.1:$port" RUST_LOG="${RUST_LOG:-warn}" \
        valgrind --tool=callgrind --toggle-collect='app::server::Server::spawn*' \
        --callgrind-out-file="$out.callgrind" "$bin" \
        > "$out.stdout" 2> "$out.stderr" &
    local server=$!
    for _ in $(seq 1 120); do
        grep -q "TOKEN=" "$out.stdout" 2> /dev/null && break
        kill -0 "$server" 2> /dev/null || break
        sleep 0.5
    done
    if ! grep -q "TOKEN=" "$out.stdout"; then
        echo "maestro did not start on port $port:" >&2
        cat "$out.stderr" >&2
        kill "$server" 2> /dev/null || true
        exit 1
    fi
    python3 - "$out.stdout" "$port" "$executes" <<'PY'
import http.client, re, sys
printed, port, executes = open(sys.argv[1]).read(), int(sys.argv[2]), int(sys.argv[3])
token = re.search(r"TOKEN=(\S+)", printed).group(1)
pipeline = re.search(r'"pipeline_id": "([^"]+)"', printed).group(1)
connection = http.client.HTTPConnection("127.0.0.1", port)
body = '{"pipeline_id": "%s"}' % pipeline
headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
for n in range(executes):
    connection.request("POST", "/platform/pipeline/execute", body, headers)
    answer = connection.getresponse()
    answer.read()
    if answer.status != 200:
        sys.exit(f"execute {n} answered {answer.status}")
PY
    kill -INT "$server"
    wait "$server" || true
    awk '/^(summary|totals):/ { print $2; exit }' "$out.callgrind"
}

first="$(count "$n")"
second="$(count $((2 * n)))"
echo "$(( (second - first) / n )) instructions per execute (RUST_LOG=${RUST_LOG:-warn}, $(basename "$bin"))"
