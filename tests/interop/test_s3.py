"""Import and export jobs on S3 locations, the way HealthLake scripts name them: boto3's
`healthlake` client drives fhirlake, whose jobs read and write an S3-compatible server (moto's,
from PyPI, started here on loopback) through the standard AWS_* environment.

Usage: test_s3.py FHIRLAKE_BIN WORK_DIR
Run from the repository root (data/ must resolve). WORK_DIR is emptied and filled.
Prints one line per check and 'N passed, N failed'; exits non-zero on failure.

Covers ACC-27/28 with s3:// input and output (manifest.json, FAILURE/ lines in the bucket),
allowed S3 roots (other prefixes and buckets refused), an unreachable bucket failing the job
with a message, StartFHIRExportJob to s3:// (files and manifest uploaded, re-imported from S3
into a second data store: the same SQL tables), and $export with an S3 OutputDataConfig whose
output URLs the server streams back from the bucket.

Then the lake itself on S3: a second installation started with `--warehouse s3://lake/warehouse`
imports, answers SQL and FHIR search from Iceberg files in the bucket, removes deleted rows with
position-delete files there, exports, is read by pyiceberg configured for the endpoint, keeps its
warehouse across a restart without the flag, refuses another one, and purges a deleted data
store's objects.
"""
import gzip
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import warnings

import boto3
import requests
from pyiceberg.catalog.sql import SqlCatalog

from control_common import (acc28_lines, check, client, error_of, finish, poll_bulk_status, start_moto, start_server,
                            stop_server)
import control_common

warnings.simplefilter("ignore")

binary = os.path.abspath(sys.argv[1])
work = pathlib.Path(sys.argv[2]).resolve()
shutil.rmtree(work, ignore_errors=True)
work.mkdir(parents=True)

# The S3-compatible server.
s3_endpoint = start_moto(work / "moto.log")
keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
for bucket in ("hospital-in", "hospital-out", "not-allowed", "lake"):
    s3.create_bucket(Bucket=bucket)


def keys_under(bucket, prefix):
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def body(bucket, key):
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


# Inputs: the shipped 10-patient sample as it is (gzipped NDJSON), and ACC-28's 16 Patient
# lines with lines 3, 5, 7, 9 and 15 broken.
sample_dir = pathlib.Path("data/synthea3-10p")
expected = {}
for path in sorted(sample_dir.glob("*.ndjson.gz")):
    s3.upload_file(str(path), "hospital-in", f"feeds/synthea/{path.name}")
    with gzip.open(path, "rt") as f:
        expected[path.name.split(".")[0]] = len({json.loads(l)["id"] for l in f if l.strip()})
acc28, sample = acc28_lines()
s3.put_object(Bucket="hospital-in", Key="feeds/acc-28/patients.ndjson",
              Body="".join(line + "\n" for line in acc28).encode())
s3.put_object(Bucket="not-allowed", Key="x/patients.ndjson", Body=sample[0].encode())

# fhirlake, allowed the input prefix and the output bucket (and a bucket that does not exist).
env = dict(os.environ, **keys, AWS_ENDPOINT=s3_endpoint, AWS_ALLOW_HTTP="true")
server, endpoint, grpc = start_server(
    binary, work / "data",
    ["--allowed-root", "s3://hospital-in/feeds", "--allowed-root", "s3://hospital-out",
     "--allowed-root", "s3://no-such-bucket", "--datastore-op-interval-secs", "0"],
    work / "serve.stderr", env)
print(f"# fhirlake at {endpoint}, S3 at {s3_endpoint}", flush=True)


def wait(fn, member, seconds=300, **kw):
    deadline = time.time() + seconds
    props = {}
    while time.time() < deadline:
        props = fn(**kw)[member]
        if props["JobStatus"] not in ("SUBMITTED", "IN_PROGRESS"):
            return props
        time.sleep(0.3)
    return props


def wait_active(hl, ds_id):
    deadline = time.time() + 120
    while time.time() < deadline:
        if hl.describe_fhir_datastore(DatastoreId=ds_id)["DatastoreProperties"]["DatastoreStatus"] == "ACTIVE":
            return
        time.sleep(0.3)


def start_import(hl, ds_id, uri, out="s3://hospital-out/import-reports/"):
    return hl.start_fhir_import_job(
        DatastoreId=ds_id, InputDataConfig={"S3Uri": uri},
        JobOutputDataConfig={"S3Configuration": {"S3Uri": out, "KmsKeyId": "arn:aws:kms:us-east-1:000000000000:key/k"}},
        DataAccessRoleArn="arn:aws:iam::000000000000:role/HealthLakeImport")


def sql(datastore, query):
    return control_common.sql(grpc, datastore, query)


try:
    hl = client(endpoint)
    a = hl.create_fhir_datastore(DatastoreName="from-s3", DatastoreTypeVersion="R4")["DatastoreId"]
    wait_active(hl, a)

    # ACC-27 with S3 locations: the 10-patient sample.
    job = start_import(hl, a, "s3://hospital-in/feeds/synthea/")
    props = wait(hl.describe_fhir_import_job, "ImportJobProperties", DatastoreId=a, JobId=job["JobId"])
    report = props.get("JobProgressReport", {})
    check("ACC-27 an import from s3:// completes; its counters cover every sample line",
          props["JobStatus"] == "COMPLETED" and report.get("TotalNumberOfScannedFiles") == len(expected)
          and report.get("TotalNumberOfResourcesImported") >= sum(expected.values()), props)
    prefix = f"import-reports/{a}-FHIR_IMPORT-{job['JobId']}/"
    manifest = json.loads(body("hospital-out", prefix + "manifest.json"))
    check("the job's manifest.json is in the output bucket, every resource imported",
          manifest.get("numberOfResourcesImportedSuccessfully") == report.get("TotalNumberOfResourcesImported")
          and manifest.get("numberOfResourcesWithCustomerError") == 0, manifest)
    counts = {t: sql("from_s3", f"SELECT count(*) FROM {t.lower()}")[0][0] for t in expected}
    check("SQL over the imported store: every table has the sample's distinct ids",
          counts == expected, {t: (counts[t], n) for t, n in expected.items() if counts[t] != n})
    check("nothing of the job is left in the staging directory",
          not any((work / "data" / "staging").glob("*/*")), list((work / "data" / "staging").glob("*/*")))

    # ACC-28 with S3 locations: bad lines reported per line in the bucket.
    job = start_import(hl, a, "s3://hospital-in/feeds/acc-28/patients.ndjson")
    props = wait(hl.describe_fhir_import_job, "ImportJobProperties", DatastoreId=a, JobId=job["JobId"])
    prefix = f"import-reports/{a}-FHIR_IMPORT-{job['JobId']}/"
    written = keys_under("hospital-out", prefix)
    rows = [json.loads(l) for l in body("hospital-out", prefix + "FAILURE/patients.ndjson").splitlines()] \
        if prefix + "FAILURE/patients.ndjson" in written else []
    check("ACC-28 from one S3 object: COMPLETED_WITH_ERRORS, FAILURE/patients.ndjson in the bucket "
          "with lines 3, 5, 7, 9, 15",
          props["JobStatus"] == "COMPLETED_WITH_ERRORS" and [r["lineId"] for r in rows] == [3, 5, 7, 9, 15]
          and all(r["statusCode"] == 400 for r in rows), (props["JobStatus"], written))

    # Only the allowed roots; a bucket that cannot be read fails the job with a message.
    for uri, why in [("s3://hospital-in/other/", "another prefix of an allowed bucket"),
                     ("s3://hospital-in/feeds-2/", "a prefix that only starts like the allowed one"),
                     ("s3://not-allowed/x/", "a bucket outside the roots")]:
        code = error_of(start_import, hl=hl, ds_id=a, uri=uri)
        check(f"{why} is refused (AccessDeniedException)", code and code[0] == "AccessDeniedException", code)
    code = error_of(start_import, hl=hl, ds_id=a, uri="s3://hospital-in/feeds/../../not-allowed/x/")
    check("'..' in an S3 key is refused (ValidationException)", code and code[0] == "ValidationException", code)
    job = start_import(hl, a, "s3://no-such-bucket/x/")
    props = wait(hl.describe_fhir_import_job, "ImportJobProperties", DatastoreId=a, JobId=job["JobId"])
    check("an input in a bucket that does not exist: FAILED with a message naming it",
          props["JobStatus"] == "FAILED" and "no-such-bucket" in props.get("Message", ""), props)

    # Export to S3, and the export imported from S3 into a second data store.
    exp = hl.start_fhir_export_job(
        JobName="to-s3", DatastoreId=a, DataAccessRoleArn="arn:aws:iam::000000000000:role/r",
        OutputDataConfig={"S3Configuration": {"S3Uri": "s3://hospital-out/exports/", "KmsKeyId": "k"}})
    eprops = wait(hl.describe_fhir_export_job, "ExportJobProperties", DatastoreId=a, JobId=exp["JobId"])
    prefix = f"exports/{a}-FHIR_EXPORT-{exp['JobId']}/"
    written = keys_under("hospital-out", prefix)
    emanifest = json.loads(body("hospital-out", prefix + "manifest.json")) if prefix + "manifest.json" in written else {}
    listed = sorted(prefix + o["name"] for o in emanifest.get("output", [])) + [prefix + "manifest.json"]
    check("StartFHIRExportJob to s3://: COMPLETED; the bucket holds exactly the manifest's files",
          eprops["JobStatus"] == "COMPLETED" and sorted(listed) == written
          and eprops["OutputDataConfig"]["S3Configuration"]["S3Uri"] == "s3://hospital-out/exports/",
          (eprops, written))
    patients = [json.loads(l) for o in emanifest.get("output", []) if o["type"] == "Patient"
                for l in body("hospital-out", prefix + o["name"]).splitlines()]
    check("the exported Patient objects hold every patient once",
          len(patients) == len({p["id"] for p in patients}) == counts["Patient"] + 11, len(patients))
    b = hl.create_fhir_datastore(DatastoreName="copy", DatastoreTypeVersion="R4")["DatastoreId"]
    wait_active(hl, b)
    job = start_import(hl, b, f"s3://hospital-out/{prefix}", "s3://hospital-out/import-reports/")
    props = wait(hl.describe_fhir_import_job, "ImportJobProperties", DatastoreId=b, JobId=job["JobId"])
    check("the S3 export imports into another data store without errors", props["JobStatus"] == "COMPLETED", props)
    diffs = []
    for t in sorted({o["type"] for o in emanifest.get("output", [])}):
        n_a, n_b, missing = sql("copy", f"SELECT (SELECT count(*) FROM from_s3.{t.lower()}), "
                                        f"(SELECT count(*) FROM copy.{t.lower()}), (SELECT count(*) FROM "
                                        f"(SELECT id FROM from_s3.{t.lower()} EXCEPT SELECT id FROM copy.{t.lower()}))")[0]
        if not (n_a == n_b > 0 and missing == 0):
            diffs.append((t, n_a, n_b, missing))
    check("round trip through S3: every SQL table of the copy has the original's rows and ids", not diffs, diffs)

    # $export with an S3 output: the status manifest's URLs stream the objects back.
    base = hl.describe_fhir_datastore(DatastoreId=a)["DatastoreProperties"]["DatastoreEndpoint"]
    r = requests.post(base + "$export?_type=Patient", headers={"Prefer": "respond-async", "Content-Type": "application/json"},
                      data=json.dumps({"JobName": "bulk-s3", "DataAccessRoleArn": "arn:aws:iam::000000000000:role/r",
                                       "OutputDataConfig": {"S3Configuration": {"S3Uri": "s3://hospital-out/bulk/",
                                                                                "KmsKeyId": "k"}}}), timeout=10)
    location = r.headers.get("Content-Location", "")
    manifest = poll_bulk_status(location)
    outputs = manifest.get("output", [])
    lines = [l for o in outputs for l in requests.get(o["url"], timeout=30).text.splitlines()]
    job_id = location.rsplit("/", 1)[-1]
    check("$export to s3://: the manifest's URLs serve the Patient objects written to the bucket",
          r.status_code == 202 and outputs and len(lines) == sum(o["count"] for o in outputs) == len(patients)
          and any(k.startswith(f"bulk/{a}-FHIR_EXPORT-{job_id}/Patient") for k in keys_under("hospital-out", "bulk/")),
          (r.status_code, r.text[:200], manifest))

    # The CLI takes s3:// too: `fhirlake import s3://...` and `fhirlake export s3://...`.
    cli = [binary, "--data-dir", str(work / "cli")]
    r = subprocess.run(cli + ["import", "s3://hospital-in/feeds/synthea/", "--quiet"], env=env,
                       capture_output=True, text=True)
    out = subprocess.run(cli + ["sql", "--format", "csv", "-e", "SELECT count(*) FROM patient"], env=env,
                         capture_output=True, text=True).stdout.split()
    check("fhirlake import s3://prefix/: SQL sees the sample's patients",
          r.returncode == 0 and out[-1:] == [str(expected["Patient"])], (r.stderr[-500:], out))
    r = subprocess.run(cli + ["export", "s3://hospital-out/cli-export", "--type", "Patient"], env=env,
                       capture_output=True, text=True)
    written = keys_under("hospital-out", "cli-export/")
    lines = body("hospital-out", "cli-export/Patient-1.ndjson").splitlines() if "cli-export/Patient-1.ndjson" in written else []
    check("fhirlake export s3://prefix --type Patient: the objects and manifest are in the bucket",
          r.returncode == 0 and written == ["cli-export/Patient-1.ndjson", "cli-export/manifest.json"]
          and len(lines) == expected["Patient"], (r.stderr[-500:], written))
    r = subprocess.run(cli + ["import", "s3://hospital-in/nothing-here/", "--quiet"], env=env,
                       capture_output=True, text=True)
    check("fhirlake import of an empty S3 prefix fails with a message naming it",
          r.returncode != 0 and "s3://hospital-in/nothing-here/" in r.stderr, r.stderr[-300:])
    check("the CLI leaves no staging behind", not any((work / "cli" / "cli-staging").glob("*")),
          list((work / "cli" / "cli-staging").glob("*")))

    # The warehouse on S3: a second installation whose Iceberg files live in the bucket.
    stop_server(server)
    lake_dir = work / "lake-s3"
    lake_args = ["--allowed-root", "s3://hospital-in/feeds", "--allowed-root", "s3://hospital-out",
                 "--datastore-op-interval-secs", "0"]
    server, endpoint, grpc = start_server(binary, lake_dir, ["--warehouse", "s3://lake/warehouse", *lake_args],
                                          work / "lake-serve.stderr", env)
    hl = client(endpoint)
    c = hl.create_fhir_datastore(DatastoreName="on_s3", DatastoreTypeVersion="R4")["DatastoreId"]
    wait_active(hl, c)
    job = start_import(hl, c, "s3://hospital-in/feeds/synthea/")
    props = wait(hl.describe_fhir_import_job, "ImportJobProperties", DatastoreId=c, JobId=job["JobId"])
    counts = {t: sql("on_s3", f"SELECT count(*) FROM {t.lower()}")[0][0] for t in expected}
    check("warehouse on S3: an import completes and SQL counts every sample id",
          props["JobStatus"] == "COMPLETED" and counts == expected, (props["JobStatus"], counts))
    objects = keys_under("lake", "warehouse/on_s3/")
    tables = {k.split("/")[2] for k in objects}
    check("the Iceberg files are in the bucket (metadata, manifests, data per table); none on local disk",
          tables == {t.lower() for t in expected}
          and all(any(k.startswith(f"warehouse/on_s3/{t}/metadata/") and k.endswith(".metadata.json")
                      for k in objects) and any(k.startswith(f"warehouse/on_s3/{t}/data/") for k in objects)
                  for t in tables)
          and not (lake_dir / "warehouse").exists()
          and json.loads((lake_dir / "fhirlake.json").read_text()) == {"warehouse": "s3://lake/warehouse"},
          (sorted(tables), len(objects)))
    fhir = hl.describe_fhir_datastore(DatastoreId=c)["DatastoreProperties"]["DatastoreEndpoint"]
    family, pid = sql("on_s3", "SELECT name[1].family, id FROM patient ORDER BY id LIMIT 1")[0]
    n_cond = sql("on_s3", f"SELECT count(*) FROM condition WHERE subject.reference = 'Patient/{pid}'")[0][0]

    def total(query):
        return requests.get(fhir + query, timeout=30).json().get("total")

    check("FHIR search reads the S3 tables: family and patient searches match SQL",
          total(f"Patient?family={family}&_summary=count") >= 1
          and total(f"Condition?patient={pid}&_summary=count") == n_cond > 0,
          (family, total(f"Patient?family={family}&_summary=count"), n_cond))

    # A delete reaches the lake as a position-delete file in the bucket.
    r = requests.delete(fhir + f"Patient/{pid}", timeout=30)
    deadline = time.time() + 60
    while time.time() < deadline and sql("on_s3", "SELECT count(*) FROM patient")[0][0] != expected["Patient"] - 1:
        time.sleep(0.3)
    check("a DELETE is committed to the S3 lake: SQL, search and a position-delete file agree",
          r.status_code == 204 and sql("on_s3", "SELECT count(*) FROM patient")[0][0] == expected["Patient"] - 1
          and total(f"Patient?_id={pid}&_summary=count") == 0
          and any(k.endswith("-deletes.parquet") for k in keys_under("lake", "warehouse/on_s3/patient/data/")),
          (r.status_code, keys_under("lake", "warehouse/on_s3/patient/data/")))

    exp = hl.start_fhir_export_job(
        JobName="lake-s3", DatastoreId=c, DataAccessRoleArn="arn:aws:iam::000000000000:role/r",
        OutputDataConfig={"S3Configuration": {"S3Uri": "s3://hospital-out/lake-export/", "KmsKeyId": "k"}})
    eprops = wait(hl.describe_fhir_export_job, "ExportJobProperties", DatastoreId=c, JobId=exp["JobId"])
    emanifest = json.loads(body("hospital-out", f"lake-export/{c}-FHIR_EXPORT-{exp['JobId']}/manifest.json"))
    exported = {o["type"]: 0 for o in emanifest["output"]}
    for o in emanifest["output"]:
        exported[o["type"]] += o["count"]
    check("an export from the S3-warehouse store holds every current resource",
          eprops["JobStatus"] == "COMPLETED" and exported.get("Patient") == expected["Patient"] - 1
          and all(exported.get(t) == n for t, n in expected.items() if t != "Patient"), (eprops["JobStatus"], exported))

    # pyiceberg, configured for the same endpoint, reads the same tables.
    catalog = SqlCatalog("fhirlake", uri=f"sqlite:///{lake_dir / 'catalog.db'}",
                         **{"s3.endpoint": s3_endpoint, "s3.access-key-id": "testing",
                            "s3.secret-access-key": "testing", "s3.region": "us-east-1"})
    py_counts = {t: catalog.load_table(f"on_s3.{t.lower()}").scan(selected_fields=("id",)).to_arrow().num_rows
                 for t in expected}
    want = dict(expected, Patient=expected["Patient"] - 1)
    check("pyiceberg reads every table from S3 with the same row counts (the deleted patient gone)",
          py_counts == want, {t: (py_counts[t], n) for t, n in want.items() if py_counts[t] != n})

    # The installation keeps its warehouse: restart without the flag; another one is refused.
    stop_server(server)
    server, endpoint, grpc = start_server(binary, lake_dir, lake_args, work / "lake-serve.stderr", env)
    check("restarted without --warehouse, the server serves the S3 tables recorded in fhirlake.json",
          sql("on_s3", "SELECT count(*) FROM patient")[0][0] == expected["Patient"] - 1)
    r = subprocess.run([binary, "--data-dir", str(lake_dir), "--warehouse", str(work / "elsewhere"),
                        "sql", "-e", "SELECT 1"], env=env, capture_output=True, text=True)
    check("naming another warehouse for the installation is refused with a message naming both",
          r.returncode != 0 and "s3://lake/warehouse" in r.stderr and "elsewhere" in r.stderr, r.stderr[-300:])

    hl = client(endpoint)
    hl.delete_fhir_datastore(DatastoreId=c)
    deadline = time.time() + 60
    while time.time() < deadline and (
            hl.describe_fhir_datastore(DatastoreId=c)["DatastoreProperties"]["DatastoreStatus"] != "DELETED"):
        time.sleep(0.3)
    check("deleting the data store purges its objects from the warehouse bucket",
          hl.describe_fhir_datastore(DatastoreId=c)["DatastoreProperties"]["DatastoreStatus"] == "DELETED"
          and keys_under("lake", "warehouse/on_s3/") == [], keys_under("lake", "warehouse/on_s3/")[:5])
finally:
    stop_server(server)

finish()
