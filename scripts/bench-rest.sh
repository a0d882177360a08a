#!/usr/bin/env bash
# REST load benchmark: the release server with the 585-patient Synthea set loaded, driven by
# wrk at a fixed concurrency, one scenario at a time: read by id, create, update, and a
# transaction Bundle of 100 Patient creates. Prints a markdown table.
#
#   scripts/bench-rest.sh [NDJSON_DIR]
#
# Environment: CONNECTIONS (32), DURATION (15s), THREADS (wrk threads, default min(4, nproc)),
# REPEAT (run the four scenarios this many times on the same server, default 1),
# DISCONNECTS=1 (during every scenario, bench/rest/disconnect.py abandons writes mid-request
# on DISCONNECT_CLIENTS (8) more connections; their requests are not counted),
# ENTRIES (100, Bundle size), TIMEOUT (wrk request timeout, 30s), FHIRLAKE_BIN (use this binary instead of building release),
# KEEP=1 (keep the temporary data directory).
# Needs cargo, python3, curl and wrk (installed with apt-get when absent).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

CONNECTIONS=${CONNECTIONS:-32}
DURATION=${DURATION:-15s}
NPROC=$(nproc)
THREADS=${THREADS:-$((NPROC < 4 ? NPROC : 4))}
ENTRIES=${ENTRIES:-100}
# wrk counts a request slower than its timeout (default 2 s) as a socket error and drops its
# latency; a 100-entry transaction at concurrency 32 can take that long.
TIMEOUT=${TIMEOUT:-30s}
READ_IDS=1000
REPEAT=${REPEAT:-1}
DISCONNECTS=${DISCONNECTS:-}
DISCONNECT_CLIENTS=${DISCONNECT_CLIENTS:-8}

BENCH_NEEDS_WRK=1
# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fhirlake-bench-rest.XXXXXX")
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  if [ "${KEEP:-}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
DD=$WORK/data

echo "== import $DATA"
"$BIN" --data-dir "$DD" import "$DATA" --quiet | tee "$WORK/import.out"
if ! grep -q '^Imported [1-9]' "$WORK/import.out" || ! grep -q '; 0 failed' "$WORK/import.out"; then
  echo "the import failed (see the report above); stopping" >&2
  exit 1
fi

# Known ids, read before the server holds the data directory: Patient ids (all of them, up
# to READ_IDS) topped up with Observation ids to READ_IDS for the read scenario.
sql_ids() { "$BIN" --data-dir "$DD" sql -e "$1" --format csv | tail -n +2; }
sql_ids "SELECT id FROM patient ORDER BY id LIMIT $READ_IDS" >"$WORK/patient-ids.txt"
N_PATIENTS=$(wc -l <"$WORK/patient-ids.txt")
sed 's|^|Patient/|' "$WORK/patient-ids.txt" >"$WORK/read-paths.txt"
N_OBS=0
if [ "$N_PATIENTS" -lt "$READ_IDS" ]; then
  sql_ids "SELECT id FROM observation ORDER BY id LIMIT $((READ_IDS - N_PATIENTS))" |
    sed 's|^|Observation/|' >>"$WORK/read-paths.txt"
  N_OBS=$((READ_IDS - N_PATIENTS))
fi
[ "$N_PATIENTS" -gt 0 ] || { echo "no Patient in $DATA" >&2; exit 1; }

# Request bodies from the first Synthea Patient: without its id for creates; with "__ID__"
# and "__FAMILY__" placeholders for updates.
FIRST_PATIENT=$(find "$DATA" -name 'Patient.ndjson*' -print -quit)
python3 - "$WORK" "$FIRST_PATIENT" <<'EOF'
import gzip, json, sys
work, src = sys.argv[1], sys.argv[2]
with (gzip.open if src.endswith(".gz") else open)(src, "rt", encoding="utf-8") as f:
    p = json.loads(f.readline())
p.pop("id", None)
p.pop("meta", None)
json.dump(p, open(f"{work}/patient.json", "w"), separators=(",", ":"), ensure_ascii=False)
t = {"resourceType": "Patient", "id": "__ID__"}
t.update((k, v) for k, v in p.items() if k != "resourceType")
t["name"] = [dict(t.get("name", [{}])[0], family="__FAMILY__")] + t.get("name", [])[1:]
json.dump(t, open(f"{work}/patient-template.json", "w"), separators=(",", ":"), ensure_ascii=False)
EOF

echo "== serve"
"$BIN" --data-dir "$DD" serve --http 127.0.0.1:0 >"$WORK/server.out" 2>"$WORK/server.log" &
SERVER_PID=$!
BASE=""
for _ in $(seq 1 300); do
  BASE=$(sed -n "s/^FHIR R4 base URL of data store 'fhir': //p" "$WORK/server.out" | head -1)
  [ -n "$BASE" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$BASE" ] || { echo "the server printed no base URL" >&2; exit 1; }
BASE=${BASE%/}
BASE_PATH=/${BASE#http://*/}
echo "base URL: $BASE"

# Seconds until $lake-status reports inSync (the background lake sync has caught up).
wait_in_sync() {
  local start now
  start=$(date +%s.%N)
  for _ in $(seq 1 1200); do
    if curl -sf "$BASE/\$lake-status" | grep -q '"inSync":true'; then
      now=$(date +%s.%N)
      python3 -c "print(f'{$now - $start:.1f}')"
      return
    fi
    sleep 0.1
  done
  echo "timeout"
}

ROWS=()
# run NAME SCRIPT RESOURCES_PER_REQUEST LAKE(yes/no) ARGS...
run() {
  local name=$1 script=$2 per=$3 lake=$4
  shift 4
  echo "== $name: wrk -t$THREADS -c$CONNECTIONS -d$DURATION"
  local storm=""
  if [ -n "$DISCONNECTS" ]; then
    python3 "$ROOT/bench/rest/disconnect.py" "$BASE" "$WORK/patient.json" "${DURATION%s}" \
      "$DISCONNECT_CLIENTS" >"$WORK/disconnect.out" &
    storm=$!
  fi
  LUA_PATH="$ROOT/bench/rest/?.lua;;" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --timeout "$TIMEOUT" --latency \
    -s "$ROOT/bench/rest/$script" "$BASE/" -- "$BASE_PATH" "$@" | tee "$WORK/$script.out"
  if [ -n "$storm" ]; then
    wait "$storm"
    ABANDONED=$((ABANDONED + $(sed -n 's/^ABANDONED n=//p' "$WORK/disconnect.out")))
  fi
  local result catchup="-"
  result=$(grep '^RESULT ' "$WORK/$script.out" | tail -1)
  [ -n "$result" ] || { echo "wrk printed no RESULT line" >&2; exit 1; }
  if [ "$lake" = yes ]; then catchup=$(wait_in_sync); fi
  ROWS+=("$(python3 - "$name" "$per" "$catchup" "$result" <<'EOF'
import sys
name, per, catchup, result = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
r = dict(kv.split("=") for kv in result.split()[1:])
secs = int(r["duration_us"]) / 1e6
n, bad = int(r["requests"]), int(r["non2xx"])
ok = n - bad
errors = f"{bad}" + (f" (+{r['socket_errors']} socket)" if int(r["socket_errors"]) else "")
print(f"| {name} | {n / secs:,.0f} | {ok * per / secs:,.0f} | {int(r['p50_us']) / 1000:.1f} ms "
      f"| {int(r['p99_us']) / 1000:.1f} ms | {errors} | {catchup} |")
EOF
)")
}

ABANDONED=0
for round in $(seq 1 "$REPEAT"); do
  tag=""
  [ "$REPEAT" -gt 1 ] && tag=" #$round"
  run "read by id ($N_PATIENTS Patient + $N_OBS Observation ids)$tag" read.lua 1 no "$WORK/read-paths.txt"
  run "create Patient (POST)$tag" create.lua 1 yes "$WORK/patient.json"
  run "update Patient (PUT, $N_PATIENTS ids)$tag" update.lua 1 yes "$WORK/patient-ids.txt" "$WORK/patient-template.json"
  run "transaction Bundle ($ENTRIES Patient POSTs)$tag" transaction.lua "$ENTRIES" yes "$WORK/patient.json" "$ENTRIES"
done

echo "== stop (SIGTERM)"
STOP_START=$(date +%s.%N)
kill -TERM "$SERVER_PID"
wait "$SERVER_PID"
SERVER_PID=""
STOP_SECS=$(python3 -c "print(f'{$(date +%s.%N) - $STOP_START:.1f}')")
PATIENTS=$("$BIN" --data-dir "$DD" sql -e "SELECT count(*) FROM patient" --format csv | tail -1)

echo
echo "REST benchmark: $(basename "$DATA"), wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $NPROC CPUs, $(basename "$BIN") $(git describe --always --dirty 2>/dev/null || true)"
echo "Writes send 'Prefer: return=minimal'. Lake catch-up: seconds after the scenario until \$lake-status is inSync."
echo
echo "| scenario | requests/s | resources/s | p50 | p99 | errors (non-2xx) | lake catch-up s |"
echo "|---|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
echo
echo "Graceful stop: ${STOP_SECS} s; Patient rows in SQL afterwards: $PATIENTS."
if [ -n "$DISCONNECTS" ]; then
  echo "Abandoned write requests (reset mid-body, 0-3 ms after the request, or mid-response; not in the table): $ABANDONED."
fi
# Any non-2xx answer or a lake that did not catch up fails the run (the soak relies on it).
if printf '%s\n' "${ROWS[@]}" | awk -F'|' '$7 !~ /^ *0 *$/ || $8 ~ /timeout/ {bad=1} END {exit !bad}'; then
  echo "FAILED: a scenario had non-2xx answers or the lake did not catch up" >&2
  exit 1
fi
