"""Imports the 585-patient Synthea set with the real binary and checks that the SQL count of
every type equals the number of distinct ids in its NDJSON; then exports it, imports the export
into a second data store and checks every SQL table of the copy equals the original's.

Usage: test_585p.py FHIRLAKE_BIN SHARED_DATA_DIR WORK_DIR
Prints one line per check and 'N passed, N failed'; skips (exit 0) when the data is absent.
"""
import gzip
import json
import pathlib
import subprocess
import sys

binary, shared, work = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
src = shared / "synthea-r4-585p"
if not src.is_dir():
    print(f"SKIP: {src} is absent; the 585-patient import check needs the shared data")
    sys.exit(0)

expected = {}
for path in sorted(src.glob("*.ndjson.gz")):
    ids = set()
    with gzip.open(path, "rt") as f:
        for line in f:
            if line.strip():
                ids.add(json.loads(line)["id"])
    expected[path.name.split(".")[0]] = len(ids)

subprocess.run([binary, "--data-dir", str(work), "import", str(src), "--quiet"], check=True)
query = " UNION ALL ".join(f"SELECT '{t}' AS t, count(*) AS n FROM {t.lower()}" for t in sorted(expected))
out = subprocess.run([binary, "--data-dir", str(work), "sql", "--format", "csv", "-e", query],
                     check=True, capture_output=True, text=True).stdout.strip().splitlines()
counts = {t: int(n) for t, n in (row.split(",") for row in out[1:])}
passed = failed = 0
for t, n in sorted(expected.items()):
    ok = counts.get(t) == n
    passed += ok
    failed += not ok
    print(f"{'ok  ' if ok else 'FAIL'} 585p {t}: SQL count {counts.get(t)} == {n} distinct NDJSON ids")

# ACC-32 at scale: export the store, import the export into a second data store, and compare
# every SQL table of the two: ids and content (all columns but the server-assigned version and
# timestamp; meta's profile, tag, security and source included), both ways.
export_dir = work / "export-a"
subprocess.run([binary, "--data-dir", str(work), "export", str(export_dir)], check=True, capture_output=True)
subprocess.run([binary, "--data-dir", str(work), "datastore", "create", "--name", "copy"], check=True,
               capture_output=True)
subprocess.run([binary, "--data-dir", str(work), "import", str(export_dir), "--datastore", "copy", "--quiet"],
               check=True, capture_output=True)
cols = ("* EXCLUDE (meta, _resource, _version_id, _last_updated), meta.profile AS meta_profile, "
        "meta.tag AS meta_tag, meta.security AS meta_security, meta.source AS meta_source")
query = " UNION ALL ".join(
    f"SELECT '{t}' AS t, (SELECT count(*) FROM copy.{t.lower()}) AS n, "
    f"(SELECT count(*) FROM (SELECT {cols} FROM fhir.{t.lower()} EXCEPT SELECT {cols} FROM copy.{t.lower()})) AS only_a, "
    f"(SELECT count(*) FROM (SELECT {cols} FROM copy.{t.lower()} EXCEPT SELECT {cols} FROM fhir.{t.lower()})) AS only_b"
    for t in sorted(expected))
out = subprocess.run([binary, "--data-dir", str(work), "sql", "--format", "csv", "-e", query],
                     check=True, capture_output=True, text=True).stdout.strip().splitlines()
for row in out[1:]:
    t, n, only_a, only_b = row.split(",")
    ok = int(n) == expected[t] and only_a == only_b == "0"
    passed += ok
    failed += not ok
    print(f"{'ok  ' if ok else 'FAIL'} 585p round trip {t}: the copy has {n} rows; rows only in the original "
          f"{only_a}, only in the copy {only_b}")

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
