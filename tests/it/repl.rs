//! The SQL front end (`fhirlake::cli`) driven end to end over a DataFusion backend holding real
//! Synthea Patient resources: script execution in every output format, failure status,
//! `\d` rendering, and the interactive loop fed from a scripted line reader.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Cursor, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{SessionConfig, SessionContext};
use fhirlake::cli::{
    BackendError, CliError, Interrupt, LineReader, OutputFormat, QueryBackend, ReadOutcome,
    RenderOptions, ReplIo, ReplOptions, RunStatus, TableInfo, run_repl_with, run_statements,
    run_statements_to,
};
use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::Notify;

const PATIENTS: usize = 5;

/// The first few Patient resources of the shared Synthea sample, or `None` (with a message)
/// when the shared data directory is not there.
fn patient_lines() -> Option<Vec<String>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/synthea-r4-100p/Patient.ndjson.gz");
    if !path.exists() {
        eprintln!(
            "skipping: sample data {} is not present (../shared relative to the crate)",
            path.display()
        );
        return None;
    }
    let file = std::fs::File::open(&path).expect("open Patient sample");
    let lines = BufReader::new(flate2::read::GzDecoder::new(file))
        .lines()
        .take(PATIENTS)
        .collect::<Result<Vec<_>, _>>()
        .expect("read Patient sample");
    Some(lines)
}

/// A backend over a plain DataFusion context: `patient` decoded from the sample with Arrow's
/// JSON reader, plus an empty `account` table. `SELECT stall` never produces a row and wakes
/// `stalled`, so tests can cancel a running query.
struct TestBackend {
    ctx: SessionContext,
    stalled: Arc<Notify>,
}

impl TestBackend {
    fn new(lines: &[String]) -> Self {
        let text = lines.join("\n");
        let (schema, _) =
            datafusion::arrow::json::reader::infer_json_schema(Cursor::new(text.as_bytes()), None)
                .expect("infer schema");
        let schema = Arc::new(schema);
        let batches = datafusion::arrow::json::ReaderBuilder::new(schema.clone())
            .build(Cursor::new(text.into_bytes()))
            .expect("json reader")
            .collect::<Result<Vec<_>, _>>()
            .expect("decode patients");
        // Keep FHIR's camelCase column names as they are, like the real engine does.
        let config = SessionConfig::new()
            .set_bool("datafusion.sql_parser.enable_ident_normalization", false);
        let ctx = SessionContext::new_with_config(config);
        ctx.register_table(
            "patient",
            Arc::new(MemTable::try_new(schema, vec![batches]).expect("patient table")),
        )
        .expect("register patient");
        let account = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, true)]));
        ctx.register_table(
            "account",
            Arc::new(MemTable::try_new(account, vec![vec![]]).expect("account table")),
        )
        .expect("register account");
        TestBackend {
            ctx,
            stalled: Arc::new(Notify::new()),
        }
    }
}

impl QueryBackend for TestBackend {
    fn execute<'a>(
        &'a self,
        sql: &'a str,
    ) -> BoxFuture<'a, Result<SendableRecordBatchStream, BackendError>> {
        Box::pin(async move {
            if sql.eq_ignore_ascii_case("SELECT stall") {
                self.stalled.notify_one();
                let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
                let never = futures::stream::pending();
                return Ok(Box::pin(RecordBatchStreamAdapter::new(schema, never))
                    as SendableRecordBatchStream);
            }
            let frame = self.ctx.sql(sql).await?;
            Ok(frame.execute_stream().await?)
        })
    }

    fn tables(&self) -> BoxFuture<'_, Result<Vec<TableInfo>, BackendError>> {
        Box::pin(async move {
            let names = self
                .ctx
                .catalog("datafusion")
                .and_then(|c| c.schema("public"))
                .map(|s| s.table_names())
                .unwrap_or_default();
            let mut tables = Vec::new();
            for name in names {
                let rows = self.ctx.table(name.as_str()).await?.count().await?;
                tables.push(TableInfo {
                    name,
                    rows: rows as u64,
                });
            }
            Ok(tables)
        })
    }

    fn describe<'a>(
        &'a self,
        table: &'a str,
    ) -> BoxFuture<'a, Result<Option<SchemaRef>, BackendError>> {
        Box::pin(async move {
            let name = table.to_lowercase();
            if !self.ctx.table_exist(name.as_str())? {
                return Ok(None);
            }
            Ok(Some(self.ctx.table_provider(name.as_str()).await?.schema()))
        })
    }
}

/// Runs a script into memory: (status, stdout text, stderr text).
async fn script(
    backend: &TestBackend,
    sql: &str,
    format: OutputFormat,
) -> (RunStatus, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let status = run_statements_to(
        backend,
        sql,
        format,
        &RenderOptions::default(),
        &mut out,
        &mut err,
    )
    .await
    .expect("script runs");
    (
        status,
        String::from_utf8(out).expect("utf8 out"),
        String::from_utf8(err).expect("utf8 err"),
    )
}

/// The sample resources as JSON values, sorted by id (the tests' ORDER BY).
fn sorted_resources(lines: &[String]) -> Vec<Value> {
    let mut values: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("sample json"))
        .collect();
    values.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    values
}

#[tokio::test]
async fn csv_output_has_one_header_and_nested_values_as_json() {
    let Some(lines) = patient_lines() else { return };
    let backend = TestBackend::new(&lines);
    let (status, out, err) = script(
        &backend,
        "SELECT id, gender, birthDate, name FROM patient ORDER BY id",
        OutputFormat::Csv,
    )
    .await;
    assert_eq!(status, RunStatus::Success, "{err}");
    let mut reader = csv_records(&out);
    assert_eq!(reader.remove(0), vec!["id", "gender", "birthDate", "name"]);
    assert_eq!(reader.len(), PATIENTS);
    for (record, resource) in reader.iter().zip(sorted_resources(&lines)) {
        assert_eq!(record[0], resource["id"].as_str().unwrap());
        assert_eq!(record[1], resource["gender"].as_str().unwrap());
        assert_eq!(record[2], resource["birthDate"].as_str().unwrap());
        let name: Value = serde_json::from_str(&record[3]).expect("name is JSON text");
        assert_eq!(name, resource["name"]);
    }
}

/// Minimal RFC 4180 reader for the assertions (quoted fields, doubled quotes).
fn csv_records(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    records
}

#[tokio::test]
async fn json_output_is_one_object_per_row() {
    let Some(lines) = patient_lines() else { return };
    let backend = TestBackend::new(&lines);
    let (status, out, err) = script(
        &backend,
        "SELECT id, name, telecom FROM patient ORDER BY id;",
        OutputFormat::Json,
    )
    .await;
    assert_eq!(status, RunStatus::Success, "{err}");
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(rows.len(), PATIENTS);
    for (row, resource) in rows.iter().zip(sorted_resources(&lines)) {
        assert_eq!(row["id"], resource["id"]);
        assert_eq!(row["name"], resource["name"]);
        assert_eq!(row["telecom"], resource["telecom"]);
    }
}

#[tokio::test]
async fn parquet_output_reads_back() {
    let Some(lines) = patient_lines() else { return };
    let backend: Arc<dyn QueryBackend> = Arc::new(TestBackend::new(&lines));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("patients.parquet");
    let status = run_statements(
        backend.clone(),
        "SELECT id, name FROM patient ORDER BY id;",
        OutputFormat::Parquet,
        Some(&path),
    )
    .await
    .expect("parquet export");
    assert_eq!(status, RunStatus::Success);

    let file = std::fs::File::open(&path).expect("parquet file");
    let batches: Vec<RecordBatch> =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("parquet reader")
            .build()
            .expect("build reader")
            .collect::<Result<_, _>>()
            .expect("read batches");
    let ids: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let ids = b.column(0).as_string::<i32>();
            (0..ids.len())
                .map(|i| ids.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let expected: Vec<String> = sorted_resources(&lines)
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, expected);
    assert!(matches!(
        batches[0].column(1).data_type(),
        DataType::List(_)
    ));

    // Parquet holds one result and needs a file.
    let two = run_statements(
        backend.clone(),
        "SELECT 1; SELECT 2",
        OutputFormat::Parquet,
        Some(&path),
    )
    .await;
    assert!(
        matches!(two, Err(CliError::ParquetSingleResult(2))),
        "{two:?}"
    );
    let no_file = run_statements(backend.clone(), "SELECT 1", OutputFormat::Parquet, None).await;
    assert!(
        matches!(no_file, Err(CliError::ParquetNeedsFile)),
        "{no_file:?}"
    );

    // A failed export leaves no unreadable file behind.
    let failed_path = dir.path().join("failed.parquet");
    let failed = run_statements(
        backend,
        "SELECT no_such_column FROM patient",
        OutputFormat::Parquet,
        Some(&failed_path),
    )
    .await
    .expect("script runs");
    assert_eq!(failed, RunStatus::Failed);
    assert!(!failed_path.exists());
}

#[tokio::test]
async fn failing_statement_stops_the_script_with_failed_status() {
    let Some(lines) = patient_lines() else { return };
    let backend = TestBackend::new(&lines);
    let (status, out, err) = script(
        &backend,
        "SELECT count(*) AS n FROM patient; SELECT no_such_column FROM patient; SELECT 42 AS answer",
        OutputFormat::Table,
    )
    .await;
    assert_eq!(status, RunStatus::Failed);
    assert_eq!(out, " n\n---\n 5\n(1 row)\n\n");
    assert!(err.starts_with("ERROR (statement 2 of 3): "), "{err}");
    assert!(err.contains("no_such_column"), "{err}");
    assert!(!out.contains("answer"));

    let (status, _, err) = script(&backend, "SELECT * FROM missing_table", OutputFormat::Csv).await;
    assert_eq!(status, RunStatus::Failed);
    assert!(err.starts_with("ERROR: "), "{err}");
    assert!(err.contains("missing_table"), "{err}");
}

#[tokio::test]
async fn table_output_truncates_and_renders_nested_values() {
    let Some(lines) = patient_lines() else { return };
    let backend = TestBackend::new(&lines);
    let (status, out, err) = script(
        &backend,
        "SELECT id, name FROM patient ORDER BY id LIMIT 2",
        OutputFormat::Table,
    )
    .await;
    assert_eq!(status, RunStatus::Success, "{err}");
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 5, "{out}");
    let resources = sorted_resources(&lines);
    let first = rows[2];
    let (id, name) = first.split_once(" | ").expect("two cells");
    assert_eq!(id.trim(), resources[0]["id"].as_str().unwrap());
    let family = resources[0]["name"][0]["family"].as_str().unwrap();
    assert!(name.starts_with("[{use=official, family="), "{name}");
    assert!(name.contains(family) || name.ends_with('…'), "{name}");
    assert!(name.chars().count() <= RenderOptions::default().max_column_width);
    assert_eq!(rows[4], "(2 rows)");
}

#[tokio::test]
async fn describe_and_list_tables() {
    let Some(lines) = patient_lines() else { return };
    let backend = TestBackend::new(&lines);

    let (status, out, err) = script(&backend, "\\d patient", OutputFormat::Table).await;
    assert_eq!(status, RunStatus::Success, "{err}");
    let rows: Vec<&str> = out.lines().collect();
    assert!(rows[0].starts_with("Table patient ("), "{out}");
    let name_at = rows
        .iter()
        .position(|l| l.split_whitespace().collect::<Vec<_>>() == ["name", "array<struct>"])
        .unwrap_or_else(|| panic!("no name line in\n{out}"));
    let children: Vec<Vec<&str>> = rows[name_at + 1..]
        .iter()
        .take_while(|l| l.starts_with("   "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(children.contains(&vec!["family", "varchar"]), "{out}");
    assert!(children.contains(&vec!["given", "array<varchar>"]), "{out}");
    assert!(
        rows.iter()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["gender", "varchar"])
    );

    let (status, out, _) = script(&backend, "\\d patient 1", OutputFormat::Table).await;
    assert_eq!(status, RunStatus::Success);
    assert!(
        !out.contains("\n   "),
        "depth 1 shows no nested lines:\n{out}"
    );
    assert!(out.contains("\\d+ patient shows every level"), "{out}");

    let (status, out, _) = script(&backend, "\\d patient", OutputFormat::Csv).await;
    assert_eq!(status, RunStatus::Success);
    assert!(out.starts_with("column,type\n"), "{out}");
    assert!(out.contains("\nname.family,varchar\n"), "{out}");

    let (status, out, _) = script(&backend, "\\d", OutputFormat::Table).await;
    assert_eq!(status, RunStatus::Success);
    assert_eq!(
        out,
        " table   | rows\n---------+------\n patient |    5\n(1 row)\n\
         1 empty resource type is not shown; \\d+ lists all.\n"
    );
    let (_, out, _) = script(&backend, "\\d+", OutputFormat::Csv).await;
    assert_eq!(out, "table,rows\naccount,0\npatient,5\n");

    let (status, _, err) = script(&backend, "\\d nosuch", OutputFormat::Table).await;
    assert_eq!(status, RunStatus::Failed);
    assert!(err.contains("no table named \"nosuch\""), "{err}");
    let (status, _, err) = script(&backend, "\\frobnicate", OutputFormat::Table).await;
    assert_eq!(status, RunStatus::Failed);
    assert!(err.contains("unknown command \\frobnicate"), "{err}");
}

/// A line reader that replays scripted input and records prompts and history.
struct ScriptedReader {
    input: VecDeque<ReadOutcome>,
    prompts: Arc<Mutex<Vec<String>>>,
    history: Arc<Mutex<Vec<String>>>,
}

impl LineReader for ScriptedReader {
    fn read_line(&mut self, prompt: &str) -> Result<ReadOutcome, CliError> {
        self.prompts.lock().unwrap().push(prompt.to_string());
        Ok(self.input.pop_front().unwrap_or(ReadOutcome::Eof))
    }

    fn add_history(&mut self, entry: &str) -> Result<(), CliError> {
        self.history.lock().unwrap().push(entry.to_string());
        Ok(())
    }
}

#[derive(Clone, Default)]
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).expect("utf8")
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn repl_handles_multi_line_input_errors_and_cancellation() {
    let Some(lines) = patient_lines() else { return };
    let backend = Arc::new(TestBackend::new(&lines));
    let line = |s: &str| ReadOutcome::Line(s.to_string());
    let input = VecDeque::from(vec![
        line("SELECT id"),
        line("FROM patient -- a comment; not the end"),
        line("ORDER BY id LIMIT 2;"),
        line("SELECT no_such_column FROM patient;"),
        line("\\timing"),
        line("SELECT count(*) AS n FROM patient; SELECT 'after' AS second"),
        line(";"),
        line("SELECT 'discarded' AS gone"),
        ReadOutcome::Interrupted,
        line("SELECT stall;"),
        line("help"),
        line("\\q"),
        line("SELECT 'never read' AS unreachable;"),
    ]);
    let prompts = Arc::new(Mutex::new(Vec::new()));
    let history = Arc::new(Mutex::new(Vec::new()));
    let out = SharedBuffer::default();
    let err = SharedBuffer::default();
    let stalled = backend.stalled.clone();
    let interrupt: Interrupt = Arc::new(move || {
        let stalled = stalled.clone();
        Box::pin(async move { stalled.notified().await })
    });
    let io = ReplIo {
        reader: Box::new(ScriptedReader {
            input,
            prompts: prompts.clone(),
            history: history.clone(),
        }),
        out: Box::new(out.clone()),
        err: Box::new(err.clone()),
        interrupt,
    };
    tokio::time::timeout(
        Duration::from_secs(120),
        run_repl_with(backend, ReplOptions::default(), io),
    )
    .await
    .expect("the session ends instead of hanging")
    .expect("the session ends cleanly");

    let out = out.text();
    let err = err.text();
    let ids: Vec<String> = sorted_resources(&lines)
        .iter()
        .take(2)
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert!(out.starts_with("fhirlake "), "{out}");
    assert!(out.contains("SELECT name[1].family, birthdate FROM patient LIMIT 5;"));
    assert!(
        out.contains(&format!(" {}\n {}\n(2 rows)\n", ids[0], ids[1])),
        "{out}"
    );
    assert!(out.contains("Timing is on."), "{out}");
    assert!(out.contains(" n\n---\n 5\n(1 row)\n\nTime: "), "{out}");
    assert!(
        out.contains(" second\n--------\n after\n(1 row)\n\nTime: "),
        "{out}"
    );
    assert!(!out.contains("discarded"), "{out}");
    assert!(out.contains("\\d TABLE [DEPTH]"), "help was shown:\n{out}");
    assert!(!out.contains("never read"));

    let errors: Vec<&str> = err.lines().collect();
    assert_eq!(errors.len(), 2, "{err}");
    assert!(
        errors[0].starts_with("ERROR: ") && errors[0].contains("no_such_column"),
        "{err}"
    );
    assert_eq!(errors[1], "query cancelled");

    let prompts = prompts.lock().unwrap().clone();
    let primary = "fhirlake> ";
    let continuation = "      ... ";
    assert_eq!(
        prompts,
        vec![
            primary,
            continuation,
            continuation,
            primary,
            primary,
            primary,
            continuation,
            primary,
            continuation,
            primary,
            primary,
            primary,
        ]
    );
    assert_eq!(
        history.lock().unwrap().clone(),
        vec![
            "SELECT id\nFROM patient -- a comment; not the end\nORDER BY id LIMIT 2;",
            "SELECT no_such_column FROM patient;",
            "\\timing",
            "SELECT count(*) AS n FROM patient;",
            "SELECT 'after' AS second\n;",
            "SELECT stall;",
            "\\q",
        ]
    );
}

/// Ctrl-C (SIGINT) during a running query cancels it and the session goes on.
#[tokio::test]
async fn ctrl_c_cancels_a_running_query() {
    let Some(lines) = patient_lines() else { return };
    let backend = Arc::new(TestBackend::new(&lines));
    let stalled = backend.stalled.clone();
    // Once the stalled query runs, the REPL already waits for SIGINT: send it to ourselves.
    let signaller = tokio::spawn(async move {
        stalled.notified().await;
        let status = tokio::process::Command::new("kill")
            .args(["-INT", &std::process::id().to_string()])
            .status()
            .await
            .expect("run kill");
        assert!(status.success());
    });
    let line = |s: &str| ReadOutcome::Line(s.to_string());
    let out = SharedBuffer::default();
    let err = SharedBuffer::default();
    let io = ReplIo {
        reader: Box::new(ScriptedReader {
            input: VecDeque::from(vec![line("SELECT stall;"), line("SELECT 7 AS seven;")]),
            prompts: Arc::default(),
            history: Arc::default(),
        }),
        out: Box::new(out.clone()),
        err: Box::new(err.clone()),
        interrupt: fhirlake::cli::ctrl_c_interrupt(),
    };
    tokio::time::timeout(
        Duration::from_secs(120),
        run_repl_with(backend, ReplOptions::default(), io),
    )
    .await
    .expect("SIGINT cancels the stalled query")
    .expect("the session ends cleanly");
    signaller.await.expect("signaller");
    assert_eq!(err.text(), "query cancelled\n");
    assert!(
        out.text().contains(" seven\n-------\n     7\n(1 row)\n"),
        "{}",
        out.text()
    );
}
