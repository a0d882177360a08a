#!/usr/bin/env bash
# Export benchmark (issue 6): import a Synthea NDJSON set into a fresh installation, export its
# default data store with `fhirlake export`, and print both throughputs side by side (target:
# export at least as fast as import). Runs the 585-patient set and a SCALE-times copy
# (bench/scale_data.py).
#
#   scripts/bench-export.sh [NDJSON_DIR]
#
# Environment: FHIRLAKE_BIN (default: a fresh release build), SCALE (10; 0 skips the scaled
# run), KEEP=1 (keep the data).
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-10}

# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fhirlake-bench-export.XXXXXX")
cleanup() {
  if [ "${KEEP:-}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

ROWS=()
bench_one() {
  local label=$1 data=$2 dd=$WORK/$1
  local mb t0 t1 imported import_s export_line exported export_s export_mb
  mb=$(du -sm "$data" | cut -f1)
  echo "== $label: import $data ($mb MB gzipped NDJSON)"
  t0=$(date +%s.%N)
  "$BIN" --data-dir "$dd" import "$data" --quiet > "$WORK/$label-import.out"
  t1=$(date +%s.%N)
  import_s=$(python3 -c "print(round($t1 - $t0, 1))")
  imported=$(sed -n 's/^Imported \([0-9]*\) resources.*/\1/p' "$WORK/$label-import.out")
  head -1 "$WORK/$label-import.out"
  echo "== $label: export"
  export_line=$("$BIN" --data-dir "$dd" export "$WORK/$label-export")
  echo "$export_line"
  exported=$(python3 -c "import json; print(json.load(open('$WORK/$label-export/manifest.json'))['numberOfResourcesExported'])")
  export_s=$(python3 -c "import json; print(round(json.load(open('$WORK/$label-export/manifest.json'))['seconds'], 1))")
  export_mb=$(python3 -c "import json; print(round(json.load(open('$WORK/$label-export/manifest.json'))['bytesExported'] / 1e6, 1))")
  # Lines with an id seen before are new versions: the export holds each id once.
  [ "$exported" = "$imported" ] || echo "note: $imported lines imported, $exported current resources exported"
  ROWS+=("| $label | $imported / $exported | $import_s | $(python3 -c "print(round($imported / $import_s))") | $export_s | $(python3 -c "print(round($exported / $export_s))") | $(python3 -c "print(round($export_mb / $export_s, 1))") | $export_mb |")
  rm -rf "$WORK/$label-export"
}

bench_one base "$DATA"
if [ "$SCALE" -gt 1 ]; then
  echo "== scaling $DATA x$SCALE"
  python3 bench/scale_data.py "$DATA" "$WORK/scaled" "$SCALE" | tail -1
  bench_one "x$SCALE" "$WORK/scaled"
fi

echo
echo "$BIN, $(nproc) cores. Import: NDJSON -> store -> Iceberg (wall clock of \`fhirlake import\`)."
echo "Export: store -> NDJSON of the current versions (\`fhirlake export\`, its own timing)."
echo
echo "| data | resources (imported / exported) | import s | import res/s | export s | export res/s | export MB/s | export MB |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
