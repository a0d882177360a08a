"""Reads by id with SMART token verification on, next to the same reads on an AWS_AUTH data
store of the same server without credentials (issue 17's target: under 10% cost).

Starts `fhirlake serve` (release) and a JWKS on loopback (an ES256 key made here, tokens made
with PyJWT), creates a SMART data store through the control plane, loads the same Patients into
both data stores, then runs wrk's read-by-id scenario on each, alternating, ROUNDS times.

    python bench/auth/bench_auth.py BIN WORKDIR NDJSON_DIR [CONNECTIONS] [DURATION] [ROUNDS]
"""
import gzip
import http.server
import json
import pathlib
import re
import statistics
import subprocess
import sys
import threading
import time

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import ec

binary, work, data = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
connections = sys.argv[4] if len(sys.argv) > 4 else "32"
duration = sys.argv[5] if len(sys.argv) > 5 else "10s"
rounds = int(sys.argv[6]) if len(sys.argv) > 6 else 3
root = pathlib.Path(__file__).resolve().parents[2]
work.mkdir(parents=True, exist_ok=True)

# The identity provider: one ES256 key, its JWKS served on loopback.
key = ec.generate_private_key(ec.SECP256R1())
jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
jwks = json.dumps({"keys": [{**jwk, "kid": "bench", "alg": "ES256", "use": "sig"}]}).encode()


class Jwks(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(jwks)

    def log_message(self, *args):
        pass


idp = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
threading.Thread(target=idp.serve_forever, daemon=True).start()
issuer = f"http://127.0.0.1:{idp.server_address[1]}"

server = subprocess.Popen([binary, "--data-dir", str(work / "data"), "serve", "--http", "127.0.0.1:0",
                           "--no-flight-sql", "--datastore-op-interval-secs", "0"],
                          stdout=subprocess.PIPE, stderr=open(work / "server.log", "w"), text=True)
try:
    origin = None
    for line in server.stdout:
        m = re.search(r"(http://[^/\s]+)/datastore/\S+/r4/", line)
        if m:
            origin, plain = m.group(1), m.group(0)
            break
    threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()

    def control(op, body):
        r = requests.post(origin + "/", json=body, timeout=60,
                          headers={"X-Amz-Target": f"HealthLake.{op}", "Content-Type": "application/x-amz-json-1.0"})
        r.raise_for_status()
        return r.json()

    metadata = {"issuer": issuer, "jwks_uri": issuer + "/jwks",
                "authorization_endpoint": issuer + "/authorize", "token_endpoint": issuer + "/token"}
    created = control("CreateFHIRDatastore", {
        "DatastoreName": "smart-bench", "DatastoreTypeVersion": "R4",
        "IdentityProviderConfiguration": {"AuthorizationStrategy": "SMART_ON_FHIR_V1",
                                          "Metadata": json.dumps(metadata)}})
    for _ in range(600):
        props = control("DescribeFHIRDatastore", {"DatastoreId": created["DatastoreId"]})["DatastoreProperties"]
        if props["DatastoreStatus"] == "ACTIVE":
            break
        time.sleep(0.1)
    smart = props["DatastoreEndpoint"]
    now = int(time.time())
    token = jwt.encode({"iss": issuer, "aud": smart, "sub": "bench", "scope": "system/*.*",
                        "iat": now, "exp": now + 3600}, key, algorithm="ES256", headers={"kid": "bench"})

    # The same Patients in both data stores, as transaction Bundles of 100.
    src = next(data.glob("Patient.ndjson*"))
    lines = (gzip.open if src.suffix == ".gz" else open)(src, "rt").read().splitlines()[:1000]
    patients = [json.loads(l) for l in lines if l.strip()]
    for base, headers in ((plain, {}), (smart, {"Authorization": f"Bearer {token}"})):
        for i in range(0, len(patients), 100):
            bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": p, "request": {"method": "PUT", "url": f"Patient/{p['id']}"}}
                for p in patients[i:i + 100]]}
            r = requests.post(base, json=bundle, headers={**headers, "Content-Type": "application/fhir+json"},
                              timeout=120)
            r.raise_for_status()
    (work / "paths.txt").write_text("".join(f"Patient/{p['id']}\n" for p in patients))

    def wrk(base, auth):
        args = ["wrk", "-t2", f"-c{connections}", f"-d{duration}", "--latency",
                "-s", str(root / "bench/rest/read.lua"), base, "--",
                "/" + base.split("/", 3)[3].rstrip("/"), str(work / "paths.txt")]
        if auth:
            args.append(f"Bearer {token}")
        out = subprocess.run(args, capture_output=True, text=True, check=True,
                             env={"LUA_PATH": f"{root}/bench/rest/?.lua;;"}).stdout
        r = dict(kv.split("=") for kv in re.search(r"^RESULT (.*)$", out, re.M).group(1).split())
        secs = int(r["duration_us"]) / 1e6
        return int(r["requests"]) / secs, int(r["p99_us"]) / 1000, int(r["non2xx"])

    results = {"AWS_AUTH data store, no credentials (loopback)": [], "SMART data store, ES256 bearer token": []}
    for _ in range(rounds):
        results["AWS_AUTH data store, no credentials (loopback)"].append(wrk(plain, False))
        results["SMART data store, ES256 bearer token"].append(wrk(smart, True))
finally:
    server.terminate()
    server.wait(60)
    idp.shutdown()

print(f"\nReads by id ({len(patients)} Patients), wrk -t2 -c{connections} -d{duration}, {rounds} rounds "
      f"alternating, medians:\n")
print("| data store | reads/s | p99 | non-2xx |")
print("|---|---:|---:|---:|")
medians = {}
for name, runs in results.items():
    rps = statistics.median(r[0] for r in runs)
    p99 = statistics.median(r[1] for r in runs)
    medians[name] = rps
    print(f"| {name} | {rps:,.0f} | {p99:.1f} ms | {sum(r[2] for r in runs)} |")
plain_rps, smart_rps = medians.values()
print(f"\nToken verification costs {100 * (1 - smart_rps / plain_rps):.1f}% of read throughput.")
