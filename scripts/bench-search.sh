#!/usr/bin/env bash
# FHIR search benchmark: the release server over the 585-patient Synthea set and a 10x copy
# (bench/scale_data.py clones patients with new ids and consistent references), driven by wrk
# at concurrency 16 with the search mix of issue 4. Prints a markdown table per data set.
#
#   scripts/bench-search.sh [NDJSON_DIR]
#
# Environment: CONNECTIONS (16), DURATION (15s), SCALE (10; 0 skips the scaled run),
# FHIRLAKE_BIN (use this binary instead of building release), KEEP=1 (keep the data).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CONNECTIONS=${CONNECTIONS:-16}
DURATION=${DURATION:-15s}
SCALE=${SCALE:-10}
THREADS=$(nproc)

BENCH_NEEDS_WRK=1
# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh

# DuckDB and pyiceberg for the comparison, in the same venv the interop tests use.
VENV=target/venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check \
  "pyiceberg[sql-sqlite]==0.12.0" "pyarrow==26.0.1" "duckdb==2.0.1"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fhirlake-bench-search.XXXXXX")
SERVER_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
cleanup() {
  stop_server
  if [ "${KEEP:-}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

sql() { "$BIN" --data-dir "$1" sql --format csv -e "$2" | tail -n +2; }

# bench_one LABEL NDJSON_DIR
bench_one() {
  local label=$1 data=$2 dd=$WORK/$1
  echo "== $label: import $data"
  local t0 t1
  t0=$(date +%s.%N)
  "$BIN" --data-dir "$dd" import "$data" --quiet | sed -n 1p
  t1=$(date +%s.%N)
  echo "import took $(python3 -c "print(round($t1 - $t0, 1))") s"

  local q=$dd/queries
  mkdir -p "$q"
  # Sample values straight from the tables.
  sql "$dd" "SELECT substr(subject.reference, 9), code.coding[1].code FROM observation
             WHERE subject.reference IS NOT NULL ORDER BY id LIMIT 300" > "$q/obs_pairs"
  sql "$dd" "SELECT code.coding[1].code FROM condition GROUP BY 1
             ORDER BY count(*) DESC LIMIT 20" > "$q/common_conditions"
  sql "$dd" "SELECT code.coding[1].code FROM condition GROUP BY 1
             HAVING count(*) BETWEEN 2 AND 100 ORDER BY count(*) DESC LIMIT 20" > "$q/rare_conditions"
  sql "$dd" "SELECT substr(name[1].family, 1, 4) FROM patient ORDER BY id LIMIT 100" > "$q/families"
  sql "$dd" "SELECT code.coding[1].code FROM observation GROUP BY 1
             ORDER BY count(*) DESC LIMIT 10" > "$q/common_obs"

  "$BIN" --data-dir "$dd" serve --http 127.0.0.1:0 > "$WORK/$label.serve.out" 2> "$WORK/$label.serve.err" &
  SERVER_PID=$!
  local base=""
  for _ in $(seq 1 100); do
    base=$(grep -o 'http://[^ ]*/r4/' "$WORK/$label.serve.out" 2>/dev/null || true)
    [ -n "$base" ] && break
    sleep 0.2
  done
  [ -n "$base" ] || { echo "server did not start" >&2; cat "$WORK/$label.serve.err" >&2; exit 1; }
  local host=${base%/datastore/*} path=/datastore/${base#*/datastore/}

  awk -F, -v p="$path" '{print p "Observation?patient=" $1 "&code=" $2}' "$q/obs_pairs" > "$q/s1"
  awk -v p="$path" '{print p "Condition?code=" $1 "&_include=Condition:subject"}' "$q/common_conditions" > "$q/s2"
  awk -v p="$path" '{print p "Patient?name=" $1 "&birthdate=ge1970"}' "$q/families" > "$q/s3"
  awk -v p="$path" '{print p "Patient?_has:Condition:patient:code=" $1}' "$q/rare_conditions" > "$q/s4"
  awk -F, -v p="$path" '{print p "Observation?patient=" $1 "&_sort=-date&_count=50"}' "$q/obs_pairs" > "$q/s5"
  # Page 5 of a paged search: follow four next links now; the cursors pin the snapshot.
  : > "$q/s6"
  while read -r code; do
    url="${base}Observation?code=${code}&_count=20"
    for _ in 1 2 3 4; do
      url=$(curl -s "$url" | python3 -c "import sys,json; d=json.load(sys.stdin); print(next((l['url'] for l in d.get('link',[]) if l['relation']=='next'), ''))")
      [ -n "$url" ] || break
    done
    [ -n "$url" ] && echo "/datastore/${url#*/datastore/}" >> "$q/s6"
  done < "$q/common_obs"
  cat "$q"/s[1-6] | shuf --random-source=<(yes) > "$q/mix"

  echo "== $label: warm-up"
  wrk -t1 -c2 -d3s -s bench/search/urls.lua "$host" -- "$q/mix" > /dev/null

  printf '\n| %s: scenario | searches/s | p50 ms | p99 ms | non-2xx |\n|---|---|---|---|---|\n' "$label" > "$WORK/$label.table"
  for s in s1:"Observation?patient=X&code=Y" s2:"Condition?code=..&_include=Condition:subject" \
           s3:"Patient?name=..&birthdate=ge1970" s4:"Patient?_has:Condition:patient:code=.." \
           s5:"Observation?patient=X&_sort=-date&_count=50" s6:"page 5 of Observation?code=..&_count=20" \
           mix:"mix of all"; do
    local file=${s%%:*} name=${s#*:}
    [ -s "$q/$file" ] || { echo "no requests for $name" >&2; continue; }
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --timeout 30s -s bench/search/urls.lua "$host" -- "$q/$file" | grep '^RESULT')
    python3 - "$name" "$out" >> "$WORK/$label.table" <<'PY'
import sys
name, line = sys.argv[1], sys.argv[2]
kv = dict(p.split("=") for p in line.split()[1:])
rps = int(kv["requests"]) / (int(kv["duration_us"]) / 1e6)
errors = int(kv["non2xx"]) + int(kv["socket_errors"])
print(f"| {name} | {rps:,.0f} | {int(kv['p50_us'])/1000:.1f} | {int(kv['p99_us'])/1000:.1f} | {errors} |")
PY
  done
  echo "== $label: DuckDB on the same Parquet files (sequential, one client each)"
  "$VENV/bin/python" bench/search/duckdb_compare.py "$dd" "$q" "$base" >> "$WORK/$label.table"
  stop_server
  cat "$WORK/$label.table"
}

bench_one base "$DATA"
if [ "$SCALE" -gt 1 ]; then
  echo "== scaling $DATA x$SCALE"
  python3 bench/scale_data.py "$DATA" "$WORK/scaled" "$SCALE" | tail -1
  bench_one "x$SCALE" "$WORK/scaled"
fi
echo
cat "$WORK"/*.table
