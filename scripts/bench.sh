#!/usr/bin/env bash
# Benchmark: import of the 585-patient Synthea set and the guide's join queries, next to DuckDB
# on the same data in the same run. Prints a table. Needs ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/synthea-r4-585p}
if [ ! -d "$DATA" ]; then
  echo "SKIP: $DATA is absent (the benchmark needs the shared Synthea data)"; exit 0
fi
cargo build --release --bins
VENV=target/venv
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "duckdb==2.0.1" "pyarrow==26.0.1" \
  "adbc-driver-flightsql==1.13.0" "adbc-driver-manager==1.13.0"
"$VENV/bin/python" bench/bench.py target/release/fhirlake "$DATA"
