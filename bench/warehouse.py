"""What it costs to keep the warehouse on S3: the same data imported into an installation with a
local warehouse and one with `--warehouse s3://...` (moto's S3 server on loopback), then the
same SQL queries (Flight SQL, ADBC) and FHIR searches against both, and DuckDB over pyiceberg's
Arrow read of the same tables (the notebook path) as the comparison.

Usage: warehouse.py FHIRLAKE_BIN NDJSON_DIR WORK_DIR
Prints a markdown table. moto is an in-process Python server, so S3 figures are an upper
bound on request overhead rather than a prediction for AWS (where latency per request is
higher and bandwidth higher too).
"""
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

import boto3
import duckdb
import requests
from pyiceberg.catalog.sql import SqlCatalog

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "interop"))
from control_common import client, sql, start_moto, start_server, stop_server  # noqa: E402

binary, data, work = os.path.abspath(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3]).resolve()
shutil.rmtree(work, ignore_errors=True)
work.mkdir(parents=True)
RUNS = int(os.environ.get("RUNS", "5"))

endpoint = start_moto(work / "moto.log")
boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
             aws_secret_access_key="bench").create_bucket(Bucket="lake")
env = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1",
           AWS_ENDPOINT=endpoint, AWS_ALLOW_HTTP="true")
s3_props = {"s3.endpoint": endpoint, "s3.access-key-id": "bench", "s3.secret-access-key": "bench",
            "s3.region": "us-east-1"}

QUERIES = {
    "count patients": "SELECT count(*) FROM patient",
    "patients by gender": "SELECT gender, count(*) FROM patient GROUP BY gender",
    "top condition codes": "SELECT code.coding[1].code, count(*) FROM condition GROUP BY 1 ORDER BY 2 DESC LIMIT 5",
    "observations of one code": "SELECT count(*) FROM observation WHERE code.coding[1].code = '8302-2'",
}
DUCK = {  # The same questions over pyiceberg's Arrow tables (only the columns they need).
    "count patients": ("patient", ("id",), "SELECT count(*) FROM t"),
    "patients by gender": ("patient", ("gender",), "SELECT gender, count(*) FROM t GROUP BY gender"),
    "top condition codes": ("condition", ("code",),
                            "SELECT code.coding[1].code, count(*) FROM t GROUP BY 1 ORDER BY 2 DESC LIMIT 5"),
    "observations of one code": ("observation", ("code",),
                                 "SELECT count(*) FROM t WHERE code.coding[1].code = '8302-2'"),
}


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def first_and_warm(fn):
    """(first run s, median of the next RUNS runs s, first result)."""
    first, out = timed(fn)
    warm = statistics.median(timed(fn)[0] for _ in range(RUNS))
    return first, warm, out


results = {}  # (row label, warehouse) -> (first, warm)
answers = {}
for kind in ("local", "s3"):
    dd = work / kind
    flag = ["--warehouse", "s3://lake/bench"] if kind == "s3" else []
    t, r = timed(lambda: subprocess.run([binary, "--data-dir", str(dd), *flag, "import", data, "--quiet"],
                                        env=env, capture_output=True, text=True))
    if r.returncode != 0:
        sys.exit(f"import into the {kind} warehouse failed: {r.stderr[-500:]}")
    print(f"# {kind}: {r.stdout.splitlines()[0]} in {t:.1f} s", flush=True)
    results[("import (s)", kind)] = (t, None)

    server, http, grpc = start_server(binary, dd, [], work / f"{kind}-serve.stderr", env)
    try:
        for name, q in QUERIES.items():
            first, warm, out = first_and_warm(lambda: sql(grpc, "fhir", q))
            results[(f"SQL: {name}", kind)] = (first, warm)
            answers.setdefault(name, {})[kind] = out
        family, pid = sql(grpc, "fhir", "SELECT name[1].family, id FROM patient ORDER BY id LIMIT 1")[0]
        ds_id = client(http).list_fhir_datastores()["DatastorePropertiesList"][0]["DatastoreId"]
        base = f"{http}/datastore/{ds_id}/r4/"
        for name, query in [("Patient?family", f"Patient?family={family}"),
                            ("Observation?patient", f"Observation?patient={pid}&_count=50"),
                            ("Condition?code", "Condition?code=44054006&_count=50")]:
            first, warm, out = first_and_warm(lambda: len(requests.get(base + query, timeout=120).json().get("entry", [])))
            results[(f"search: {name}", kind)] = (first, warm)
            answers.setdefault(name, {})[kind] = out
    finally:
        stop_server(server)

    props = {"uri": f"sqlite:///{dd / 'catalog.db'}", **(s3_props if kind == "s3" else {})}
    catalog = SqlCatalog("fhirlake", **props)
    for name, (table, cols, q) in DUCK.items():
        def run():
            con = duckdb.connect()
            con.register("t", catalog.load_table(("fhir", table)).scan(selected_fields=cols).to_arrow())
            return con.sql(q).fetchall()
        first, warm, out = first_and_warm(run)
        results[(f"DuckDB+pyiceberg: {name}", kind)] = (first, warm)

mismatch = {k: v for k, v in answers.items() if str(v.get("local")) != str(v.get("s3"))}
if mismatch:
    sys.exit(f"local and S3 answers differ: {mismatch}")

print()
print(f"{binary}, {os.cpu_count()} cores, data {data}; S3 = moto on loopback. First run, then the median "
      f"of {RUNS} more (caches warm).")
print()
print("| step | local first s | local warm s | S3 first s | S3 warm s |")
print("|---|---:|---:|---:|---:|")
rows = dict.fromkeys(label for label, _ in results)
for label in rows:
    lf, lw = results[(label, "local")]
    sf, sw = results[(label, "s3")]
    fmt = lambda x: "" if x is None else f"{x:.3f}"  # noqa: E731
    print(f"| {label} | {fmt(lf)} | {fmt(lw)} | {fmt(sf)} | {fmt(sw)} |")
