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
  "pyiceberg[sql-sqlite]==0.12.0" "pyarrow==26.0.1" "duckdb==2.0.1" "requests==2.32.5" \
  "polars==2.1.0" "polars-iceberg==0.1.0" "pandas==3.1.1" "matplotlib==3.11.2" \
  "nbclient==0.11.0" "nbformat==5.11.1" "ipykernel==7.4.0" \
  "adbc-driver-flightsql==1.13.0" "adbc-driver-manager==1.13.0" "boto3==1.44.8" \
  "moto[server]==5.2.5" "pyjwt==2.15.1" "cryptography==50.0.2" "fhirpy==2.3.1"

BIN=target/debug/fhirlake
DATA=target/interop-data
rm -rf "$DATA"
"$BIN" --data-dir "$DATA" import data/ --quiet
"$VENV/bin/python" tests/interop/test_lake.py "$DATA" data/ "$BIN"

# The FHIR REST API driven by an independent HTTP client; writes must reach SQL.
rm -rf target/interop-rest
"$VENV/bin/python" tests/interop/test_rest.py "$BIN" target/interop-rest

# The 585-patient set (../shared), if present: SQL counts equal the NDJSON's distinct ids, and an
# export of it imported into a second data store gives equal SQL tables (ids and content).
rm -rf target/interop-585p
"$VENV/bin/python" tests/interop/test_585p.py "$BIN" ../shared/data target/interop-585p

# The notebook access paths (docs/notebooks.md) on the installation built above: every table
# through pyiceberg, DuckDB and polars, examples/analysis.py and examples/conditions_by_age.ipynb
# (run by nbclient) against the SQL CLI. DuckDB's iceberg extension is on PyPI only as builds for
# duckdb 1.5.5, which refuse duckdb 2, so iceberg_scan is checked from a venv of its own.
ICEBERG_VENV=target/venv-duckdb-iceberg
if [ ! -x "$ICEBERG_VENV/bin/python" ]; then
  python3 -m venv "$ICEBERG_VENV"
fi
"$ICEBERG_VENV/bin/pip" install -q --disable-pip-version-check \
  "duckdb==1.5.5" "duckdb-extension-iceberg==1.5.5" "duckdb-extension-avro==1.5.5"
FHIRLAKE_DUCKDB_ICEBERG_PYTHON="$ICEBERG_VENV/bin/python" \
  "$VENV/bin/python" tests/interop/test_notebook.py "$DATA" "$BIN"

# The Flight SQL endpoint driven by ADBC's Flight SQL driver (pandas via ADBC too): the seed's SQL
# examples against the CLI, prepared statements, metadata, USE, a 10M-row result, cancellation,
# auth, memory and time limits (tests/interop/test_flight.py).
rm -rf target/interop-flight
"$VENV/bin/python" tests/interop/test_flight.py "$BIN" target/interop-flight

# The HealthLake control plane driven by boto3's healthlake client (endpoint override): data
# stores, tags, import jobs, quotas, SigV4 (tests/interop/test_control.py).
rm -rf target/interop-control
"$VENV/bin/python" tests/interop/test_control.py "$BIN" target/interop-control

# Import and export jobs on s3:// locations against moto's S3 server (started by the test on
# loopback): inputs, reports and exports in buckets, allowed S3 roots; and an installation whose
# Iceberg warehouse is in a bucket (import, SQL, search, deletes, export, pyiceberg, purge)
# (tests/interop/test_s3.py).
rm -rf target/interop-s3
"$VENV/bin/python" tests/interop/test_s3.py "$BIN" target/interop-s3

# SMART on FHIR against a real OAuth2/OIDC server: oauth2-mock-server from npm (pinned by
# tests/interop/idp/package-lock.json, installed into target/idp; it declares Node 22 but runs on
# Node 20) issues RS256 and ES256 tokens through tests/interop/idp/mock_idp.js; boto3 creates SMART
# data stores, requests and fhirpy call the FHIR API, PyJWT + cryptography forge the bad tokens
# (tests/interop/test_smart.py).
mkdir -p target/idp
cp tests/interop/idp/package.json tests/interop/idp/package-lock.json target/idp/
npm ci --prefix target/idp --no-audit --no-fund --loglevel=error
rm -rf target/interop-smart
"$VENV/bin/python" tests/interop/test_smart.py "$BIN" target/interop-smart
