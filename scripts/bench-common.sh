# Shared set-up of the benchmarks (sourced by scripts/bench-rest.sh, bench-search.sh and
# bench-export.sh, from the repository root).
#
# Sets DATA (the NDJSON directory: $1 or the shared 585-patient set, else the shipped sample)
# and BIN (FHIRLAKE_BIN, else a fresh release build); with BENCH_NEEDS_WRK=1, installs wrk
# when absent.

DATA=${1:-../shared/data/synthea-r4-585p}
if [ ! -d "$DATA" ]; then
  echo "NOTE: $DATA is absent (the shared Synthea data); using the shipped sample data/synthea-r4-100p"
  DATA=data/synthea-r4-100p
fi

if [ -n "${FHIRLAKE_BIN:-}" ]; then
  BIN=$FHIRLAKE_BIN
else
  cargo build --release --bin fhirlake
  BIN=$PWD/target/release/fhirlake
fi

if [ "${BENCH_NEEDS_WRK:-}" = 1 ] && ! command -v wrk >/dev/null; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
  $SUDO apt-get install -y wrk || { $SUDO apt-get update && $SUDO apt-get install -y wrk; }
fi
