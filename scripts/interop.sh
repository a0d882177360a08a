#!/usr/bin/env bash
# Interop with clients nobody here wrote: builds an installation from the shipped sample with
# the real binary, then checks it with pyiceberg and DuckDB from PyPI (installed into a venv
# under target/).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check \
  "pyiceberg[sql-sqlite]==0.12.0" "pyarrow==26.0.1" "duckdb==2.0.1" "requests==2.32.5"

BIN=target/debug/fhirlake
DATA=target/interop-data
rm -rf "$DATA"
"$BIN" --data-dir "$DATA" import data/ --quiet
"$VENV/bin/python" tests/interop/test_lake.py "$DATA" data/ "$BIN"

# The FHIR REST API driven by an independent HTTP client; writes must reach SQL.
rm -rf target/interop-rest
"$VENV/bin/python" tests/interop/test_rest.py "$BIN" target/interop-rest

# The 585-patient set (../shared), if present: SQL counts equal the NDJSON's distinct ids.
rm -rf target/interop-585p
"$VENV/bin/python" tests/interop/test_585p.py "$BIN" ../shared/data target/interop-585p
