#!/usr/bin/env bash
# Cost of SMART token verification on the REST read path: reads by id on a SMART data store
# (ES256 bearer token, JWKS on loopback) next to the same reads on an AWS_AUTH data store
# without credentials, same server, same Patients, alternating runs (bench/auth/bench_auth.py).
#
#   scripts/bench-auth.sh [NDJSON_DIR]
#
# Environment: CONNECTIONS (32), DURATION (10s), ROUNDS (3), FHIRLAKE_BIN, KEEP=1.
# Needs cargo, python3 and wrk (installed with apt-get when absent); PyJWT and cryptography
# are installed into target/venv.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_NEEDS_WRK=1
# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh
VENV=target/venv
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "pyjwt==2.15.1" "cryptography==50.0.2" "requests==2.32.5"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fhirlake-bench-auth.XXXXXX")
trap '[ "${KEEP:-}" = 1 ] && echo "kept $WORK" || rm -rf "$WORK"' EXIT
"$VENV/bin/python" bench/auth/bench_auth.py "$BIN" "$WORK" "$DATA" "${CONNECTIONS:-32}" \
  "${DURATION:-10s}" "${ROUNDS:-3}"
