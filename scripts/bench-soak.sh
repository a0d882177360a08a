#!/usr/bin/env bash
# Soak: the REST bench 10 times back to back on one server with clients abandoning writes
# mid-request next to wrk (no non-2xx answer allowed, the lake must catch up after every
# write scenario), then 20 kill -9 trials of the release server under concurrent writers
# plus abandoning clients (no acknowledged write may be lost, every restart must serve).
#
#   scripts/bench-soak.sh [NDJSON_DIR]
#
# Environment: REPEAT (10), CRASH_ROUNDS (20), DURATION (10s), and bench-rest.sh's.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh
export FHIRLAKE_BIN=$BIN

echo "== REST bench x${REPEAT:-10} with abandoning clients"
REPEAT=${REPEAT:-10} DISCONNECTS=1 DURATION=${DURATION:-10s} scripts/bench-rest.sh "$DATA"

echo "== ${CRASH_ROUNDS:-20} kill -9 trials under writers and abandoning clients ($BIN)"
CRASH_ROUNDS=${CRASH_ROUNDS:-20} cargo test --test it \
  api_crash::kill_9_during_rest_writes_loses_no_acknowledged_write -- --nocapture 2>&1 |
  tee "${TMPDIR:-/tmp}/fhirlake-soak-crash.log" | grep -E '^crash test:|test result|panicked'
grep -q "test result: ok. 1 passed" "${TMPDIR:-/tmp}/fhirlake-soak-crash.log"
echo "soak: passed"
