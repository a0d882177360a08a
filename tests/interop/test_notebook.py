"""The notebook access paths of docs/notebooks.md, checked against the fhirlake SQL CLI.

Usage: test_notebook.py DATA_DIR FHIRLAKE_BIN
Prints one line per check (ok / FAIL / SKIP) and a closing 'N passed, N failed, N skipped' line;
exits non-zero on failure.

1. Every table of every data store, scanned in full with pyiceberg, has the row count that
   `SELECT count(*)` gives through the CLI; every field of every schema (at every depth) has a
   field id, in the table metadata (format-version 2) and in the Parquet data files.
2. examples/analysis.py (pyiceberg, DuckDB and polars inside) prints the conditions per age band
   that the same question asked in SQL through the CLI answers.
3. examples/conditions_by_age.ipynb runs under nbclient without an error output and saves a PNG.
4. DuckDB read_parquet and polars give pyiceberg's counts; where a scan has position-delete
   files, read_parquet returns the replaced rows too (the documented caveat) and the anti-join
   of the delete files restores pyiceberg's rows. A scratch installation whose Patient and
   Condition tables have delete files is built with FHIRLAKE_BIN, so this part never depends
   on DATA_DIR having some.
5. DuckDB's iceberg extension (iceberg_scan), when its PyPI build can be loaded offline.
"""
import copy
import gzip
import json
import os
import pathlib
import struct
import subprocess
import sys
import tempfile
import zlib

import duckdb
import nbformat
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from jupyter_client import KernelManager
from nbclient import NotebookClient
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.schema import index_by_id

ROOT = pathlib.Path(__file__).resolve().parents[2]
data_dir = pathlib.Path(sys.argv[1]).resolve()
binary = str(pathlib.Path(sys.argv[2]).resolve())
passed = failed = skipped = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}", flush=True)
    else:
        failed += 1
        print(f"FAIL {name} {detail}", flush=True)


def skip(name, why):
    global skipped
    skipped += 1
    print(f"SKIP {name}: {why}", flush=True)


def catalog_of(directory):
    return SqlCatalog("fhirlake", uri=f"sqlite:///{directory / 'catalog.db'}",
                      warehouse=f"file://{directory / 'warehouse'}")


def sql(directory, query, datastore=None):
    """Rows (lists of strings) of a query run through the CLI, header excluded."""
    cmd = [binary, "--data-dir", str(directory), "sql", "--format", "csv", "-e", query]
    if datastore:
        cmd[4:4] = ["--datastore", datastore]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:5])} ... failed: {run.stderr.strip()[-2000:]}")
    return [line.split(",") for line in run.stdout.strip().splitlines()[1:]]


def local(path):
    return path.removeprefix("file://")


# The oracle of part 2, in the CLI's Athena/Trino dialect: date_diff('year', ...) counts
# completed years; integer division truncates (ages below 0 are left out).
AGE = "date_diff('year', date(substr(p.birthdate, 1, 10)), date(substr(c.onsetdatetime, 1, 10)))"
BANDS_SQL = f"""
SELECT {AGE} / 10 * 10 AS band_start, count(*) AS conditions, count(DISTINCT p.id) AS patients
FROM condition c
JOIN patient p ON c.subject.reference IN (concat('Patient/', p.id), concat('urn:uuid:', p.id))
WHERE length(p.birthdate) >= 10 AND c.onsetdatetime IS NOT NULL AND {AGE} >= 0
GROUP BY 1 ORDER BY 1"""


def sql_bands(directory):
    return {f"{int(s)}-{int(s) + 9}": (int(n), int(k)) for s, n, k in sql(directory, BANDS_SQL)}


# ---------------------------------------------------------------------------------------------
# 1. Every table, full pyiceberg scan, against SQL count(*); field ids; format version
# ---------------------------------------------------------------------------------------------
def iceberg_ids(node, found, path=""):
    """(path, id or None) of an Iceberg JSON schema node's fields, elements, keys and values."""
    if not isinstance(node, dict):
        return
    children = ([(f.get("name"), f.get("id"), f["type"]) for f in node["fields"]] if node["type"] == "struct"
                else [("element", node.get("element-id"), node["element"])] if node["type"] == "list"
                else [(k, node.get(f"{k}-id"), node[k]) for k in ("key", "value")] if node["type"] == "map"
                else [])
    for name, fid, child in children:
        found.append((f"{path}{name}", fid if isinstance(fid, int) else None))
        iceberg_ids(child, found, f"{path}{name}.")


def parquet_ids(field, found, path="", named=True):
    """(path, field id or None, name if a struct member) of an Arrow field read from a Parquet
    footer and of its children, at every depth."""
    name = f"{path}{field.name}"
    fid = (field.metadata or {}).get(b"PARQUET:field_id")
    found.append((name, int(fid) if fid is not None else None, field.name if named else None))
    t = field.type
    if pa.types.is_struct(t):
        children = [(t.field(i), True) for i in range(t.num_fields)]
    elif pa.types.is_map(t):
        children = [(t.key_field, False), (t.item_field, False)]
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        children = [(t.value_field, False)]
    else:
        children = []
    for child, child_named in children:
        parquet_ids(child, found, f"{name}.", child_named)


catalog = catalog_of(data_dir)
namespaces = [ns[0] for ns in catalog.list_namespaces()]
check(f"pyiceberg lists the data stores (namespaces) {namespaces}", len(namespaces) > 0)
for ns in namespaces:
    tables = sorted(t[-1] for t in catalog.list_tables(ns))
    union = " UNION ALL ".join(f"SELECT '{t}' AS t, count(*) AS n FROM {t}" for t in tables)
    counts = {t: int(n) for t, n in sql(data_dir, union, datastore=ns)}
    bad_counts, bad_ids, bad_meta = [], [], []
    fields_checked = 0
    for name in tables:
        table = catalog.load_table((ns, name))
        arrow = table.scan().to_arrow()  # every column, deletes applied
        if counts.get(name) != arrow.num_rows:
            bad_counts.append(f"{name}: pyiceberg {arrow.num_rows} != SQL {counts.get(name)}")
        meta = json.loads(pathlib.Path(local(table.metadata_location)).read_text())
        if meta.get("format-version") != 2:
            bad_meta.append(f"{name}: format-version {meta.get('format-version')}")
        for schema in meta["schemas"]:
            found = []
            iceberg_ids(schema, found)
            ids = [i for _, i in found if i is not None]
            fields_checked += len(found)
            missing = [p for p, i in found if i is None]
            if missing or len(ids) != len(set(ids)) or max(ids) > meta["last-column-id"]:
                bad_ids.append(f"{name} schema {schema.get('schema-id')}: no id on {missing[:3]}, "
                               f"{len(ids) - len(set(ids))} duplicate ids, max {max(ids)} > {meta['last-column-id']}")
        by_id = index_by_id(table.schema())  # every depth
        for task in table.scan().plan_files():
            found = []
            for field in pq.read_schema(local(task.file.file_path)):
                parquet_ids(field, found)
            fields_checked += len(found)
            wrong = [f"{p} (id {i})" for p, i, n in found
                     if i is None or i not in by_id or (n is not None and by_id[i].name != n)]
            if wrong:
                bad_ids.append(f"{name} {task.file.file_path}: no field id, or not the table's id for that "
                               f"name, on {wrong[:3]}")
    check(f"{ns}: all {len(tables)} tables scanned in full by pyiceberg have the SQL count(*)"
          f" ({sum(counts.values())} rows)", tables and not bad_counts, f"{bad_counts}")
    check(f"{ns}: every table's metadata is Iceberg format-version 2", not bad_meta, f"{bad_meta}")
    check(f"{ns}: every field at every depth has a field id ({fields_checked} fields of the metadata "
          f"schemas and of the Parquet data files; Parquet ids name the table's fields)",
          not bad_ids, f"{bad_ids[:5]}")


# ---------------------------------------------------------------------------------------------
# 4. DuckDB read_parquet and polars against pyiceberg (run on DATA_DIR and on a scratch lake
#    whose Patient and Condition tables have position deletes)
# ---------------------------------------------------------------------------------------------
def check_readers(directory, label, names=None):
    cat = catalog_of(directory)
    con = duckdb.connect()
    stats = {"tables": 0, "with_deletes": 0}
    bad = []
    for ns in [n[0] for n in cat.list_namespaces()]:
        for name in names or sorted(t[-1] for t in cat.list_tables(ns)):
            table = cat.load_table((ns, name))
            tasks = list(table.scan().plan_files())
            files = sorted({local(t.file.file_path) for t in tasks})
            deletes = sorted({local(d.file_path) for t in tasks for d in t.delete_files})
            kinds = {d.content.name for t in tasks for d in t.delete_files}
            ids = set(table.scan(selected_fields=("id",)).to_arrow().column("id").to_pylist())
            n = len(ids)
            stats["tables"] += 1
            # polars scan_iceberg: every column, deletes applied by polars.
            frame = pl.scan_iceberg(table).collect()
            if frame.height != n or set(frame["id"].to_list()) != ids:
                bad.append(f"{ns}.{name}: polars scan_iceberg {frame.height} rows, pyiceberg {n}")
            scan = f"read_parquet({files!r}, union_by_name=true, filename=true, file_row_number=true)"
            raw = con.sql(f"SELECT * FROM {scan}").to_arrow_table().num_rows  # every column
            raw_pl = pl.scan_parquet(files).select(pl.len()).collect().item()
            if not deletes:
                if raw != n or raw_pl != n:
                    bad.append(f"{ns}.{name}: read_parquet {raw}, polars scan_parquet {raw_pl}, pyiceberg {n}")
                continue
            stats["with_deletes"] += 1
            if kinds != {"POSITION_DELETES"}:
                bad.append(f"{ns}.{name}: delete files of kinds {kinds}, fhirlake writes position deletes only")
                continue
            deleted = con.execute(
                f"SELECT count(*) FROM (SELECT DISTINCT file_path, pos FROM read_parquet({deletes!r})) "
                f"WHERE regexp_replace(file_path, '^file://', '') IN ({', '.join(repr(f) for f in files)})"
            ).fetchone()[0]
            kept = con.execute(f"""
                SELECT id FROM {scan} AS d WHERE NOT EXISTS (
                    SELECT 1 FROM read_parquet({deletes!r}) AS x
                    WHERE regexp_replace(x.file_path, '^file://', '') = d.filename
                      AND x.pos = d.file_row_number)""").fetchall()
            if raw != n + deleted or raw_pl != n + deleted:
                bad.append(f"{ns}.{name}: read_parquet {raw} / scan_parquet {raw_pl} rows, expected "
                           f"pyiceberg {n} + {deleted} deleted positions")
            if len(kept) != n or {r[0] for r in kept} != ids:
                bad.append(f"{ns}.{name}: read_parquet minus the delete files gives {len(kept)} rows, pyiceberg {n}")
    check(f"{label}: DuckDB read_parquet (every column), polars scan_parquet and scan_iceberg agree with "
          f"pyiceberg on {stats['tables']} tables; on the {stats['with_deletes']} with position deletes "
          f"read_parquet returns the replaced rows too and the anti-join of the delete files restores "
          f"pyiceberg's ids", not bad and stats["tables"] > 0, f"{bad[:5]}")
    return stats


stats = check_readers(data_dir, "DATA_DIR")
if not stats["with_deletes"]:
    print(f"     (no table in {data_dir} has delete files; the scratch lake below has some)")


def build_scratch(directory):
    """Patient and Condition of the shipped sample, then 3 patients and 1 condition re-imported
    with changes: the replaced rows get position deletes. The birth dates move 15 years back,
    so an age-band count that reads the replaced rows differs from the right one."""
    source = next(p.parent for p in sorted((ROOT / "data").rglob("Patient*.ndjson.gz")))
    first, second = directory / "first", directory / "second"
    first.mkdir()
    second.mkdir()
    patients, conditions = [], []
    for kind, rows in (("Patient", patients), ("Condition", conditions)):
        for path in sorted(source.glob(f"{kind}*.ndjson.gz")):
            (first / path.name).write_bytes(path.read_bytes())
            with gzip.open(path, "rt") as f:
                rows.extend(json.loads(line) for line in f if line.strip())
    subjects = {c["subject"]["reference"].split("/")[-1].removeprefix("urn:uuid:") for c in conditions}
    changed = [p for p in patients if p["id"] in subjects and len(p.get("birthDate", "")) >= 10][:3]
    for p in changed:
        p["birthDate"] = f"{int(p['birthDate'][:4]) - 15:04d}{p['birthDate'][4:]}"
    conditions[0]["clinicalStatus"] = {"coding": [{"code": "resolved"}]}
    (second / "Patient.ndjson").write_text("".join(json.dumps(p) + "\n" for p in changed))
    (second / "Condition.ndjson").write_text(json.dumps(conditions[0]) + "\n")
    lake = directory / "lake"
    for batch in (first, second):
        subprocess.run([binary, "--data-dir", str(lake), "import", str(batch), "--quiet"],
                       check=True, capture_output=True, text=True)
    return lake


scratch_root = tempfile.TemporaryDirectory(prefix="fhirlake-nb-")
scratch = build_scratch(pathlib.Path(scratch_root.name))
scratch_stats = check_readers(scratch, "scratch lake", names=["patient", "condition"])
check("scratch lake: Patient and Condition both have position deletes", scratch_stats["with_deletes"] == 2,
      f"{scratch_stats}")

# The caveat made concrete: a DuckDB join over read_parquet alone double-counts the conditions
# of the re-imported patients.
con = duckdb.connect()
scat = catalog_of(scratch)
for name in ("patient", "condition"):
    files = [local(t.file.file_path) for t in scat.load_table(("fhir", name)).scan().plan_files()]
    con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({files!r}, union_by_name=true)")
naive = con.execute("SELECT count(*) FROM condition c JOIN patient p ON c.subject.reference = 'Patient/' || p.id"
                    ).fetchone()[0]
right = sum(n for n, _ in sql_bands(scratch).values())
check(f"scratch lake: without the delete files a read_parquet join counts {naive} conditions, "
      f"the lake holds {right}", naive > right, "the caveat did not show")


# ---------------------------------------------------------------------------------------------
# 2. examples/analysis.py against the same question asked in SQL
# ---------------------------------------------------------------------------------------------
def check_analysis(directory, label):
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "analysis.py"), str(directory), "--json"],
                         capture_output=True, text=True)
    if run.returncode != 0:
        check(f"{label}: examples/analysis.py --json exits 0", False, run.stderr[-2000:] + run.stdout[-2000:])
        return
    result = json.loads(run.stdout)
    bands = {b: (v["conditions"], v["patients"]) for b, v in result["bands"].items()}
    expected = sql_bands(directory)
    check(f"{label}: analysis.py's pyiceberg, DuckDB and polars results agree", result["agree"],
          json.dumps(result["by_method"]))
    check(f"{label}: analysis.py's conditions and patients per age band ({len(bands)} bands, "
          f"{sum(n for n, _ in bands.values())} conditions) equal the SQL CLI's", bands == expected,
          f"\n  analysis.py {bands}\n  SQL         {expected}")
    return bands


bands = check_analysis(data_dir, "DATA_DIR")
check_analysis(scratch, "scratch lake (position deletes)")
plain = subprocess.run([sys.executable, str(ROOT / "examples" / "analysis.py"), str(data_dir)],
                       capture_output=True, text=True)
check("analysis.py prints its table and that the three readers agree",
      plain.returncode == 0 and "pyiceberg, DuckDB and polars agree" in plain.stdout
      and all(b in plain.stdout for b in (bands or {})), plain.stdout[-1500:] + plain.stderr[-1500:])


# ---------------------------------------------------------------------------------------------
# 3. The notebook under nbclient
# ---------------------------------------------------------------------------------------------
def png_ok(path):
    """A PNG whose chunks, CRCs and IHDR are well-formed, ending with IEND."""
    data = path.read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return False, "no PNG signature"
    pos, chunks = 8, []
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        crc, = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(kind + body) != crc:
            return False, f"bad CRC in {kind}"
        chunks.append(kind)
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        pos += 12 + length
    if chunks[0] != b"IHDR" or chunks[-1] != b"IEND" or b"IDAT" not in chunks:
        return False, f"chunks {chunks[:3]}...{chunks[-1:]}"
    return width > 100 and height > 100, f"{width}x{height}"


notebook_path = ROOT / "examples" / "conditions_by_age.ipynb"
committed = nbformat.read(notebook_path, as_version=4)
nbformat.validate(committed)
check("the committed notebook is valid and has no outputs",
      all(not c.get("outputs") and c.get("execution_count") is None for c in committed.cells if c.cell_type == "code"))
with tempfile.TemporaryDirectory(prefix="fhirlake-nb-plot-") as out:
    plot = pathlib.Path(out) / "charts" / "conditions_by_age.png"
    os.environ.update(FHIRLAKE_DATA_DIR=str(data_dir), FHIRLAKE_PLOT=str(plot))
    nb = copy.deepcopy(committed)
    # One extra cell, in the executed copy only, hands the notebook's numbers back.
    nb.cells.append(nbformat.v4.new_code_cell(
        "import json, sys\nprint('BANDS=' + json.dumps({r['band']: [r['conditions'], r['patients']]"
        " for r in by_band.iter_rows(named=True)}))\nprint('PYTHON=' + sys.executable)"))
    error = None
    try:
        # Kernel "python3" (ipykernel of this venv), over Unix sockets rather than loopback TCP.
        km = KernelManager(kernel_name="python3", transport="ipc", ip=str(pathlib.Path(out) / "kernel"))
        NotebookClient(nb, km=km, timeout=180, allow_errors=True,
                       resources={"metadata": {"path": str(ROOT / "examples")}}).execute()
    except Exception as e:  # the kernel did not start or a cell timed out
        error = f"{type(e).__name__}: {e}"
    errors = [f"cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, c in enumerate(nb.cells)
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    check("the notebook runs under nbclient (kernel python3) without error outputs",
          error is None and not errors, f"{error} {errors[:3]}")
    text = "".join(o.get("text", "") for o in nb.cells[-1].get("outputs", []) if o.get("output_type") == "stream")
    got = next((json.loads(line[6:]) for line in text.splitlines() if line.startswith("BANDS=")), None)
    kernel_python = next((line[7:] for line in text.splitlines() if line.startswith("PYTHON=")), "?")
    check(f"the notebook's kernel is this venv's Python ({kernel_python})",
          pathlib.Path(kernel_python).parent == pathlib.Path(sys.executable).parent)
    check("the notebook's conditions per age band equal the SQL CLI's",
          got is not None and {b: tuple(v) for b, v in got.items()} == sql_bands(data_dir), f"{got}")
    ok, detail = png_ok(plot) if plot.exists() else (False, "no file")
    check(f"the notebook saved a valid PNG at $FHIRLAKE_PLOT ({detail})", ok, detail)


# ---------------------------------------------------------------------------------------------
# 5. DuckDB's iceberg extension
# ---------------------------------------------------------------------------------------------
# The extension ships on PyPI as duckdb-extension-iceberg (+ duckdb-extension-avro), each build
# for one DuckDB version (duckdb==1.5.5 for the newest) that refuses any other DuckDB. This
# venv's duckdb is newer, so scripts/interop.sh installs them into a venv of their own.
ICEBERG_SCRIPT = r"""
import glob, json, sys, duckdb
con = duckdb.connect()
con.execute("SET autoinstall_known_extensions = false")
con.execute("SET autoload_known_extensions = false")
for name in ("avro", "iceberg"):
    con.execute(f"LOAD '{glob.glob(f'{sys.prefix}/lib/python*/site-packages/duckdb_extension_{name}/extensions/*/{name}.duckdb_extension')[0]}'")
print(json.dumps({m: con.execute(f"SELECT count(*) FROM iceberg_scan('{m}')").fetchone()[0]
                  for m in json.loads(sys.argv[1])}))
"""
try:
    import duckdb_extension_iceberg  # noqa: F401 - only where this venv's duckdb matches it
    iceberg_python = sys.executable
except ImportError:
    iceberg_python = os.environ.get("FHIRLAKE_DUCKDB_ICEBERG_PYTHON",
                                    str(ROOT / "target" / "venv-duckdb-iceberg" / "bin" / "python"))
if not pathlib.Path(iceberg_python).exists():
    skip("DuckDB iceberg_scan", f"duckdb-extension-iceberg is not installed here; its PyPI builds need "
         f"duckdb==1.5.5 and this venv has duckdb {duckdb.__version__}, and {iceberg_python} (a venv with "
         "duckdb==1.5.5 duckdb-extension-iceberg==1.5.5 duckdb-extension-avro==1.5.5) does not exist")
else:
    expected = {}
    for directory, names in ((data_dir, None), (scratch, ["patient", "condition"])):
        cat = catalog_of(directory)
        for ns in [n[0] for n in cat.list_namespaces()]:
            for name in names or sorted(t[-1] for t in cat.list_tables(ns)):
                table = cat.load_table((ns, name))
                expected[local(table.metadata_location)] = len(table.scan(selected_fields=("id",)).to_arrow())
    run = subprocess.run([iceberg_python, "-c", ICEBERG_SCRIPT, json.dumps(sorted(expected))],
                         capture_output=True, text=True)
    if run.returncode != 0:
        check("DuckDB iceberg_scan loads offline and reads the metadata files", False, run.stderr[-2000:])
    else:
        got = json.loads(run.stdout)
        bad = {m: (got.get(m), n) for m, n in expected.items() if got.get(m) != n}
        check(f"DuckDB iceberg_scan (extension loaded from its PyPI package, no download) on {len(expected)} "
              f"metadata files, with and without position deletes, gives pyiceberg's counts", not bad, f"{bad}")

scratch_root.cleanup()
print(f"{passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed else 0)
