"""Conditions per age band, read straight from a fhirlake installation's Iceberg tables.

Usage: python examples/analysis.py [DATA_DIR] [--datastore fhir] [--json]

DATA_DIR is the fhirlake data directory (default ./fhirlake-data): its catalog.db is the
Iceberg SQL catalog and warehouse/ holds the tables, one per resource type, in a namespace
named after the data store. No fhirlake process needs to be running.

The same question is answered three ways, and the script checks that they agree:
  1. pyiceberg: the table scan (position deletes applied) into Arrow, then plain Python;
  2. DuckDB: read_parquet over the data files of the current snapshot, with the Iceberg
     position-delete files anti-joined (read_parquet alone would also return the rows that
     newer versions of a resource replaced);
  3. polars: pl.scan_iceberg (deletes applied by polars).

Age at onset is in completed years (a 29 February birthday falls on 28 February in other
years), banded by decade. A condition is counted when its subject resolves to a Patient
with a full birthDate and it has an onsetDateTime on or after that date.
"""
import argparse
import datetime
import json
import pathlib
import sys
from collections import defaultdict

import duckdb
import polars as pl
from pyiceberg.catalog.sql import SqlCatalog

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("data_dir", nargs="?", default="./fhirlake-data")
parser.add_argument("--datastore", default="fhir", help="data store (Iceberg namespace)")
parser.add_argument("--json", action="store_true", help="print the result as JSON")
args = parser.parse_args()

data_dir = pathlib.Path(args.data_dir).resolve()
catalog = SqlCatalog(
    "fhirlake",
    uri=f"sqlite:///{data_dir / 'catalog.db'}",
    warehouse=f"file://{data_dir / 'warehouse'}",
)
if (args.datastore,) not in catalog.list_namespaces():
    sys.exit(f"no data store {args.datastore!r} in {data_dir}: {catalog.list_namespaces()}")
patient = catalog.load_table((args.datastore, "patient"))
condition = catalog.load_table((args.datastore, "condition"))


def band(age):
    start = age // 10 * 10
    return f"{start}-{start + 9}"


def patient_id(reference):
    """Condition.subject.reference is 'Patient/<id>' (or 'urn:uuid:<id>' in transaction bundles)."""
    return (reference or "").removeprefix("urn:uuid:").removeprefix("Patient/")


# 1. pyiceberg -> Arrow -> Python ------------------------------------------------------------
def with_pyiceberg():
    births = {}
    for p in patient.scan(selected_fields=("id", "birthDate")).to_arrow().to_pylist():
        if p["birthDate"] and len(p["birthDate"]) >= 10:
            births[p["id"]] = datetime.date.fromisoformat(p["birthDate"][:10])
    counts, patients = defaultdict(int), defaultdict(set)
    rows = condition.scan(selected_fields=("subject", "onsetDateTime")).to_arrow().to_pylist()
    for c in rows:
        pid = patient_id((c["subject"] or {}).get("reference"))
        birth, onset = births.get(pid), c["onsetDateTime"]
        if birth is None or not onset:
            continue
        onset = datetime.date.fromisoformat(onset[:10])
        try:
            anniversary = birth.replace(year=onset.year)
        except ValueError:  # 29 February in a non-leap year
            anniversary = datetime.date(onset.year, 2, 28)
        age = onset.year - birth.year - (onset < anniversary)
        if age >= 0:
            counts[band(age)] += 1
            patients[band(age)].add(pid)
    return {b: (counts[b], len(patients[b])) for b in counts}


# 2. DuckDB read_parquet over the snapshot's files, position deletes applied ------------------
def duckdb_view(con, table, name):
    """A view over the current snapshot of `table`: its data files minus the deleted positions."""
    tasks = list(table.scan().plan_files())
    files = sorted({t.file.file_path.removeprefix("file://") for t in tasks})
    deletes = sorted({d.file_path.removeprefix("file://") for t in tasks for d in t.delete_files})
    if any(d.content.name != "POSITION_DELETES" for t in tasks for d in t.delete_files):
        # Not written by fhirlake; let pyiceberg apply them and hand DuckDB the Arrow result.
        con.register(name, table.scan().to_arrow())
        return
    scan = f"read_parquet({files!r}, union_by_name=true, filename=true, file_row_number=true)"
    if not deletes:
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM {scan}")
        return
    con.execute(f"""
        CREATE VIEW {name} AS
        SELECT * FROM {scan} AS d
        WHERE NOT EXISTS (
            SELECT 1 FROM read_parquet({deletes!r}) AS x
            WHERE regexp_replace(x.file_path, '^file://', '') = d.filename
              AND x.pos = d.file_row_number)""")


def with_duckdb():
    con = duckdb.connect()
    duckdb_view(con, patient, "patient")
    duckdb_view(con, condition, "condition")
    rows = con.execute("""
        WITH onset AS (
            SELECT p.id AS patient,
                   datesub('year', CAST(p.birthDate[1:10] AS DATE),
                                   CAST(c.onsetDateTime[1:10] AS DATE)) AS age
            FROM condition c
            JOIN patient p
              ON regexp_replace(c.subject.reference, '^(urn:uuid:|Patient/)', '') = p.id
            WHERE length(p.birthDate) >= 10 AND c.onsetDateTime IS NOT NULL)
        SELECT age // 10 * 10 AS band_start, count(*), count(DISTINCT patient)
        FROM onset WHERE age >= 0 GROUP BY 1""").fetchall()
    return {band(start): (n, k) for start, n, k in rows}


# 3. polars -------------------------------------------------------------------------------------
def with_polars():
    patients = (pl.scan_iceberg(patient)
                .select("id", birth=pl.col("birthDate").str.slice(0, 10))
                .filter(pl.col("birth").str.len_chars() >= 10)
                .with_columns(pl.col("birth").str.to_date()))
    conditions = (pl.scan_iceberg(condition)
                  .select(id=pl.col("subject").struct.field("reference")
                          .str.replace(r"^(urn:uuid:|Patient/)", ""),
                          onset=pl.col("onsetDateTime").str.slice(0, 10).str.to_date()))
    years = pl.col("onset").dt.year() - pl.col("birth").dt.year()
    anniversary = pl.col("birth").dt.offset_by(pl.format("{}y", years))
    result = (conditions.join(patients, on="id")
              .filter(pl.col("onset").is_not_null())
              .with_columns(age=years - (pl.col("onset") < anniversary).cast(pl.Int32))
              .filter(pl.col("age") >= 0)
              .group_by(band_start=pl.col("age") // 10 * 10)
              .agg(conditions=pl.len(), patients=pl.col("id").n_unique())
              .collect())
    return {band(r["band_start"]): (r["conditions"], r["patients"]) for r in result.iter_rows(named=True)}


results = {"pyiceberg": with_pyiceberg(), "DuckDB": with_duckdb(), "polars": with_polars()}
table = results["pyiceberg"]
agree = all(r == table for r in results.values())
order = sorted(table, key=lambda b: int(b.split("-")[0]))

if args.json:
    print(json.dumps({
        "bands": {b: {"conditions": table[b][0], "patients": table[b][1]} for b in order},
        "agree": agree,
        "by_method": {m: {b: list(v) for b, v in r.items()} for m, r in results.items()},
    }, indent=2))
else:
    print(f"Conditions per age band at onset ({data_dir}, data store '{args.datastore}')")
    print(f"{'age band':>10} {'conditions':>11} {'patients':>9}")
    for b in order:
        print(f"{b:>10} {table[b][0]:>11} {table[b][1]:>9}")
    print(f"{'total':>10} {sum(n for n, _ in table.values()):>11}")
    print("pyiceberg, DuckDB and polars agree" if agree else
          "MISMATCH: " + json.dumps({m: r for m, r in results.items()}))
sys.exit(0 if agree else 1)
