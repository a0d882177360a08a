"""Reads a fhirlake installation with pyiceberg and DuckDB and checks it against the NDJSON.

Usage: test_lake.py DATA_DIR NDJSON_DIR FHIRLAKE_BIN
Prints one line per check and a closing 'N passed, N failed' line; exits non-zero on failure.
"""
import gzip
import json
import pathlib
import subprocess
import sys
from collections import defaultdict

import duckdb
from pyiceberg.catalog.sql import SqlCatalog

data_dir = pathlib.Path(sys.argv[1]).resolve()
ndjson_dir = pathlib.Path(sys.argv[2])
binary = sys.argv[3]
passed = failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name} {detail}")


# Oracle: the last version of each id per type, straight from the NDJSON.
expected = defaultdict(dict)
for path in sorted(ndjson_dir.rglob("*.ndjson.gz")):
    with gzip.open(path, "rt") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                expected[r["resourceType"]][r["id"]] = r

catalog = SqlCatalog(
    "fhirlake",
    uri=f"sqlite:///{data_dir / 'catalog.db'}",
    warehouse=f"file://{data_dir / 'warehouse'}",
)
tables = {t[-1] for t in catalog.list_tables("fhir")}
check("pyiceberg lists one table per imported type",
      tables == {t.lower() for t in expected}, f"{sorted(tables)}")

sql_counts = {}
out = subprocess.run(
    [binary, "--data-dir", str(data_dir), "sql", "--format", "csv", "-e",
     " UNION ALL ".join(f"SELECT '{t}' AS t, count(*) AS n FROM {t.lower()}" for t in sorted(expected))],
    check=True, capture_output=True, text=True).stdout.strip().splitlines()
for row in out[1:]:
    t, n = row.split(",")
    sql_counts[t] = int(n)

for rtype, by_id in sorted(expected.items()):
    table = catalog.load_table(("fhir", rtype.lower()))
    arrow = table.scan(selected_fields=("id", "_version_id")).to_arrow()
    ids = set(arrow.column("id").to_pylist())
    check(f"pyiceberg {rtype}: {arrow.num_rows} rows, one per id, equal to the NDJSON",
          arrow.num_rows == len(by_id) and ids == set(by_id),
          f"rows={arrow.num_rows} expected={len(by_id)}")
    check(f"SQL count({rtype}) equals pyiceberg", sql_counts.get(rtype) == arrow.num_rows,
          f"sql={sql_counts.get(rtype)}")

# Nested values survive: Patient name and birthDate through pyiceberg.
patients = catalog.load_table(("fhir", "patient")).scan().to_arrow().to_pylist()
bad = [p["id"] for p in patients
       if p["birthDate"] != expected["Patient"][p["id"]].get("birthDate")
       or p["name"][0]["family"] != expected["Patient"][p["id"]]["name"][0]["family"]]
check("pyiceberg Patient birthDate and name[0].family equal the NDJSON", not bad, f"{bad[:3]}")
raw_ok = all(json.loads(p["_resource"])["id"] == p["id"] for p in patients)
check("pyiceberg Patient _resource holds the resource JSON", raw_ok)

# DuckDB reads the Parquet data files directly (the files of the current snapshot).
con = duckdb.connect()
for rtype in ("Patient", "Observation", "Condition"):
    table = catalog.load_table(("fhir", rtype.lower()))
    tasks = list(table.scan().plan_files())
    files = [t.file.file_path.removeprefix("file://") for t in tasks]
    deleted = sum(len(t.delete_files) for t in tasks)
    n = con.execute(f"SELECT count(*) FROM read_parquet({files!r}, union_by_name=true)").fetchone()[0]
    if deleted == 0:
        check(f"DuckDB read_parquet {rtype}: {n} rows equal the NDJSON", n == len(expected[rtype]),
              f"expected {len(expected[rtype])}")
    else:
        check(f"DuckDB read_parquet {rtype}: reads {n} rows (before {deleted} delete files)", n >= len(expected[rtype]))
pfiles = [t.file.file_path.removeprefix("file://")
          for t in catalog.load_table(("fhir", "patient")).scan().plan_files()]
rows = con.execute(
    f"SELECT id, name[1].family FROM read_parquet({pfiles!r}, union_by_name=true)").fetchall()
check("DuckDB Patient name[1].family equals the NDJSON",
      all(expected["Patient"][i]["name"][0]["family"] == fam for i, fam in rows))

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
