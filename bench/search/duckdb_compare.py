#!/usr/bin/env python3
"""DuckDB on the same data: sequential latency of SQL equivalents of the search scenarios.

Reads each table's live Parquet files (planned by pyiceberg from fhirlake's catalog, so
replaced files are not counted) into DuckDB views, runs the SQL equivalent of each search
request once per sample value, and prints the median and p99 per scenario next to fhirlake's
sequential latency for the same requests (measured here with one HTTP client).

    duckdb_compare.py DATA_DIR QUERIES_DIR BASE_URL
"""

import statistics
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
from pyiceberg.catalog.sql import SqlCatalog


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    data_dir, queries, base = Path(sys.argv[1]).resolve(), Path(sys.argv[2]), sys.argv[3]
    catalog = SqlCatalog(
        "fhirlake",
        uri=f"sqlite:///{data_dir}/catalog.db",
        warehouse=f"file://{data_dir}/warehouse",
    )
    con = duckdb.connect()
    for table in ["patient", "observation", "condition"]:
        files = [
            t.file.file_path.removeprefix("file://")
            for t in catalog.load_table(("fhir", table)).scan().plan_files()
        ]
        con.execute(
            f"CREATE VIEW {table} AS SELECT * FROM read_parquet({files!r}, union_by_name=true)"
        )

    def lines(name):
        return [l.split(",") for l in (queries / name).read_text().split("\n") if l]

    pairs = lines("obs_pairs")[:30]
    families = [f[0] for f in lines("families")[:30]]
    scenarios = {
        "Observation?patient=X&code=Y": (
            [
                (
                    "SELECT id FROM observation WHERE subject.reference = ? "
                    "AND list_contains(list_transform(code.coding, lambda c: c.code), ?)",
                    [f"Patient/{p}", c],
                )
                for p, c in pairs
            ],
            [f"Observation?patient={p}&code={c}" for p, c in pairs],
        ),
        "Patient?name=..&birthdate=ge1970": (
            [
                (
                    "SELECT id FROM patient WHERE birthDate >= '1970' AND "
                    "len(list_filter(name, lambda n: lower(n.family) LIKE lower(?) || '%' OR "
                    "len(list_filter(n.given, lambda g: lower(g) LIKE lower(?) || '%')) > 0)) > 0",
                    [f, f],
                )
                for f in families
            ],
            [f"Patient?name={f}&birthdate=ge1970" for f in families],
        ),
        "Observation?patient=X&_sort=-date&_count=50": (
            [
                (
                    "SELECT id FROM observation WHERE subject.reference = ? "
                    "ORDER BY effectiveDateTime DESC NULLS LAST, id LIMIT 50",
                    [f"Patient/{p}"],
                )
                for p, _ in pairs
            ],
            [f"Observation?patient={p}&_sort=-date&_count=50" for p, _ in pairs],
        ),
    }
    print("\n| scenario (sequential, one client) | fhirlake p50 | fhirlake p99 | DuckDB p50 | DuckDB p99 |")
    print("|---|---:|---:|---:|---:|")
    for name, (sqls, requests) in scenarios.items():
        for sql, params in sqls[:2]:  # warm both sides
            con.execute(sql, params).fetchall()
        for r in requests[:2]:
            urllib.request.urlopen(base + r).read()
        duck, ours = [], []
        for sql, params in sqls:
            t = time.perf_counter()
            con.execute(sql, params).fetchall()
            duck.append((time.perf_counter() - t) * 1000)
        for r in requests:
            t = time.perf_counter()
            urllib.request.urlopen(base + r).read()
            ours.append((time.perf_counter() - t) * 1000)
        print(
            f"| {name} | {statistics.median(ours):.1f} ms | {percentile(ours, 99):.1f} ms "
            f"| {statistics.median(duck):.1f} ms | {percentile(duck, 99):.1f} ms |"
        )


if __name__ == "__main__":
    main()
