"""Imports the 585-patient Synthea set with the real binary and checks that the SQL count of
every type equals the number of distinct ids in its NDJSON.

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
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
