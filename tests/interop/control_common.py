"""What the control-plane interop tests (test_control.py, test_s3.py) and bench/warehouse.py
share: check lines, a fhirlake server and moto's S3 server on loopback, boto3's healthlake
client and its errors."""
import atexit
import gzip
import pathlib
import re
import socket
import subprocess
import sys
import threading
import time

import adbc_driver_flightsql.dbapi as flight_sql
import boto3
import botocore.config
import botocore.exceptions
import requests

counts = {"passed": 0, "failed": 0}
started = time.time()


def check(name, ok, detail=""):
    counts["passed" if ok else "failed"] += 1
    print(f"{'ok  ' if ok else 'FAIL'} {name} {'' if ok else detail}", flush=True)


def finish():
    """Prints the totals and exits non-zero when a check failed."""
    print(f"# {time.time() - started:.0f}s in all", flush=True)
    print(f"{counts['passed']} passed, {counts['failed']} failed")
    sys.exit(1 if counts["failed"] else 0)


def start_server(binary, data_dir, args, log_path, env=None):
    """Starts `fhirlake serve` on loopback ports; returns (process, http base, grpc URL)."""
    log = open(log_path, "a")
    proc = subprocess.Popen(
        [binary, "--data-dir", str(data_dir), "serve", "--http", "127.0.0.1:0",
         "--flight-sql", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    http = grpc = None
    for line in proc.stdout:
        m = re.search(r"(http://[^/\s]+)/datastore/", line)
        if m and http is None:
            http = m.group(1)
        m = re.search(r"Flight SQL endpoint: (grpc://\S+)", line)
        if m:
            grpc = m.group(1)
        if http and grpc:
            break
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    if not (http and grpc):
        proc.kill()
        sys.exit(f"the server did not start (see {log_path})")
    return proc, http, grpc


def start_moto(log_path):
    """Starts moto's S3 server (from this venv) on a free loopback port; returns its endpoint.
    It is stopped when the interpreter exits."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(pathlib.Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1",
                             "-p", str(port)], stdout=subprocess.DEVNULL, stderr=open(log_path, "w"))
    atexit.register(proc.terminate)
    endpoint = f"http://127.0.0.1:{port}"
    # The first answer can take seconds on a loaded machine (moto imports its services lazily),
    # so a slow answer is waited for like a refused connection.
    deadline = time.time() + 60
    while True:
        try:
            requests.get(endpoint, timeout=5)
            return endpoint
        except requests.RequestException:
            if time.time() > deadline or proc.poll() is not None:
                sys.exit(f"moto's S3 server did not start (see {log_path})")
            time.sleep(0.1)


def wait_status(hl, ds_id, want, seconds=180):
    """Polls DescribeFHIRDatastore until the data store's status is `want` (or time is up);
    returns the last status seen."""
    deadline = time.time() + seconds
    status = None
    while time.time() < deadline:
        status = hl.describe_fhir_datastore(DatastoreId=ds_id)["DatastoreProperties"]["DatastoreStatus"]
        if status == want:
            return status
        time.sleep(0.3)
    return status


def stop_server(proc):
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def client(endpoint, key="AKIDEXAMPLE", secret="not-checked-on-loopback"):
    return boto3.client(
        "healthlake", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=key, aws_secret_access_key=secret,
        config=botocore.config.Config(retries={"max_attempts": 1}))


def error_of(fn, **kw):
    """(code, message, HTTP status) of a ClientError, or None when the call succeeded."""
    try:
        fn(**kw)
    except botocore.exceptions.ClientError as e:
        return (e.response["Error"]["Code"], e.response["Error"]["Message"],
                e.response["ResponseMetadata"]["HTTPStatusCode"])
    return None


def acc28_lines():
    """ACC-28's input: 16 Patient lines from the shipped sample, lines 3, 5, 7, 9 and 15 broken
    (bad JSON, unknown type, no id, unknown element, invalid id). Returns (lines, the sample)."""
    sample = [l for l in gzip.open("data/synthea-r4-100p/Patient.ndjson.gz", "rt").read().splitlines() if l]
    bad = {
        3: "{not json",
        5: sample[4].replace('"resourceType":"Patient"', '"resourceType":"Patient123"'),
        7: sample[6].replace('"id":', '"xid":', 1),
        9: sample[8].replace('"gender":', '"xgender":', 1),
        15: sample[14].replace('"id":"', '"id":"bad id ', 1),
    }
    return [bad.get(i, sample[i - 1]) for i in range(1, 17)], sample


def poll_bulk_status(location, seconds=120):
    """Polls a Bulk Data status URL until 200; returns its manifest ({} on timeout)."""
    deadline = time.time() + seconds
    while location and time.time() < deadline:
        s = requests.get(location, timeout=10)
        if s.status_code == 200:
            return s.json()
        time.sleep(0.3)
    return {}


def sql(grpc, datastore, query):
    """Rows of `query` over Flight SQL (ADBC), with `datastore` as the session's data store."""
    kw = {"adbc.flight.sql.rpc.call_header.x-fhirlake-datastore": datastore}
    with flight_sql.connect(grpc, db_kwargs=kw, autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute(query)
        return cur.fetchall()
