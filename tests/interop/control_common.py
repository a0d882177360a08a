"""What the control-plane interop tests (test_control.py, test_s3.py) share: check lines, a
fhirlake server on loopback, boto3's healthlake client and its errors."""
import re
import subprocess
import sys
import threading
import time

import boto3
import botocore.config
import botocore.exceptions

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
