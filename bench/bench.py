"""fhirlake vs DuckDB on the same NDJSON, same machine, same run.

Usage: bench.py FHIRLAKE_BIN NDJSON_DIR
"""
import gzip
import os
import pathlib
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import duckdb
from adbc_driver_flightsql import dbapi as flight_sql

binary = pathlib.Path(sys.argv[1]).resolve()
src = pathlib.Path(sys.argv[2]).resolve()
root = pathlib.Path(__file__).resolve().parent.parent
work = pathlib.Path(tempfile.mkdtemp(prefix="fhirlake-bench-", dir=root / "target"))
RUNS = 5

files = sorted(src.glob("*.ndjson.gz"))
raw_bytes = 0
resources = 0
for f in files:
    with gzip.open(f, "rb") as fh:
        for line in fh:
            raw_bytes += len(line)
            resources += 1


def du(path):
    p = pathlib.Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def peak_rss_of(cmd):
    """Runs cmd; returns (wall seconds, peak RSS bytes) using GNU time."""
    t0 = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, check=True,
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    rss_kb = int(out.stderr.strip().splitlines()[-1])
    return wall, rss_kb * 1024


rows = []

# fhirlake import: files -> store -> Iceberg, queryable when the command returns.
data_dir = work / "fhirlake"
wall, rss = peak_rss_of([str(binary), "--data-dir", str(data_dir), "import", str(src), "--quiet"])
lake = du(data_dir / "warehouse")
store = du(data_dir / "store.db") + sum(du(p) for p in data_dir.glob("store.db-*"))
rows.append(("fhirlake import (NDJSON -> queryable Iceberg)", wall, resources / wall, rss,
             f"lake {lake/1e6:.1f} MB ({100*lake/raw_bytes:.1f}% of NDJSON), store {store/1e6:.1f} MB"))

# DuckDB anchor: NDJSON -> one Parquet file per type.
duck_dir = work / "duckdb"
duck_dir.mkdir()
con = duckdb.connect()
t0 = time.perf_counter()
for f in files:
    rtype = f.name.split(".")[0]
    con.execute(f"COPY (SELECT * FROM read_json('{f}', format='newline_delimited', maximum_object_size=67108864)) "
                f"TO '{duck_dir / rtype}.parquet' (FORMAT parquet, COMPRESSION zstd)")
wall = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
rows.append(("DuckDB COPY read_json -> Parquet", wall, resources / wall, rss,
             f"parquet {du(duck_dir)/1e6:.1f} MB ({100*du(duck_dir)/raw_bytes:.1f}% of NDJSON)"))

print(f"\nData: {src} — {resources} resources, {raw_bytes/1e6:.0f} MB NDJSON; machine: {os.cpu_count()} cores\n")
print(f"{'step':<48} {'wall s':>8} {'res/s':>9} {'peak RSS':>10}  notes")
for name, wall, rate, rss, notes in rows:
    print(f"{name:<48} {wall:>8.1f} {rate:>9.0f} {rss/1e6:>8.0f}MB  {notes}")

# Join queries: the guide's text on fhirlake; the same joins in DuckDB over its own Parquet.
for t in ("patient", "condition", "observation", "procedure", "medicationrequest"):
    con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{duck_dir}/{t.capitalize() if t != 'medicationrequest' else 'MedicationRequest'}.parquet')")
duck_queries = {
    "q13": """SELECT patient.id, condition.id, CONCAT(patient.name[1].family, ' ', patient.name[1].given[1]) AS name,
                 condition.code.coding[1].code, condition.code.coding[1].display,
                 condition.onsetDateTime, condition.clinicalStatus.coding[1].code, condition.encounter.reference
              FROM patient, condition WHERE CONCAT('Patient/', patient.id) = condition.subject.reference ORDER BY name""",
    "q15": """SELECT patient.id, procedure.id, CONCAT(patient.name[1].family, ' ', patient.name[1].given[1]) AS name,
                 procedure.status, procedure.code.coding[1].code, procedure.code.coding[1].display,
                 procedure.performedPeriod.start, procedure.encounter.reference
              FROM patient, procedure WHERE CONCAT('Patient/', patient.id) = procedure.subject.reference ORDER BY name""",
    "q16": """SELECT patient.id, medicationrequest.id, CONCAT(patient.name[1].family, ' ', patient.name[1].given[1]) AS name,
                 medicationrequest.status, medicationrequest.intent, medicationrequest.encounter.reference,
                 medicationrequest.medicationCodeableConcept.coding[1].code, medicationrequest.medicationCodeableConcept.coding[1].display
              FROM patient, medicationrequest WHERE CONCAT('Patient/', patient.id) = medicationrequest.subject.reference ORDER BY name""",
    "q18": """SELECT patient.id, condition.id, CONCAT(patient.name[1].family, ' ', patient.name[1].given[1]) AS name,
                 (year(current_date) - year(CAST(patient.birthDate AS DATE))) AS age,
                 condition.code.coding[1].code, observation.code.coding[1].code, observation.effectiveDateTime,
                 observation.valueQuantity.value
              FROM patient, condition, observation
              WHERE CONCAT('Patient/', patient.id) = condition.subject.reference
                AND CONCAT('Patient/', patient.id) = observation.subject.reference
                AND (year(current_date) - year(CAST(patient.birthDate AS DATE))) BETWEEN 18 AND 75
                AND condition.code.coding[1].display LIKE '%diabetes%'""",
}
examples = {
    "q13": "q13-patients-and-conditions.sql",
    "q15": "q15-patients-and-procedures.sql",
    "q16": "q16-patients-and-prescriptions.sql",
    "q18": "q18-diabetes-cohort-18-75.sql",
}


def start_server():
    """`fhirlake serve` on the installation; returns (process, Flight SQL URI)."""
    proc = subprocess.Popen([str(binary), "--data-dir", str(data_dir), "serve", "--http", "127.0.0.1:0",
                             "--flight-sql", "127.0.0.1:0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    found = {}
    ready = threading.Event()

    def drain():
        for line in proc.stdout:
            m = re.search(r"Flight SQL endpoint: (grpc://\S+)", line)
            if m and "uri" not in found:
                found["uri"] = m.group(1)
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    ready.wait(60)
    if "uri" not in found:
        proc.kill()
        raise SystemExit("fhirlake serve printed no Flight SQL endpoint")
    return proc, found["uri"]


def flight_times(uri, sql):
    """Median ms and rows of RUNS runs over one warm connection (after one warm-up run)."""
    with flight_sql.connect(uri, autocommit=True) as conn:
        times, n = [], 0
        for i in range(RUNS + 1):
            t0 = time.perf_counter()
            with conn.cursor() as cur:
                cur.execute(sql)
                n = cur.fetch_arrow_table().num_rows
            if i > 0:
                times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times), n


server, uri = start_server()
flight = {}
try:
    for q, fname in examples.items():
        flight[q] = flight_times(uri, (root / "sql-examples" / fname).read_text())
finally:
    server.terminate()
    server.wait(30)

print(f"\n{'query':<8} {'CLI run ms':>11} {'rows':>7} {'Flight warm ms':>15} {'rows':>7} "
      f"{'DuckDB ms':>10} {'rows':>7} {'Flight/DuckDB':>14}")
for q, fname in examples.items():
    sql_file = root / "sql-examples" / fname
    times = []
    n = 0
    for _ in range(RUNS):
        t0 = time.perf_counter()
        out = subprocess.run([str(binary), "--data-dir", str(data_dir), "sql", "--format", "csv", "-f", str(sql_file)],
                             check=True, capture_output=True, text=True).stdout
        times.append(time.perf_counter() - t0)
        n = max(0, len(out.strip().splitlines()) - 1)
    dtimes = []
    dn = 0
    for _ in range(RUNS):
        t0 = time.perf_counter()
        dn = con.sql(duck_queries[q]).to_arrow_table().num_rows
        dtimes.append(time.perf_counter() - t0)
    fms, fn = flight[q]
    dms = 1000 * statistics.median(dtimes)
    print(f"{q:<8} {1000*statistics.median(times):>11.0f} {n:>7} {fms:>15.0f} {fn:>7} "
          f"{dms:>10.0f} {dn:>7} {fms/dms:>13.1f}x")
print("\nCLI run: a whole `fhirlake sql -f` process (start, catalog, plan, execute, CSV out);"
      " Flight warm: the same SQL over ADBC Flight SQL to a running `fhirlake serve`, median of"
      f" {RUNS} after a warm-up; DuckDB: in-process queries on an open connection, fetched to Arrow.")
shutil.rmtree(work, ignore_errors=True)
