#!/usr/bin/env bash
# The test command: unit + integration tests, then interop with real Python clients
# (pyiceberg, DuckDB) against an installation built by the real binary.
# Needs cargo, python3 and node/npm; everything else (PyPI and npm packages) is installed into
# target/.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --all-targets -- -D warnings

echo "== cargo build + test (debug)"
cargo build --bins
cargo test --no-fail-fast 2>&1 | tee target/cargo-test.log
grep -q "test result: ok" target/cargo-test.log

echo "== interop (pyiceberg, duckdb)"
./scripts/interop.sh
