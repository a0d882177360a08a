#!/usr/bin/env bash
# Warehouse on S3 vs a local warehouse (issue 6): imports a Synthea NDJSON set into both (S3 is
# moto's server on loopback, started here), then times the same SQL queries over Flight SQL,
# FHIR searches, and DuckDB over pyiceberg's read of the same tables, first run and warm.
# Prints a markdown table (bench/warehouse.py).
#
#   scripts/bench-warehouse.sh [NDJSON_DIR]
#
# Environment: FHIRLAKE_BIN (default: a fresh release build), RUNS (5 warm runs per step).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh

VENV=target/venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check \
  "pyiceberg[sql-sqlite]==0.12.0" "pyarrow==26.0.1" "duckdb==2.0.1" "requests==2.32.5" \
  "adbc-driver-flightsql==1.13.0" "adbc-driver-manager==1.13.0" "boto3==1.44.8" \
  "moto[server]==5.2.5"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fhirlake-bench-warehouse.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
"$VENV/bin/python" bench/warehouse.py "$BIN" "$DATA" "$WORK"
