"""Flight SQL fetch benchmark: `SELECT * FROM observation` through ADBC (adbc_driver_flightsql)
from a running `fhirlake serve`, next to DuckDB reading the table's current Parquet data files
directly (the files pyiceberg plans for the current snapshot), same machine, same run.

Usage: bench_flight.py FHIRLAKE_BIN DATA_DIR [RUNS]
DATA_DIR is a fhirlake installation (imported); its default data store's Observation table is
read. Prints a markdown table with the best and the median of RUNS (default 3) runs.
"""
import os
import pathlib
import re
import statistics
import subprocess
import sys
import threading
import time
import warnings

import adbc_driver_flightsql.dbapi as flight_sql
import duckdb
import pyarrow
from pyiceberg.catalog.sql import SqlCatalog

warnings.simplefilter("ignore")  # ADBC: "Cannot disable autocommit"

binary = os.path.abspath(sys.argv[1])
data = pathlib.Path(sys.argv[2]).resolve()
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
TABLE = "observation"
MB = 1e6

# The data files of the current snapshot, planned by pyiceberg (before the server starts).
catalog = SqlCatalog("fhirlake", uri=f"sqlite:///{data / 'catalog.db'}",
                     warehouse=f"file://{data / 'warehouse'}")
namespaces = [n[0] for n in catalog.list_namespaces()]
namespace = "fhir" if "fhir" in namespaces else namespaces[0]
if (namespace, TABLE) not in catalog.list_tables(namespace):
    sys.exit(f"{data} has no {TABLE} table in data store {namespace}: nothing to benchmark")
tasks = list(catalog.load_table((namespace, TABLE)).scan().plan_files())
files = [t.file.file_path.removeprefix("file://") for t in tasks]
delete_files = {d.file_path for t in tasks for d in t.delete_files}
parquet_bytes = sum(os.path.getsize(f) for f in files)

server = subprocess.Popen([binary, "--data-dir", str(data), "serve", "--http", "127.0.0.1:0",
                           "--flight-sql", "127.0.0.1:0", "--query-timeout-secs", "0"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
uri = None
for line in server.stdout:
    m = re.search(r"Flight SQL endpoint: (grpc://\S+)", line)
    if m:
        uri = m.group(1)
        break
threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()
if uri is None:
    server.kill()
    sys.exit("the server printed no Flight SQL endpoint")


def timed(reader_factory):
    """(seconds to first batch, total seconds, table) of reading one RecordBatchReader fully."""
    t0 = time.perf_counter()
    reader = reader_factory()
    first = None
    batches = []
    for batch in reader:
        if first is None:
            first = time.perf_counter() - t0
        batches.append(batch)
    table = pyarrow.Table.from_batches(batches, schema=reader.schema)
    total = time.perf_counter() - t0
    return first if first is not None else total, total, table


results = {}
try:
    conn = flight_sql.connect(uri, autocommit=True)

    cursors = []

    def adbc_reader():
        if cursors:
            cursors.pop().close()
        cursors.append(conn.cursor())  # the reader lives as long as its cursor
        cursors[-1].execute(f"SELECT * FROM {TABLE}")
        return cursors[-1].fetch_record_batch()

    con = duckdb.connect()
    duck_sql = f"SELECT * FROM read_parquet({files!r}, union_by_name=true)"

    def duck_reader():
        return con.execute(duck_sql).to_arrow_reader()

    for name, factory in ((f"fhirlake Flight SQL via ADBC: SELECT * FROM {TABLE}", adbc_reader),
                          ("DuckDB read_parquet of the current data files", duck_reader)):
        samples = []
        for i in range(runs):
            first, total, table = timed(factory)
            samples.append((first, total, table.num_rows, table.nbytes))
            print(f"# {name}: run {i + 1}: {table.num_rows} rows, {table.nbytes / MB:.1f} MB Arrow, "
                  f"first batch {first:.3f}s, total {total:.3f}s", file=sys.stderr, flush=True)
            del table
        results[name] = samples
    for cur in cursors:
        cur.close()
    conn.close()
finally:
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()

print(f"\nTable `{TABLE}` of {data} (data store `{namespace}`): {len(files)} data files, "
      f"{parquet_bytes / MB:.1f} MB Parquet, {len(delete_files)} position-delete files; "
      f"{runs} runs each, best / median. MB/s = Arrow bytes of the result per second.\n")
print("| path | rows | Arrow MB | first batch s (best / median) | total s (best / median) "
      "| rows/s (best) | MB/s (best) |")
print("|---|---:|---:|---:|---:|---:|---:|")
for name, samples in results.items():
    firsts = [s[0] for s in samples]
    totals = [s[1] for s in samples]
    rows, nbytes = samples[0][2], samples[0][3]
    best = min(totals)
    print(f"| {name} | {rows:,} | {nbytes / MB:.1f} | {min(firsts):.3f} / {statistics.median(firsts):.3f} "
          f"| {best:.3f} / {statistics.median(totals):.3f} | {rows / best:,.0f} | {nbytes / MB / best:.1f} |")
print("\nNote: DuckDB's read_parquet reads the data files as they are: Iceberg position deletes "
      f"are NOT applied ({len(delete_files)} delete files here), so its row count can exceed the "
      "table's; fhirlake applies them. Both results are materialized as one pyarrow Table.")
