"""Drives `fhirlake serve` with an independent HTTP client (requests) and checks that writes
reach SQL.

Usage: test_rest.py FHIRLAKE_BIN WORK_DIR
Prints one line per check and 'N passed, N failed'; exits non-zero on failure.
"""
import json
import pathlib
import re
import subprocess
import sys
import time

import requests

binary, work = sys.argv[1], pathlib.Path(sys.argv[2])
passed = failed = 0


def check(name, ok, detail=""):
    global passed, failed
    passed += bool(ok)
    failed += not ok
    print(f"{'ok  ' if ok else 'FAIL'} {name} {'' if ok else detail}")


def sql(query):
    out = subprocess.run([binary, "--data-dir", str(work), "sql", "--format", "csv", "-e", query],
                         check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[1:]


server = subprocess.Popen([binary, "--data-dir", str(work), "serve", "--http", "127.0.0.1:0", "--flight-sql", "127.0.0.1:0"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
try:
    line = server.stdout.readline()
    base = re.search(r"(http://\S+/r4/)", line).group(1)
    fhir = {"Content-Type": "application/fhir+json"}

    cap = requests.get(base + "metadata", timeout=10)
    check("GET metadata is a CapabilityStatement",
          cap.status_code == 200 and cap.json()["resourceType"] == "CapabilityStatement")

    body = {"resourceType": "Patient", "name": [{"family": "Interop", "given": ["Requests"]}],
            "birthDate": "1980-02-03", "gender": "female"}
    r = requests.post(base + "Patient", data=json.dumps(body), headers=fhir, timeout=10)
    check("POST Patient -> 201 with Location and ETag W/\"1\"",
          r.status_code == 201 and "Location" in r.headers and r.headers.get("ETag") == 'W/"1"',
          f"{r.status_code} {dict(r.headers)}")
    pid = r.headers["Location"].split("/Patient/")[1].split("/")[0]

    r = requests.get(f"{base}Patient/{pid}", timeout=10)
    check("GET Patient/{id} returns it", r.status_code == 200 and r.json()["birthDate"] == "1980-02-03")

    body["id"] = pid
    body["gender"] = "male"
    r = requests.put(f"{base}Patient/{pid}", data=json.dumps(body),
                     headers={**fhir, "If-Match": 'W/"1"'}, timeout=10)
    check("PUT with If-Match W/\"1\" -> 200, version 2",
          r.status_code == 200 and r.json()["meta"]["versionId"] == "2", r.text[:200])
    r = requests.put(f"{base}Patient/{pid}", data=json.dumps(body),
                     headers={**fhir, "If-Match": 'W/"1"'}, timeout=10)
    check("stale If-Match -> 412 OperationOutcome",
          r.status_code == 412 and r.json()["resourceType"] == "OperationOutcome")

    r = requests.post(base + "Patient", data='{"resourceType":"Patient","foo":1}', headers=fhir, timeout=10)
    check("unknown property -> 400 OperationOutcome",
          r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome")

    r = requests.get(f"{base}Patient/{pid}/_history", timeout=10)
    entries = r.json().get("entry", []) if r.status_code == 200 else []
    check("instance history has 2 versions", len(entries) == 2, r.text[:200])

    deadline = time.time() + 10
    rows = []
    while time.time() < deadline:
        rows = sql(f"SELECT gender, _version_id FROM patient WHERE id = '{pid}'")
        if rows == ["male,2"]:
            break
        time.sleep(0.3)
    check("SQL sees the update (one row, version 2)", rows == ["male,2"], f"{rows}")

    r = requests.delete(f"{base}Patient/{pid}", timeout=10)
    check("DELETE -> 204", r.status_code == 204)
    r = requests.get(f"{base}Patient/{pid}", timeout=10)
    check("read after delete -> 410", r.status_code == 410)
    deadline = time.time() + 10
    while time.time() < deadline:
        rows = sql(f"SELECT count(*) FROM patient WHERE id = '{pid}'")
        if rows == ["0"]:
            break
        time.sleep(0.3)
    check("SQL no longer sees the deleted patient", rows == ["0"], f"{rows}")
finally:
    server.terminate()
    server.wait(timeout=20)

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
