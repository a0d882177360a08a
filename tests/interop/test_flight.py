"""Drives the Arrow Flight SQL endpoint of `fhirlake serve` with a client nobody here wrote
(ADBC's Flight SQL driver, adbc_driver_flightsql, through its DB-API) and checks it against the
SQL CLI of the same installation.

Usage: test_flight.py FHIRLAKE_BIN WORK_DIR [SAMPLE_DIR]
Run from the repository root (SAMPLE_DIR defaults to data/, the shipped Synthea sample;
sql-examples/ must resolve). WORK_DIR is emptied and filled with the installation(s).
Prints one line per check and a closing 'N passed, N failed' line; exits non-zero on failure.

FLIGHT_EXAMPLES (default q*: the guide's seed examples) selects the sql-examples compared.

Server runs: (1) the installation as imported, default limits; (2) a copy of it with a bearer
token, a user/password, --query-memory-mb 8 and --query-timeout-secs 2.
"""
import concurrent.futures
import csv
import datetime
import decimal
import glob
import gzip
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading
import time
import warnings

import adbc_driver_flightsql.dbapi as flight_sql
import pandas
import pyarrow
import pyarrow.flight

# ADBC's DB-API warns that Flight SQL cannot turn autocommit off; we connect with autocommit.
warnings.simplefilter("ignore")
# ADBC objects that a thread left open when a server stopped answering complain when garbage
# collected (Cursor/Connection.__del__); that is noise here, every outcome is checked explicitly.
_unraisable = sys.unraisablehook


def _quiet_adbc_finalizers(u):
    if not str(getattr(u.object, "__module__", "")).startswith("adbc_driver_manager"):
        _unraisable(u)


sys.unraisablehook = _quiet_adbc_finalizers

binary = os.path.abspath(sys.argv[1])
work = pathlib.Path(sys.argv[2]).resolve()
sample = pathlib.Path(sys.argv[3] if len(sys.argv) > 3 else "data")
passed = failed = 0
started = time.time()


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}", flush=True)
    else:
        failed += 1
        print(f"FAIL {name} {detail}", flush=True)


def short(e, n=400):
    s = f"{type(e).__name__}: {e}"
    if "but got schema:" in s:
        # ADBC's "inconsistent schema" error lists both schemas: keep the fields that differ.
        want, got = s.split("but got schema:", 1)
        field = re.compile(r"- (\w+): type=([^,\s]+)")
        w, g = dict(field.findall(want)), dict(field.findall(got))
        fields = [f"{k}: {w.get(k)} announced, {g.get(k)} sent" for k in sorted(set(w) | set(g))
                  if w.get(k) != g.get(k)]
        s = f"{want.splitlines()[0]} ... differing: {'; '.join(fields)}"
    return s if len(s) <= n else s[:n] + "…"


# ---------------------------------------------------------------- installation

if work.exists():
    shutil.rmtree(work)
work.mkdir(parents=True)
data = work / "data"
subprocess.run([binary, "--data-dir", str(data), "import", str(sample), "--quiet"],
               check=True, stdout=subprocess.DEVNULL)

# The second data store: one Patient file of the sample, imported before the server starts
# (data stores are loaded at server start).
candidates = sorted(sample.rglob("Patient*.ndjson.gz"))
research_file = next((p for p in candidates if "100p" in str(p)), candidates[0])
with gzip.open(research_file, "rt") as f:
    research_ids = {json.loads(line)["id"] for line in f if line.strip()}
subprocess.run([binary, "--data-dir", str(data), "import", str(research_file),
                "--datastore", "research", "--quiet"], check=True, stdout=subprocess.DEVNULL)
print(f"# imports done after {time.time() - started:.0f}s", flush=True)


def repl_csv(path):
    """The SQL CLI's result of one example: (returncode, header, rows, stderr)."""
    p = subprocess.run([binary, "--data-dir", str(data), "sql", "-f", path, "--format", "csv"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        return p.returncode, None, None, p.stderr.strip()
    records = list(csv.reader(io.StringIO(p.stdout)))
    return 0, records[0], records[1:], ""


# Every SQL example through the CLI first (two at a time), while no server holds the store.
examples = sorted(glob.glob(f"sql-examples/{os.environ.get('FLIGHT_EXAMPLES', 'q*')}.sql"))
with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    repl = dict(zip(examples, pool.map(repl_csv, examples)))
print(f"# installation and {len(examples)} CLI runs ready after {time.time() - started:.0f}s", flush=True)


# ---------------------------------------------------------------- helpers

def start_server(data_dir, *extra):
    """Starts `serve`; returns (process, grpc uri). stdout is drained in the background."""
    err = open(work / f"serve-{data_dir.name}.stderr", "w")
    proc = subprocess.Popen([binary, "--data-dir", str(data_dir), "serve", "--http", "127.0.0.1:0",
                             "--flight-sql", "127.0.0.1:0", *extra],
                            stdout=subprocess.PIPE, stderr=err, text=True)
    uri = None
    lines = []
    found = threading.Event()

    def drain():
        nonlocal uri
        for line in proc.stdout:
            lines.append(line)
            m = re.search(r"Flight SQL endpoint: (grpc://\S+)", line)
            if m and uri is None:
                uri = m.group(1)
                found.set()
        found.set()

    threading.Thread(target=drain, daemon=True).start()
    found.wait(60)
    if uri is None:
        stop_server(proc)
        raise SystemExit(f"the server printed no Flight SQL endpoint: {''.join(lines)}")
    return proc, uri


def stop_server(proc):
    if proc.poll() is None:
        t0 = time.time()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        print(f"# server stopped in {time.time() - t0:.1f}s", flush=True)


def connect(uri, **db_kwargs):
    return flight_sql.connect(uri, db_kwargs=db_kwargs or None, autocommit=True)


def query(conn, sql, parameters=None):
    """Runs one statement; returns the pyarrow Table."""
    with conn.cursor() as cur:
        cur.execute(sql, parameters=parameters)
        return cur.fetch_arrow_table()


def attempt(conn, sql, parameters=None):
    """(table, None) or (None, exception)."""
    try:
        return query(conn, sql, parameters), None
    except Exception as e:  # noqa: BLE001 - any driver error is an outcome to check
        return None, e


def scalar(conn, sql, parameters=None):
    return query(conn, sql, parameters).column(0)[0].as_py()


# A CPU-bound cross join aggregate: ~50M pairs, some 20 s on a debug build.
CROSS_JOIN = ("SELECT sum(length(a.id) + length(b.id)) AS s FROM observation a "
              "CROSS JOIN (SELECT id FROM observation LIMIT 4000) b")


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_during(pid, seconds):
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return cpu_seconds(pid) - before


def answers_within(uri, seconds, **db_kwargs):
    """Whether a fresh connection gets `SELECT count(*) FROM patient` answered in time:
    (ok, elapsed, detail)."""
    out = {}

    def run():
        t0 = time.time()
        try:
            with connect(uri, **db_kwargs) as c:
                out["n"] = scalar(c, "SELECT count(*) FROM patient")
        except Exception as e:  # noqa: BLE001
            out["err"] = short(e, 200)
        out["t"] = time.time() - t0

    t = threading.Thread(target=run, daemon=True)
    t0 = time.time()
    t.start()
    t.join(seconds)
    if t.is_alive():
        return False, time.time() - t0, f"no answer within {seconds}s"
    return "n" in out, out["t"], out.get("err", f"count={out.get('n')}")


# Values as the CLI's CSV shows them (nested values as JSON text without null members, NULL as
# an empty field), brought to one canonical form on both sides.
NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


def number(v):
    f = float(v)
    if f.is_integer() and abs(f) < 1e15:
        return str(int(f))
    return format(f, ".12g")


def canon(v):
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float, decimal.Decimal)):
        return number(v)
    if isinstance(v, datetime.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return "ts:" + v.isoformat(timespec="microseconds")
    if isinstance(v, datetime.date):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    if isinstance(v, dict):
        d = {k: canon(x) for k, x in v.items()}
        d = {k: x for k, x in d.items() if x is not None}
        return d or None
    if isinstance(v, (list, tuple)):
        return [canon(x) for x in v]
    s = str(v)
    if s == "":
        return None
    if s[0] in "[{":
        try:
            return canon(json.loads(s))
        except ValueError:
            return s
    if NUMBER.match(s):
        return number(s)
    if TIMESTAMP.match(s):
        try:
            return canon(datetime.datetime.fromisoformat(s))
        except ValueError:
            return s
    return s


def row_key(row):
    return json.dumps([canon(v) for v in row], sort_keys=True)


def compare_example(path, table, header, rows):
    """None if the ADBC result equals the CLI's, else a description of the first difference."""
    names = table.schema.names
    if names != header:
        return f"header {names} != CLI {header}"
    got = [row_key(r.values()) for r in table.to_pylist()]
    want = [row_key(r) for r in rows]
    if len(got) != len(want):
        return f"{len(got)} rows != CLI {len(want)} rows"
    sql = open(path).read()
    if "-- compare: ordered" in sql:
        for i, (g, w) in enumerate(zip(got, want)):
            if g != w:
                return f"row {i}: {g[:300]} != CLI {w[:300]}"
        return None
    if sorted(got) != sorted(want):
        diff = sorted(set(got) - set(want))
        return f"rows differ, e.g. {diff[0][:300] if diff else '(multiplicity)'}"
    # ORDER BY without a fully determined order: the order-by columns must come in the same order.
    m = re.search(r"order\s+by\s+([\w\s,]+?)\s*;?\s*$", re.sub(r"--[^\n]*", "", sql), re.I | re.S)
    if m:
        keys = [k.strip().lower() for k in m.group(1).split(",")]
        if all(k in names for k in keys):
            idx = [names.index(k) for k in keys]
            got_keys = [[canon(r[names[i]]) for i in idx] for r in table.to_pylist()]
            want_keys = [[canon(r[i]) for i in idx] for r in rows]
            if got_keys != want_keys:
                return f"ORDER BY {keys}: the key sequence differs"
    return None


# ---------------------------------------------------------------- server 1: default limits

server, uri = start_server(data)
print(f"# server 1 at {uri} (pid {server.pid})", flush=True)
try:
    conn = connect(uri)

    # a. The SQL examples through ADBC equal the CLI's results.
    for path in examples:
        rc, header, rows, err = repl[path]
        name = pathlib.Path(path).stem
        if rc != 0:
            table, e = attempt(conn, open(path).read())
            print(f"skip {name}: fails in the CLI too ({err[:160]}); over Flight SQL: "
                  f"{'rows' if e is None else short(e, 160)}", flush=True)
            golden = pathlib.Path(path).with_suffix(".expected-error")
            if golden.exists():
                expected = golden.read_text().strip()
                check(f"a. {name} is refused over ADBC too, with its expected error",
                      e is not None and expected in str(e), short(e) if e else "no error")
            continue
        table, e = attempt(conn, open(path).read())
        if e is not None:
            check(f"a. {name} over ADBC equals the CLI ({len(rows)} rows)", False, short(e, 1200))
            continue
        diff = compare_example(path, table, header, rows)
        check(f"a. {name} over ADBC equals the CLI ({len(rows)} rows)", diff is None, diff or "")

    # b. Prepared statements with parameters.
    sql_g = "SELECT id, gender, birthdate FROM patient WHERE gender = ? ORDER BY id"
    lit_g = "SELECT id, gender, birthdate FROM patient WHERE gender = '{}' ORDER BY id"
    with conn.cursor() as cur:
        cur.execute(sql_g, parameters=("male",))
        male = cur.fetch_arrow_table()
        # The same operation again: the DB-API reuses the prepared statement and rebinds.
        cur.execute(sql_g, parameters=("female",))
        female = cur.fetch_arrow_table()
    male_lit, female_lit = query(conn, lit_g.format("male")), query(conn, lit_g.format("female"))
    check(f"b. prepared `gender = ?` ('male', {male.num_rows} rows) equals the literal query",
          male.num_rows > 0 and male.to_pylist() == male_lit.to_pylist(),
          f"{male.num_rows} vs {male_lit.num_rows}")
    check(f"b. re-executing it with 'female' ({female.num_rows} rows) equals the literal query",
          female.num_rows > 0 and female.to_pylist() == female_lit.to_pylist()
          and female.to_pylist() != male.to_pylist(), f"{female.num_rows} vs {female_lit.num_rows}")
    sql_n = ("SELECT id FROM patient WHERE gender = ? AND year(date(birthdate)) < ? ORDER BY id")
    t1, e1 = attempt(conn, sql_n, ("male", 1960))
    t1_lit = query(conn, "SELECT id FROM patient WHERE gender = 'male' AND year(date(birthdate)) < 1960 ORDER BY id")
    check(f"b. prepared with an integer parameter (< 1960: {t1_lit.num_rows} rows) equals the literal query",
          e1 is None and t1.to_pylist() == t1_lit.to_pylist(), short(e1) if e1 else f"{t1.num_rows}")
    sql_f = "SELECT count(*) AS n FROM observation WHERE valuequantity.value > ?"
    n_f, e_f = attempt(conn, sql_f, (100.5,))
    n_f_lit = scalar(conn, "SELECT count(*) AS n FROM observation WHERE valuequantity.value > 100.5")
    check(f"b. prepared with a float parameter (> 100.5: {n_f_lit}) equals the literal query",
          e_f is None and n_f.column(0)[0].as_py() == n_f_lit, short(e_f) if e_f else "")

    # c. Metadata.
    objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    catalogs = {c["catalog_name"]: c for c in objects}
    schemas = {s["db_schema_name"]: s for s in (catalogs.get("fhirlake") or {}).get("catalog_db_schemas") or []}
    tables = {t["table_name"]: t for t in (schemas.get("fhir") or {}).get("db_schema_tables") or []}
    patient_cols = [c["column_name"] for c in (tables.get("patient") or {}).get("table_columns") or []]
    check("c. get_objects: catalog fhirlake with schemas fhir and research",
          list(catalogs) == ["fhirlake"] and {"fhir", "research"} <= set(schemas), f"{list(catalogs)} {list(schemas)}")
    check(f"c. get_objects: fhir has table patient (TABLE) among {len(tables)} tables, with its columns",
          (tables.get("patient") or {}).get("table_type") == "TABLE" and "observation" in tables
          and {"id", "gender", "birthdate", "name"} <= set(patient_cols), f"{patient_cols[:8]}")
    schema = conn.adbc_get_table_schema("patient", db_schema_filter="fhir")
    star = query(conn, "SELECT * FROM patient LIMIT 0").schema
    check(f"c. get_table_schema(patient, fhir): {len(schema)} fields, as SELECT * returns them",
          schema.names == star.names and schema.names == patient_cols
          and schema.field("name").type == star.field("name").type, f"{schema.names[:5]}")
    types = conn.adbc_get_table_types()
    check("c. get_table_types is ['TABLE']", types == ["TABLE"], f"{types}")
    info = conn.adbc_get_info()
    check(f"c. get_info vendor_name is fhirlake (version {info.get('vendor_version')})",
          info.get("vendor_name") == "fhirlake", f"{info}")

    # d. Data store selection.
    n_default = scalar(conn, "SELECT count(*) FROM patient")
    with connect(uri, **{"adbc.flight.sql.rpc.call_header.x-fhirlake-datastore": "research"}) as rc:
        n_header, e_header = attempt(rc, "SELECT count(*) FROM patient")
    check(f"d. header x-fhirlake-datastore: research sees {len(research_ids)} patients (default: {n_default})",
          e_header is None and n_header.column(0)[0].as_py() == len(research_ids) != n_default,
          short(e_header) if e_header else f"{n_header.column(0)[0].as_py()}")
    with connect(uri, **{"adbc.flight.sql.rpc.with_cookie_middleware": "true"}) as sc:
        _, e_use = attempt(sc, "USE research")
        n_use, e_after = attempt(sc, "SELECT count(*) FROM patient")
        n_use = n_use.column(0)[0].as_py() if n_use is not None else None
        check(f"d. cursor.execute('USE research') with cookie middleware, then patient has {len(research_ids)} rows",
              e_use is None and n_use == len(research_ids),
              f"USE: {short(e_use) if e_use else 'ok'}; then count={n_use}")
    # The same USE sent unprepared (AdbcStatement.execute_query, CommandStatementQuery).
    with connect(uri, **{"adbc.flight.sql.rpc.with_cookie_middleware": "true"}) as sc:
        with sc.cursor() as cur:
            stmt = cur.adbc_statement
            stmt.set_sql_query("USE research")
            try:
                handle, _ = stmt.execute_query()
                pyarrow.RecordBatchReader._import_from_c(handle.address).read_all()
                e_raw = None
            except Exception as e:  # noqa: BLE001
                e_raw = e
        n_raw = scalar(sc, "SELECT count(*) FROM patient") if e_raw is None else None
        check("d. USE research as an unprepared statement (execute_query), then the session sees research",
              e_raw is None and n_raw == len(research_ids), short(e_raw) if e_raw else f"count={n_raw}")
    n_q, e_q = attempt(conn, "SELECT count(*) FROM research.patient")
    check("d. qualified research.patient works from the default connection",
          e_q is None and n_q.column(0)[0].as_py() == len(research_ids)
          and scalar(conn, "SELECT count(*) FROM patient") == n_default,
          short(e_q) if e_q else f"{n_q.column(0)[0].as_py()}")
    with connect(uri, **{"adbc.flight.sql.rpc.call_header.x-fhirlake-datastore": "nosuch"}) as bc:
        _, e_bad = attempt(bc, "SELECT 1")
    check("d. an unknown data store in the header is an error naming it",
          e_bad is not None and "nosuch" in str(e_bad), short(e_bad) if e_bad else "no error")

    # e. Errors.
    for sql in ("DROP TABLE patient", "INSERT INTO patient (id) VALUES ('x')", "DELETE FROM patient"):
        _, e = attempt(conn, sql)
        check(f"e. `{sql}` is refused as read-only", e is not None and "read-only" in str(e),
              short(e) if e else "no error")
    with conn.cursor() as cur:
        try:
            cur.executescript("DROP TABLE patient")  # Flight SQL CommandStatementUpdate
            e = None
        except Exception as ex:  # noqa: BLE001
            e = ex
    check("e. DROP TABLE through executescript (ExecuteUpdate) is refused as read-only",
          e is not None and "read-only" in str(e), short(e) if e else "no error")
    _, e = attempt(conn, "SELECT nosuchcolumn FROM patient")
    check("e. an unknown column is an error naming it", e is not None and "nosuchcolumn" in str(e),
          short(e) if e else "no error")
    check("e. the server still answers afterwards", scalar(conn, "SELECT count(*) FROM patient") == n_default)

    # j. pandas through ADBC.
    pandas_sql = ("SELECT id, gender, birthdate, name[1].family AS family, deceasedboolean, "
                  "_last_updated FROM patient ORDER BY id")
    with conn.cursor() as cur:
        cur.execute(pandas_sql)
        df = cur.fetch_df()
    arrow_t = query(conn, pandas_sql)
    try:
        pandas.testing.assert_frame_equal(df, arrow_t.to_pandas())
        same, why = True, ""
    except AssertionError as ex:
        same, why = False, str(ex)[:300]
    check(f"j. fetch_df ({len(df)} rows, {len(df.columns)} columns) equals the pyarrow result",
          same and len(df) == n_default and df["id"].tolist() == arrow_t.column("id").to_pylist()
          and df["family"].tolist() == arrow_t.column("family").to_pylist(), why)

    # g. A huge result computed on the fly, streamed batch by batch.
    n_obs = scalar(conn, "SELECT count(*) FROM observation")
    per = 800
    huge = f"SELECT o.id, x FROM observation o CROSS JOIN (SELECT unnest(range(0, {per})) AS x) t"
    base_rss = rss_bytes(server.pid)
    peak = [base_rss]
    sampling = threading.Event()

    def sample_rss():
        while not sampling.is_set():
            peak[0] = max(peak[0], rss_bytes(server.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    rows = batches = nbytes = 0
    first = None
    t0 = time.time()
    try:
        with conn.cursor() as cur:
            cur.execute(huge)
            reader = cur.fetch_record_batch()
            for batch in reader:
                if first is None:
                    first = time.time() - t0
                rows += batch.num_rows
                batches += 1
                nbytes += batch.nbytes
        e_huge = None
    except Exception as ex:  # noqa: BLE001
        e_huge = ex
    total = time.time() - t0
    sampling.set()
    sampler.join()
    grew = peak[0] - base_rss
    mib = 2 ** 20
    print(f"# g. {rows} rows in {batches} batches, {nbytes / mib:.0f} MiB of Arrow data, first batch "
          f"after {first or 0:.2f}s, all after {total:.1f}s; server RSS {base_rss / mib:.0f} MiB before, "
          f"peak {peak[0] / mib:.0f} MiB (+{grew / mib:.0f} MiB)", flush=True)
    check(f"g. {per} x {n_obs} observations = {per * n_obs} rows fetched batch by batch",
          e_huge is None and rows == per * n_obs and rows >= 10_000_000,
          short(e_huge) if e_huge else f"got {rows}")
    check(f"g. server peak RSS grew {grew / mib:.0f} MiB, well below the {nbytes / mib:.0f} MiB result",
          e_huge is None and grew < nbytes / 4, f"+{grew / mib:.0f} MiB")
    check(f"g. the first batch arrived early ({first or 0:.2f}s of {total:.1f}s)",
          first is not None and first < total / 4)

    # h. Cancellation, from another thread, of (1) an aggregate over a generated series and (2) a
    # cross join aggregate (the last check of this server: a failing one may leave it busy).
    def cancel_check(label, sql):
        outcome = {}
        cconn = connect(uri)
        cur = cconn.cursor()

        def run():
            try:
                cur.execute(sql)
                outcome["rows"] = cur.fetchall()
            except Exception as ex:  # noqa: BLE001
                outcome["err"] = ex
            outcome["end"] = time.time()

        th = threading.Thread(target=run, daemon=True)
        th.start()
        time.sleep(1.0)
        cancelled_at = time.time()
        cur.adbc_cancel()
        th.join(10)
        err = outcome.get("err")
        raised_after = outcome["end"] - cancelled_at if "end" in outcome else None
        check(f"h. {label}: adbc_cancel after 1s makes the fetch raise (cancelled) within 5s"
              f" ({raised_after if raised_after is not None else float('nan'):.2f}s)",
              err is not None and "cancel" in str(err).lower() and raised_after is not None and raised_after < 5,
              f"{short(err) if err else outcome.get('rows', 'still running')}")
        time.sleep(0.5)
        busy = cpu_during(server.pid, 2.0)
        check(f"h. {label}: the server stops working on it ({busy:.2f} CPU-s in the 2s after)", busy < 0.6,
              f"{busy:.2f} CPU-seconds")
        ok, took, detail = answers_within(uri, 5)
        check(f"h. {label}: the server answers a new query ({took:.2f}s)", ok and took < 5, detail)
        if not th.is_alive():
            cur.close()
            cconn.close()

    cancel_check("SELECT count(*), sum(value % 7) FROM generate_series(1, 1e9)",
                 "SELECT count(*), sum(value % 7) FROM generate_series(1, 1000000000)")
    cancel_check("a cross join aggregate", CROSS_JOIN)
finally:
    stop_server(server)

# ---------------------------------------------------------------- server 2: auth and limits

data_auth = work / "data-auth"
shutil.copytree(data, data_auth)
server, uri = start_server(data_auth, "--flight-sql-token", "s3cret", "--flight-sql-user", "analyst",
                           "--flight-sql-password", "pw", "--query-memory-mb", "8",
                           "--query-timeout-secs", "2")
print(f"# server 2 at {uri} (pid {server.pid}): token, user/password, 8 MiB per query, 2s per query",
      flush=True)
TOKEN = {"adbc.flight.sql.authorization_header": "Bearer s3cret"}
try:
    def try_auth(**kw):
        try:
            with connect(uri, **kw) as c:
                return scalar(c, "SELECT count(*) FROM patient"), None
        except Exception as ex:  # noqa: BLE001
            return None, ex

    # f. Authentication.
    n, e = try_auth()
    check("f. no credentials: UNAUTHENTICATED, mentioning authentication",
          n is None and "UNAUTHENTICATED" in str(e) and "authentication" in str(e).lower(),
          short(e) if e else f"answered {n}")
    n, e = try_auth(**{"adbc.flight.sql.authorization_header": "Bearer wrong"})
    check("f. wrong token: refused (UNAUTHENTICATED)", n is None and "UNAUTHENTICATED" in str(e),
          short(e) if e else f"answered {n}")
    n_auth, e = try_auth(**TOKEN)
    check(f"f. right token: answers ({n_auth} patients)", e is None and n_auth and n_auth > 0,
          short(e) if e else "")
    n, e = try_auth(username="analyst", password="pw")
    check("f. user analyst / password pw (ADBC username/password): answers",
          e is None and n == n_auth, short(e) if e else f"{n}")
    n, e = try_auth(username="analyst", password="wrong")
    check("f. wrong password: refused (UNAUTHENTICATED)", n is None and "UNAUTHENTICATED" in str(e),
          short(e) if e else f"answered {n}")
    # The same basic credentials from pyarrow's Flight client (base64 with '=' padding).
    try:
        client = pyarrow.flight.FlightClient(uri)
        key, value = client.authenticate_basic_token("analyst", "pw")
        client.close()
        n, e = try_auth(**{"adbc.flight.sql.authorization_header": value.decode()})
    except Exception as ex:  # noqa: BLE001
        n, e = None, ex
    check("f. analyst/pw through pyarrow.flight's basic handshake; its session token works over ADBC",
          e is None and n == n_auth, short(e) if e else f"{n}")

    with connect(uri, **TOKEN) as conn:
        # i. Memory limit (8 MiB per query, no spilling).
        for label, sql in (
                ("ORDER BY over 3M generated rows",
                 "SELECT value, value * 2 AS y FROM generate_series(1, 3000000) ORDER BY value % 1000, value DESC"),
                ("GROUP BY with 2M groups",
                 "SELECT value % 2000000 AS k, count(*) AS n FROM generate_series(1, 5000000) GROUP BY value % 2000000")):
            _, e = attempt(conn, sql)
            text = str(e)
            check(f"i. {label} fails on the 8 MiB limit (RESOURCE_EXHAUSTED, message names the memory limit)",
                  e is not None and "memory limit" in text and "ResourceExhausted" in text,
                  short(e) if e else "no error")
        n, e = attempt(conn, "SELECT count(*) FROM patient")
        check("i. a small query still works afterwards", e is None and n.column(0)[0].as_py() == n_auth,
              short(e) if e else "")

        # i. Time limit (2 s per query, fetching included).
        t0 = time.time()
        _, e = attempt(conn, "SELECT count(*), sum(value % 7) FROM generate_series(1, 1000000000)")
        took = time.time() - t0
        check(f"i. a long aggregate fails on the 2s time limit (DEADLINE_EXCEEDED) after {took:.1f}s",
              e is not None and "time limit" in str(e) and "DeadlineExceeded" in str(e) and took < 8,
              short(e) if e else "no error")
        busy = cpu_during(server.pid, 2.0)
        check(f"i. ... and the server stops working on it ({busy:.2f} CPU-s in the 2s after)", busy < 0.6)
        n, e = attempt(conn, "SELECT count(*) FROM patient")
        check("i. a small query still works afterwards", e is None and n.column(0)[0].as_py() == n_auth,
              short(e) if e else "")
        t0 = time.time()
        _, e = attempt(conn, CROSS_JOIN)
        took = time.time() - t0
        check(f"i. a long cross join aggregate fails on the 2s time limit after {took:.1f}s",
              e is not None and "time limit" in str(e) and took < 8, short(e) if e else "no error")
        time.sleep(0.5)
        busy = cpu_during(server.pid, 2.0)
        check(f"i. ... and the server stops working on it ({busy:.2f} CPU-s in the 2s after)", busy < 0.6,
              f"{busy:.2f} CPU-seconds")
finally:
    stop_server(server)

print(f"# {time.time() - started:.0f}s in all", flush=True)
print(f"{passed} passed, {failed} failed")
sys.stdout.flush()
# Threads left blocked in the driver by a server that stopped answering must not hold the exit.
os._exit(1 if failed else 0)
