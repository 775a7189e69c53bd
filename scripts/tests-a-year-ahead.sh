#!/usr/bin/env bash
# Runs the unit, wiremock and black-box tests again with the wall clock a
# year ahead, so that a test whose result depends on today's date (a fixed
# date in a fake meeting a window measured from "now") fails today rather
# than on the day the date comes round.
#
# Only the test binaries run under the faked clock (they are Cargo's
# runner); cargo and rustc see the real one, so nothing is rebuilt. The
# monotonic clock is left alone: timeouts and tokio's timers still run at
# their real pace. Doctests are left out, as rustdoc runs them itself.
#
#   scripts/tests-a-year-ahead.sh            # a year ahead
#   MAESTRO_CLOCK_OFFSET=+3650d scripts/tests-a-year-ahead.sh
#
# Installs Debian's faketime when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

offset="${MAESTRO_CLOCK_OFFSET:-+365d}"

if ! command -v faketime >/dev/null; then
    echo "tests-a-year-ahead: installing Debian's faketime" >&2
    sudo=""
    [[ "$(id -u)" == 0 ]] || sudo="sudo"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq faketime >&2
fi

host="$(rustc -vV | sed -n 's/^host: //p')"
runner_var="CARGO_TARGET_$(echo "$host" | tr 'a-z-' 'A-Z_')_RUNNER"
echo "tests-a-year-ahead: the test binaries run at $(faketime -f "$offset" date -u +%FT%TZ)" >&2
export FAKETIME_DONT_FAKE_MONOTONIC=1
export "$runner_var=faketime -f $offset"
exec cargo test --workspace --locked --tests "$@"
