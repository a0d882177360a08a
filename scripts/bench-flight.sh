#!/usr/bin/env bash
# Flight SQL fetch benchmark: time to first batch and total time to fetch
# `SELECT * FROM observation` into pyarrow through ADBC (adbc_driver_flightsql) from
# `fhirlake serve`, next to DuckDB reading the same table's current Parquet data files directly
# (read_parquet of pyiceberg's plan_files(); position deletes are not applied there). Each 3
# times (RUNS), best and median. Prints a markdown table.
#
#   scripts/bench-flight.sh [DATA]
#
# DATA: a fhirlake data directory (an installation, holding catalog.db), or a directory of
# FHIR NDJSON to import first into a temporary one. Default: the 585-patient Synthea set
# ../shared/data/synthea-r4-585p, else the shipped sample data/synthea-r4-100p.
# NDJSON is also scaled SCALE times (bench/scale_data.py: cloned patients with new ids and
# consistent references) and benchmarked again.
# Environment: FHIRLAKE_BIN (default: a fresh release build),
# RUNS (3), SCALE (10; 0 skips the scaled run), KEEP=1 (keep the temporary data directories).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
SCALE=${SCALE:-10}
DATA=${1:-../shared/data/synthea-r4-585p}
if [ -z "${1:-}" ] && [ ! -d "$DATA" ]; then
  echo "NOTE: $DATA is absent (the shared Synthea data); using the shipped sample data/synthea-r4-100p"
  DATA=data/synthea-r4-100p
fi
if [ ! -d "$DATA" ]; then
  echo "no such directory: $DATA" >&2
  exit 1
fi

BIN=${FHIRLAKE_BIN:-target/release/fhirlake}
if [ -z "${FHIRLAKE_BIN:-}" ]; then
  cargo build --release --bin fhirlake
fi
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

# The interop venv (scripts/interop.sh) has every client this needs, at the same pins.
VENV=target/venv
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check \
  "adbc-driver-flightsql==1.13.0" "adbc-driver-manager==1.13.0" "pyarrow==26.0.1" \
  "pandas==3.1.1" "pyiceberg[sql-sqlite]==0.12.0" "duckdb==2.0.1"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fhirlake-bench-flight.XXXXXX")
cleanup() {
  if [ "${KEEP:-}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# bench_one LABEL DIR: DIR is an installation, or NDJSON imported first (import time printed,
# for comparison with the fetch).
bench_one() {
  local label=$1 dir=$2 dd
  if [ -f "$dir/catalog.db" ]; then
    dd=$dir
  else
    dd=$WORK/$label
    echo "== $label: import $dir"
    local t0 t1
    t0=$(date +%s.%N)
    "$BIN" --data-dir "$dd" import "$dir" --quiet | tee "$WORK/import.out"
    t1=$(date +%s.%N)
    echo "import took $(python3 -c "print(round($t1 - $t0, 1))") s"
    if ! grep -q '^Imported [1-9]' "$WORK/import.out" || ! grep -q '; 0 failed' "$WORK/import.out"; then
      echo "the import failed (see the report above); stopping" >&2
      exit 1
    fi
  fi
  echo "== $label: fetch Observation: $BIN, $(nproc) cores, $RUNS runs each"
  "$VENV/bin/python" tests/interop/bench_flight.py "$BIN" "$dd" "$RUNS"
}

bench_one base "$DATA"
if [ "$SCALE" -gt 1 ] && [ ! -f "$DATA/catalog.db" ]; then
  echo "== scaling $DATA x$SCALE"
  python3 bench/scale_data.py "$DATA" "$WORK/scaled" "$SCALE" | tail -1
  bench_one "x$SCALE" "$WORK/scaled"
fi
