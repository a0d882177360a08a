"""Drives fhirlake's HealthLake control plane with boto3's `healthlake` client from PyPI (an
endpoint override, nothing else changed), the way a team scripts AWS HealthLake.

Usage: test_control.py FHIRLAKE_BIN WORK_DIR
Run from the repository root (data/ must resolve). WORK_DIR is emptied and filled.
Prints one line per check and 'N passed, N failed'; exits non-zero on failure.

Covers scenarios ACC-01 (create, describe), ACC-02 (Synthea preload), ACC-03 (list, filters,
paging), ACC-04 (quota, rate limit), ACC-05 (delete life cycle), ACC-06 (tags), ACC-27/28
(import jobs, bad lines), ACC-29 (one job at a time, limits by location) and persistence
across a restart. SQL over the new data store goes through Flight SQL (ADBC).
"""
import gzip
import json
import os
import pathlib
import re
import shutil
import sys
import time
import warnings

import requests

from control_common import (acc28_lines, check, client, error_of, finish, poll_bulk_status, sql, stop_server,
                            wait_status)
import control_common

warnings.simplefilter("ignore")

binary = os.path.abspath(sys.argv[1])
work = pathlib.Path(sys.argv[2]).resolve()
shutil.rmtree(work, ignore_errors=True)
work.mkdir(parents=True)


def start_server(data_dir, *extra):
    return control_common.start_server(
        binary, data_dir, ["--allowed-root", str(work / "bucket"), "--preload-dir", "data/synthea3-10p", *extra],
        work / f"serve-{data_dir.name}.stderr")


def wait_job(hl, ds_id, job_id, seconds=300):
    deadline = time.time() + seconds
    props = {}
    while time.time() < deadline:
        props = hl.describe_fhir_import_job(DatastoreId=ds_id, JobId=job_id)["ImportJobProperties"]
        if props["JobStatus"] not in ("SUBMITTED", "IN_PROGRESS"):
            return props
        time.sleep(0.3)
    return props


def sql_count(grpc, datastore, table):
    return sql(grpc, datastore, f"SELECT count(*) FROM {table}")[0][0]


# ACC-28's input: 16 Patient lines from the shipped sample, lines 3, 5, 7, 9 and 15 broken.
acc28, sample = acc28_lines()
(work / "bucket" / "input").mkdir(parents=True)
(work / "bucket" / "output").mkdir(parents=True)
(work / "outside").mkdir()
with open(work / "bucket" / "input" / "patients.ndjson", "w") as f:
    f.write("".join(line + "\n" for line in acc28))

data = work / "data"
server, endpoint, grpc = start_server(data, "--datastore-op-interval-secs", "0", "--max-datastores", "4")
print(f"# server at {endpoint}, Flight SQL {grpc}", flush=True)
try:
    hl = client(endpoint)

    # ACC-01: create and describe.
    created = hl.create_fhir_datastore(
        DatastoreName="cohort-a", DatastoreTypeVersion="R4", ClientToken="token-cohort-a",
        Tags=[{"Key": "key1", "Value": "value1"}])
    ds_id = created["DatastoreId"]
    check("ACC-01 create: 32-hex id, ARN, CREATING/ACTIVE, endpoint at /datastore/{id}/r4/",
          re.fullmatch(r"[0-9a-f]{32}", ds_id) is not None
          and created["DatastoreArn"].endswith(f":datastore/fhir/{ds_id}")
          and created["DatastoreArn"].startswith("arn:aws:healthlake:")
          and created["DatastoreStatus"] in ("CREATING", "ACTIVE")
          and created["DatastoreEndpoint"].endswith(f"/datastore/{ds_id}/r4/"), created)
    again = hl.create_fhir_datastore(DatastoreName="cohort-a", DatastoreTypeVersion="R4",
                                     ClientToken="token-cohort-a")
    check("ACC-01 the same ClientToken returns the same data store", again["DatastoreId"] == ds_id, again)
    status = wait_status(hl, ds_id, "ACTIVE")
    props = hl.describe_fhir_datastore(DatastoreId=ds_id)["DatastoreProperties"]
    check("ACC-01 describe: ACTIVE, R4, CreatedAt, SseConfiguration AWS_OWNED_KMS_KEY, name",
          status == "ACTIVE" and props["DatastoreTypeVersion"] == "R4"
          and props["DatastoreName"] == "cohort-a" and "CreatedAt" in props
          and props["SseConfiguration"]["KmsEncryptionConfig"]["CmkType"] == "AWS_OWNED_KMS_KEY", props)
    base = props["DatastoreEndpoint"]
    r = requests.get(base + "metadata", timeout=10)
    check("the new data store's FHIR endpoint answers (CapabilityStatement)",
          r.status_code == 200 and r.json().get("resourceType") == "CapabilityStatement", r.status_code)

    # Errors in AWS's shape.
    code = error_of(hl.describe_fhir_datastore, DatastoreId="0" * 32)
    check("describe an unknown id: ResourceNotFoundException", code and code[0] == "ResourceNotFoundException", code)
    code = error_of(hl.create_fhir_datastore, DatastoreTypeVersion="R5")
    check("DatastoreTypeVersion R5: ValidationException naming the enum",
          code and code[0] == "ValidationException" and "R4" in code[1] and code[2] == 400, code)
    raw = requests.post(endpoint + "/", data="{}", timeout=10,
                        headers={"X-Amz-Target": "HealthLake.NoSuchOperation",
                                 "Content-Type": "application/x-amz-json-1.0"})
    check("an unknown operation: 400 with __type and message",
          raw.status_code == 400 and "__type" in raw.json() and "message" in raw.json(), raw.text)

    # ACC-02: Synthea preload.
    pre = hl.create_fhir_datastore(DatastoreName="preloaded", DatastoreTypeVersion="R4",
                                   PreloadDataConfig={"PreloadDataType": "SYNTHEA"})
    pre_id = pre["DatastoreId"]
    check("ACC-02 a preloaded store is CREATING until its data is loaded", pre["DatastoreStatus"] == "CREATING", pre)
    status = wait_status(hl, pre_id, "ACTIVE", 600)
    pre_props = hl.describe_fhir_datastore(DatastoreId=pre_id)["DatastoreProperties"]
    r = requests.get(pre_props["DatastoreEndpoint"] + "Patient?_count=5", timeout=30)
    check("ACC-02 ACTIVE after the preload; GET Patient returns patients; Describe echoes PreloadDataConfig",
          status == "ACTIVE" and r.status_code == 200 and len(r.json().get("entry", [])) == 5
          and pre_props.get("PreloadDataConfig") == {"PreloadDataType": "SYNTHEA"}, f"{status} {r.status_code}")
    sample_patients = sum(1 for _ in gzip.open(next(pathlib.Path("data/synthea3-10p").glob("Patient*")), "rt"))
    n = sql_count(grpc, "preloaded", "patient")
    check(f"ACC-02 SQL over Flight: the preloaded store's patient table has the sample's {sample_patients}",
          n == sample_patients, n)

    # ACC-06: tags.
    arn = created["DatastoreArn"]
    tagged = hl.tag_resource(ResourceARN=arn, Tags=[{"Key": "key2", "Value": "value2"}])
    tags = hl.list_tags_for_resource(ResourceARN=arn)["Tags"]
    check("ACC-06 TagResource adds key2 next to the create-time key1",
          {t["Key"]: t["Value"] for t in tags} == {"key1": "value1", "key2": "value2"}, tags)
    hl.untag_resource(ResourceARN=arn, TagKeys=["key1"])
    tags = hl.list_tags_for_resource(ResourceARN=arn)["Tags"]
    check("ACC-06 UntagResource removes key1", [t["Key"] for t in tags] == ["key2"], tags)
    for bad in ("aws:x", "k" * 129):
        code = error_of(hl.tag_resource, ResourceARN=arn, Tags=[{"Key": bad, "Value": "v"}])
        check(f"ACC-06 tag key {bad[:12]!r}... is refused (ValidationException)",
              code and code[0] == "ValidationException", code)

    # ACC-27/28: an import job with bad lines.
    bucket = work / "bucket"
    job = hl.start_fhir_import_job(
        JobName="acc-28", DatastoreId=ds_id, ClientToken="import-1",
        InputDataConfig={"S3Uri": f"file://{bucket}/input/"},
        JobOutputDataConfig={"S3Configuration": {"S3Uri": f"file://{bucket}/output/",
                                                 "KmsKeyId": "arn:aws:kms:us-east-1:000000000000:key/x"}},
        DataAccessRoleArn="arn:aws:iam::000000000000:role/HealthLakeImport")
    check("ACC-27 StartFHIRImportJob: JobId, SUBMITTED, DatastoreId",
          job["JobStatus"] == "SUBMITTED" and job["DatastoreId"] == ds_id and job["JobId"], job)
    props = wait_job(hl, ds_id, job["JobId"])
    report = props.get("JobProgressReport", {})
    check("ACC-28 the job ends COMPLETED_WITH_ERRORS with SubmitTime, EndTime and counters (11 + 5)",
          props["JobStatus"] == "COMPLETED_WITH_ERRORS" and "EndTime" in props and "SubmitTime" in props
          and report.get("TotalNumberOfResourcesImported") == 11
          and report.get("TotalNumberOfResourcesWithCustomerError") == 5, props)
    out = bucket / "output" / f"{ds_id}-FHIR_IMPORT-{job['JobId']}"
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else {}
    check("ACC-28 manifest.json: 16 scanned, 11 imported, 5 customer errors, 0 server errors",
          manifest.get("numberOfResourcesScanned") == 16
          and manifest.get("numberOfResourcesImportedSuccessfully") == 11
          and manifest.get("numberOfResourcesWithCustomerError") == 5
          and manifest.get("numberOfResourcesWithServerError") == 0, manifest)
    failure = out / "FAILURE" / "patients.ndjson"
    rows = [json.loads(l) for l in failure.read_text().splitlines()] if failure.exists() else []
    check("ACC-28 FAILURE/patients.ndjson: lines 3, 5, 7, 9, 15 with statusCode 400 and an OperationOutcome",
          [r["lineId"] for r in rows] == [3, 5, 7, 9, 15] and all(r["statusCode"] == 400 for r in rows)
          and all(r["UpdateResourceResponse"]["jsonBlob"]["resourceType"] == "OperationOutcome" for r in rows),
          rows[:1])
    good_id = json.loads(sample[0])["id"]
    r = requests.get(f"{base}Patient/{good_id}", timeout=10)
    check("ACC-27 an imported resource is readable over REST", r.status_code == 200, r.status_code)
    n = sql_count(grpc, "cohort_a", "patient")
    check("ACC-27 the job is done only when SQL sees its 11 patients (Flight SQL, data store cohort_a)", n == 11, n)
    again = hl.start_fhir_import_job(
        JobName="acc-28", DatastoreId=ds_id, ClientToken="import-1",
        InputDataConfig={"S3Uri": f"file://{bucket}/input/"},
        JobOutputDataConfig={"S3Configuration": {"S3Uri": f"file://{bucket}/output/", "KmsKeyId": "k"}},
        DataAccessRoleArn="arn:aws:iam::000000000000:role/HealthLakeImport")
    check("the same ClientToken returns the same import job", again["JobId"] == job["JobId"], again)

    # Locations outside the allowed roots are refused.
    def start(uri, out_uri=f"file://{bucket}/output/"):
        return error_of(hl.start_fhir_import_job, DatastoreId=ds_id,
                        InputDataConfig={"S3Uri": uri},
                        JobOutputDataConfig={"S3Configuration": {"S3Uri": out_uri, "KmsKeyId": "k"}},
                        DataAccessRoleArn="arn:aws:iam::000000000000:role/r")
    code = start("file:///etc/")
    check("ACC-29 importing file:///etc/ is refused (AccessDeniedException)",
          code and code[0] == "AccessDeniedException", code)
    code = start(f"file://{bucket}/input/../../outside/")
    check("a path escaping the root with '..' is refused", code and code[0] in ("ValidationException", "AccessDeniedException"), code)
    code = start(f"file://{bucket}/input/", f"file://{work}/outside/")
    check("an output location outside the roots is refused", code and code[0] == "AccessDeniedException", code)

    # ACC-29: one job at a time per data store (a job over 60k lines keeps it busy long enough).
    big = bucket / "big"
    big.mkdir()
    with gzip.open("data/synthea-r4-100p/Observation.ndjson.gz", "rb") as src, open(big / "obs.ndjson", "wb") as dst:
        shutil.copyfileobj(src, dst)
    first = hl.start_fhir_import_job(
        DatastoreId=ds_id, InputDataConfig={"S3Uri": f"file://{big}/"},
        JobOutputDataConfig={"S3Configuration": {"S3Uri": f"file://{bucket}/output/", "KmsKeyId": "k"}},
        DataAccessRoleArn="arn:aws:iam::000000000000:role/r")
    code = start(f"file://{bucket}/input/")
    check("ACC-29 a second import while one runs: ConflictException", code and code[0] == "ConflictException", code)
    t0 = time.time()
    r = requests.post(base + "Patient", timeout=30, headers={"Content-Type": "application/fhir+json"},
                      data=json.dumps({"resourceType": "Patient", "gender": "other"}))
    running = hl.describe_fhir_import_job(DatastoreId=ds_id, JobId=first["JobId"])["ImportJobProperties"]
    check(f"ACC-29 CRUD works during the import (POST Patient {r.status_code} in {time.time() - t0:.2f}s, "
          f"job {running['JobStatus']})", r.status_code == 201, r.text[:200])
    props = wait_job(hl, ds_id, first["JobId"], 900)
    check("the big import completes", props["JobStatus"] == "COMPLETED", props)

    # ACC-03: list with filters and paging.
    listed = hl.list_fhir_datastores()["DatastorePropertiesList"]
    ids = {p["DatastoreId"] for p in listed}
    check("ACC-03 the list has the default store and both new ones", {ds_id, pre_id} <= ids and len(ids) == 3, ids)
    page = hl.list_fhir_datastores(MaxResults=1)
    rest = hl.list_fhir_datastores(MaxResults=5, NextToken=page["NextToken"]) if "NextToken" in page else {}
    check("ACC-03 MaxResults 1 gives one item and a NextToken that pages to the rest",
          len(page["DatastorePropertiesList"]) == 1
          and len(rest.get("DatastorePropertiesList", [])) == 2, page)
    named = hl.list_fhir_datastores(Filter={"DatastoreName": "cohort-a"})["DatastorePropertiesList"]
    check("ACC-03 Filter by DatastoreName", [p["DatastoreId"] for p in named] == [ds_id], named)
    jobs = hl.list_fhir_import_jobs(DatastoreId=ds_id, JobStatus="COMPLETED", MaxResults=1)
    check("ACC-27 ListFHIRImportJobs --job-status COMPLETED --max-results 1",
          [j["JobId"] for j in jobs["ImportJobPropertiesList"]] == [first["JobId"]], jobs)
    jobs = hl.list_fhir_import_jobs(DatastoreId=ds_id, MaxResults=1)
    check("ListFHIRImportJobs pages with NextToken when more exist",
          len(jobs["ImportJobPropertiesList"]) == 1 and "NextToken" in jobs, jobs)

    # ACC-04: quota (4 here: default + 2 created + 1 more).
    third = hl.create_fhir_datastore(DatastoreName="third", DatastoreTypeVersion="R4")
    code = error_of(hl.create_fhir_datastore, DatastoreName="fifth", DatastoreTypeVersion="R4")
    check("ACC-04 over the data store quota: ValidationException naming the quota",
          code and code[0] == "ValidationException" and "quota" in code[1].lower(), code)

    # ACC-05: delete.
    wait_status(hl, third["DatastoreId"], "ACTIVE")
    deleted = hl.delete_fhir_datastore(DatastoreId=ds_id)
    check("ACC-05 DeleteFHIRDatastore answers DELETING", deleted["DatastoreStatus"] == "DELETING", deleted)
    status = wait_status(hl, ds_id, "DELETED", 120)
    check("ACC-05 then DELETED, still describable", status == "DELETED", status)
    r = requests.get(f"{base}Patient/{good_id}", timeout=10)
    check("ACC-05 the deleted store's FHIR endpoint answers 404", r.status_code == 404, r.status_code)
    active = hl.list_fhir_datastores(Filter={"DatastoreStatus": "ACTIVE"})["DatastorePropertiesList"]
    everything = hl.list_fhir_datastores()["DatastorePropertiesList"]
    check("ACC-03 Filter ACTIVE leaves out the deleted store; the unfiltered list keeps it",
          ds_id not in {p["DatastoreId"] for p in active}
          and ds_id in {p["DatastoreId"] for p in everything}, active)
    warehouse = data / "warehouse" / "cohort_a"
    check("ACC-05 its Iceberg namespace's files are purged", not warehouse.exists(),
          sorted(p.name for p in warehouse.iterdir()) if warehouse.exists() else "")
    code = error_of(hl.delete_fhir_datastore, DatastoreId=ds_id)
    check("deleting it again: ConflictException", code and code[0] == "ConflictException", code)
    code = error_of(hl.start_fhir_import_job, DatastoreId=ds_id,
                    InputDataConfig={"S3Uri": f"file://{bucket}/input/"},
                    JobOutputDataConfig={"S3Configuration": {"S3Uri": f"file://{bucket}/output/", "KmsKeyId": "k"}},
                    DataAccessRoleArn="arn:aws:iam::000000000000:role/r")
    check("importing into a deleted store is refused", code is not None, code)
finally:
    stop_server(server)

# State survives a restart; the rate limit (one create per interval) applies.
server, endpoint, grpc = start_server(data, "--datastore-op-interval-secs", "60")
try:
    hl = client(endpoint)
    props = hl.describe_fhir_datastore(DatastoreId=pre_id)["DatastoreProperties"]
    check("after a restart: the preloaded store is ACTIVE with its tags and name",
          props["DatastoreStatus"] == "ACTIVE" and props["DatastoreName"] == "preloaded", props)
    gone = hl.describe_fhir_datastore(DatastoreId=ds_id)["DatastoreProperties"]
    job_after = hl.describe_fhir_import_job(DatastoreId=ds_id, JobId=job["JobId"])["ImportJobProperties"]
    check("after a restart: the deleted store is DELETED, its jobs still describable",
          gone["DatastoreStatus"] == "DELETED" and job_after["JobStatus"] == "COMPLETED_WITH_ERRORS", gone)
    n = sql_count(grpc, "preloaded", "patient")
    check("after a restart: Flight SQL serves the created store", n == sample_patients, n)
    copy = hl.create_fhir_datastore(DatastoreName="copy", DatastoreTypeVersion="R4")
    code = error_of(hl.create_fhir_datastore, DatastoreName="rate-2", DatastoreTypeVersion="R4")
    check("ACC-04 a second create within the minute: ThrottlingException",
          code and code[0] == "ThrottlingException", code)

    # ACC-32: an SDK export of the preloaded store, imported into 'copy': the same tables.
    exp = hl.start_fhir_export_job(
        JobName="round-trip", DatastoreId=pre_id, DataAccessRoleArn="arn:aws:iam::000000000000:role/r",
        OutputDataConfig={"S3Configuration": {"S3Uri": f"file://{bucket}/exports/", "KmsKeyId": "k"}})
    deadline = time.time() + 300
    while time.time() < deadline:
        eprops = hl.describe_fhir_export_job(DatastoreId=pre_id, JobId=exp["JobId"])["ExportJobProperties"]
        if eprops["JobStatus"] not in ("SUBMITTED", "IN_PROGRESS"):
            break
        time.sleep(0.3)
    check("ACC-32 StartFHIRExportJob -> COMPLETED, with SubmitTime, EndTime, OutputDataConfig",
          eprops["JobStatus"] == "COMPLETED" and "EndTime" in eprops
          and eprops["OutputDataConfig"]["S3Configuration"]["S3Uri"].endswith("/exports/"), eprops)
    listed = hl.list_fhir_export_jobs(DatastoreId=pre_id, JobStatus="COMPLETED")["ExportJobPropertiesList"]
    check("ACC-32 ListFHIRExportJobs lists it", [j["JobId"] for j in listed] == [exp["JobId"]], listed)
    export_dir = bucket / "exports" / f"{pre_id}-FHIR_EXPORT-{exp['JobId']}"
    emanifest = json.loads((export_dir / "manifest.json").read_text())
    types = sorted({o["type"] for o in emanifest["output"]})
    check(f"the export wrote NDJSON for {len(types)} types and a manifest",
          len(types) >= 10 and all((export_dir / o["name"]).exists() for o in emanifest["output"]), emanifest)
    wait_status(hl, copy["DatastoreId"], "ACTIVE")
    imp = hl.start_fhir_import_job(
        DatastoreId=copy["DatastoreId"], InputDataConfig={"S3Uri": f"file://{export_dir}/"},
        JobOutputDataConfig={"S3Configuration": {"S3Uri": f"file://{bucket}/output/", "KmsKeyId": "k"}},
        DataAccessRoleArn="arn:aws:iam::000000000000:role/r")
    iprops = wait_job(hl, copy["DatastoreId"], imp["JobId"])
    check("the export imports into another data store without errors", iprops["JobStatus"] == "COMPLETED", iprops)
    same = []
    for t in types:
        a, b, missing = sql(grpc, "copy",
                            f"SELECT (SELECT count(*) FROM preloaded.{t.lower()}), (SELECT count(*) FROM copy.{t.lower()}), "
                            f"(SELECT count(*) FROM (SELECT id FROM preloaded.{t.lower()} EXCEPT SELECT id FROM copy.{t.lower()}))")[0]
        same.append((t, a, b, missing))
    check("round trip: every SQL table of the copy has the original's row count and ids",
          all(a == b and a > 0 and m == 0 for _, a, b, m in same), same)

    # ACC-30: FHIR Bulk Data $export on the preloaded store's base URL.
    base = hl.describe_fhir_datastore(DatastoreId=pre_id)["DatastoreProperties"]["DatastoreEndpoint"]
    r = requests.get(base + "$export?_type=Patient,Condition&_outputFormat=application/fhir%2Bndjson",
                     headers={"Prefer": "respond-async", "Accept": "application/fhir+json"}, timeout=10)
    location = r.headers.get("Content-Location", "")
    check("ACC-30 $export kick-off: 202, Content-Location .../r4/export/{jobId}, jobStatus SUBMITTED",
          r.status_code == 202 and "/r4/export/" in location and r.json().get("jobStatus") == "SUBMITTED",
          f"{r.status_code} {r.text[:200]}")
    manifest = poll_bulk_status(location)
    outputs = manifest.get("output", [])
    check("ACC-30 polling ends in 200 with a Bulk Data manifest of Patient and Condition files",
          {o["type"] for o in outputs} == {"Patient", "Condition"} and "transactionTime" in manifest
          and manifest.get("requiresAccessToken") is False, manifest)
    fetched = {o["type"]: requests.get(o["url"], timeout=30).text.splitlines() for o in outputs}
    check("ACC-30 every output URL serves NDJSON of its one type, count lines",
          all(len(fetched[o["type"]]) == o["count"] for o in outputs if o["type"] in fetched)
          and all(json.loads(l)["resourceType"] == t for t, ls in fetched.items() for l in ls), {t: len(v) for t, v in fetched.items()})
    r = requests.get(base + "Patient/$export", headers={"Prefer": "respond-async"}, timeout=10)
    check("ACC-31 Patient/$export kicks off", r.status_code == 202, r.text[:200])
    r = requests.delete(location, timeout=10)
    check("ACC-31 cancelling a finished export: Interaction not supported.",
          r.status_code == 400 and "Interaction not supported." in r.text, r.text[:200])
finally:
    stop_server(server)

# With access keys configured, SigV4 signatures are verified.
server, endpoint, grpc = start_server(data, "--aws-access-key-id", "AKIDFHIRLAKE",
                                      "--aws-secret-access-key", "right-secret")
try:
    n = len(client(endpoint, key="AKIDFHIRLAKE", secret="right-secret").list_fhir_datastores()
            ["DatastorePropertiesList"])
    check(f"SigV4: a request signed with the configured key is served ({n} data stores)", n >= 3, n)
    code = error_of(client(endpoint, key="AKIDFHIRLAKE", secret="wrong-secret").list_fhir_datastores)
    check("SigV4: a wrong secret is refused (InvalidSignatureException, 403)",
          code and code[0] == "InvalidSignatureException" and code[2] == 403, code)
    code = error_of(client(endpoint, key="AKIDOTHER", secret="right-secret").list_fhir_datastores)
    check("SigV4: an unknown access key is refused (UnrecognizedClientException)",
          code and code[0] == "UnrecognizedClientException", code)
    raw = requests.post(endpoint + "/", data="{}", timeout=10,
                        headers={"X-Amz-Target": "HealthLake.ListFHIRDatastores",
                                 "Content-Type": "application/x-amz-json-1.0"})
    check("SigV4: an unsigned request is refused (MissingAuthenticationTokenException)",
          raw.status_code == 403 and raw.json().get("__type") == "MissingAuthenticationTokenException", raw.text)

    # The FHIR REST API of an AWS_AUTH data store verifies SigV4 too, signed by botocore's own
    # signer (service healthlake) as the guide's Python samples do.
    import botocore.auth
    import botocore.awsrequest
    import botocore.credentials

    def signed(method, url, secret="right-secret", body=None, date=None):
        req = botocore.awsrequest.AWSRequest(method=method, url=url, data=body,
                                             headers={"Content-Type": "application/fhir+json"} if body else {})
        signer = botocore.auth.SigV4Auth(botocore.credentials.Credentials("AKIDFHIRLAKE", secret),
                                         "healthlake", "us-east-1")
        real = botocore.auth.datetime.datetime
        if date:  # botocore reads the clock itself: sign as if it were `date`
            class Then(real):
                @classmethod
                def now(cls, tz=None):
                    return date.replace(tzinfo=tz)

                @classmethod
                def utcnow(cls):
                    return date
            botocore.auth.datetime.datetime = Then
        try:
            signer.add_auth(req)
        finally:
            botocore.auth.datetime.datetime = real
        prepared = req.prepare()
        return requests.request(method, prepared.url, headers=dict(prepared.headers), data=body, timeout=30)

    props = client(endpoint, key="AKIDFHIRLAKE", secret="right-secret").list_fhir_datastores()["DatastorePropertiesList"]
    base = next(p["DatastoreEndpoint"] for p in props if p["DatastoreStatus"] == "ACTIVE")
    patient = json.dumps({"resourceType": "Patient", "id": "sig-1", "name": [{"family": "Signed"}]})
    r = signed("PUT", base + "Patient/sig-1", body=patient)
    check("SigV4 FHIR: a signed PUT is served", r.status_code in (200, 201), r.text[:200])
    r = signed("GET", base + "Patient?family=Signed&_count=5")
    check("SigV4 FHIR: a signed search with a query string is served",
          r.status_code == 200 and r.json().get("total", len(r.json().get("entry", []))) >= 1, r.text[:200])
    r = requests.get(base + "Patient/sig-1", timeout=30)
    check("SigV4 FHIR: an unsigned read is refused (403 OperationOutcome)",
          r.status_code == 403 and r.json().get("resourceType") == "OperationOutcome", r.text[:200])
    r = signed("GET", base + "Patient/sig-1", secret="wrong-secret")
    check("SigV4 FHIR: a wrong secret is refused", r.status_code == 403, r.text[:200])
    import datetime
    r = signed("GET", base + "Patient/sig-1", date=datetime.datetime(2020, 1, 1))
    check("SigV4 FHIR: a replayed old signature is refused", r.status_code == 403 and "expired" in r.text, r.text[:200])
    req = botocore.awsrequest.AWSRequest(method="PUT", url=base + "Patient/sig-1", data=patient,
                                         headers={"Content-Type": "application/fhir+json"})
    botocore.auth.SigV4Auth(botocore.credentials.Credentials("AKIDFHIRLAKE", "right-secret"),
                            "healthlake", "us-east-1").add_auth(req)
    prepared = req.prepare()
    tampered = patient.replace("Signed", "Tampered")
    r = requests.put(prepared.url, headers=dict(prepared.headers), data=tampered, timeout=30)
    check("SigV4 FHIR: a body changed after signing is refused", r.status_code == 403, r.text[:200])
    r = requests.get(base + "metadata", timeout=30)
    check("SigV4 FHIR: the CapabilityStatement stays public", r.status_code == 200, r.text[:200])
finally:
    stop_server(server)

finish()
