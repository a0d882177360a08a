//! The interactive SQL session and non-interactive script execution.
//!
//! Both run on a [`QueryBackend`], the three operations the front end needs from an engine:
//! run a statement, list tables, describe one. The embedded engine and a Flight SQL client each
//! implement it, so the REPL never knows which one it talks to.
//!
//! The REPL reads lines through a [`LineReader`] (rustyline on a terminal, a script in tests),
//! accumulates them until a `;` ends a statement, and runs each statement so that Ctrl-C drops
//! the running query (its stream, and with it the plan) and brings the prompt back.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::error::DataFusionError;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::future::BoxFuture;

use super::output::{self, OutputFormat, RenderOptions, ResultWriter};
use super::{CliError, ScriptItem, split_script, split_statements};

/// What the SQL front end needs from a query engine.
///
/// Methods return boxed futures (rather than `async fn`) so the trait can be used as
/// `Arc<dyn QueryBackend>`; implement them as `Box::pin(async move { … })`.
pub trait QueryBackend: Send + Sync {
    /// Plans and starts one SQL statement, returning its result as a stream of batches.
    /// Dropping the stream cancels the statement.
    fn execute<'a>(
        &'a self,
        sql: &'a str,
    ) -> BoxFuture<'a, Result<SendableRecordBatchStream, BackendError>>;

    /// The tables of the current data store, one per resource type, with lower-case SQL names
    /// and their row counts. Empty resource types are included (with 0 rows).
    fn tables(&self) -> BoxFuture<'_, Result<Vec<TableInfo>, BackendError>>;

    /// The SQL-visible Arrow schema of one table, looked up case-insensitively; `None` when
    /// there is no such table.
    fn describe<'a>(
        &'a self,
        table: &'a str,
    ) -> BoxFuture<'a, Result<Option<SchemaRef>, BackendError>>;
}

/// One table as listed by `\d`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// Lower-case SQL name, e.g. `patient`.
    pub name: String,
    /// Number of rows (current resource versions).
    pub rows: u64,
}

/// A failure reported by a [`QueryBackend`].
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The engine rejected or failed the statement.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    /// Any other failure (SQL translation, transport, catalog), carried with its message.
    #[error("{0}")]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl BackendError {
    /// Wraps any error or message as [`BackendError::Other`].
    pub fn other(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        BackendError::Other(error.into())
    }
}

/// Settings of an interactive session.
#[derive(Debug, Clone, Default)]
pub struct ReplOptions {
    /// Where input history is loaded from and appended to (the data directory's history
    /// file); `None` keeps history in memory only.
    pub history_file: Option<PathBuf>,
    /// Initial output format; `\format` changes it. Parquet is not allowed interactively.
    pub format: OutputFormat,
    /// Table widths and describe depth.
    pub render: RenderOptions,
    /// Whether `\timing` starts switched on.
    pub timing: bool,
    /// An extra banner line, e.g. which data directory or server the session uses.
    pub banner: Option<String>,
}

/// How a script run ended; failures have already been reported on the error stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Every statement succeeded (or the reader of the output pipe went away).
    Success,
    /// A statement failed; the script stopped there.
    Failed,
}

impl RunStatus {
    /// Process exit code: 0 on success, 1 when a statement failed.
    pub fn exit_code(self) -> std::process::ExitCode {
        match self {
            RunStatus::Success => std::process::ExitCode::SUCCESS,
            RunStatus::Failed => std::process::ExitCode::FAILURE,
        }
    }
}

/// What one read from the line editor produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOutcome {
    /// A line of input, without its newline.
    Line(String),
    /// Ctrl-C at the prompt: the input typed so far is discarded.
    Interrupted,
    /// Ctrl-D (or end of input): the session ends.
    Eof,
}

/// A source of input lines. Reads block, so the REPL calls them on a blocking thread.
pub trait LineReader: Send {
    /// Shows `prompt` and reads one line.
    fn read_line(&mut self, prompt: &str) -> Result<ReadOutcome, CliError>;
    /// Records one complete entry (a whole statement, possibly several lines) in the history.
    fn add_history(&mut self, entry: &str) -> Result<(), CliError>;
}

/// A future factory that completes when the user asks to cancel the running statement.
/// The REPL calls it once per statement and races the statement against it.
pub type Interrupt = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// The terminal side of a session: input, result output, error output and the cancel signal.
pub struct ReplIo {
    /// Where input lines come from.
    pub reader: Box<dyn LineReader>,
    /// Where results, the banner and command output go.
    pub out: Box<dyn Write + Send>,
    /// Where error messages go.
    pub err: Box<dyn Write + Send>,
    /// Completes when the running statement should be cancelled.
    pub interrupt: Interrupt,
}

impl ReplIo {
    /// The real terminal: rustyline with the given history file, stdout, stderr and Ctrl-C.
    pub fn terminal(history_file: Option<&Path>) -> Result<Self, CliError> {
        let mut err = io::stderr();
        let (reader, warning) = RustylineReader::new(history_file)?;
        if let Some(warning) = warning {
            writeln!(err, "warning: {warning}")?;
        }
        Ok(ReplIo {
            reader: Box::new(reader),
            out: Box::new(io::stdout()),
            err: Box::new(err),
            interrupt: ctrl_c_interrupt(),
        })
    }
}

/// An [`Interrupt`] that completes on Ctrl-C (SIGINT). While rustyline reads a line the
/// terminal is in raw mode and Ctrl-C arrives as a key instead, which the REPL handles itself.
pub fn ctrl_c_interrupt() -> Interrupt {
    Arc::new(|| {
        Box::pin(async {
            if tokio::signal::ctrl_c().await.is_err() {
                // Without a signal handler there is nothing to wait for; never cancel.
                std::future::pending::<()>().await;
            }
        })
    })
}

/// Line reader over rustyline, with history persisted after every entry so a killed session
/// keeps it.
struct RustylineReader {
    editor: rustyline::DefaultEditor,
    history_file: Option<PathBuf>,
}

impl RustylineReader {
    fn new(history_file: Option<&Path>) -> Result<(Self, Option<CliError>), CliError> {
        let config = rustyline::Config::builder()
            .auto_add_history(false)
            .history_ignore_space(true)
            .history_ignore_dups(true)
            .and_then(|c| c.max_history_size(10_000))
            .map_err(|e| CliError::Terminal(e.to_string()))?
            .build();
        let mut editor = rustyline::DefaultEditor::with_config(config)
            .map_err(|e| CliError::Terminal(e.to_string()))?;
        let mut warning = None;
        if let Some(path) = history_file.filter(|p| p.exists())
            && let Err(e) = editor.load_history(path)
        {
            warning = Some(CliError::History {
                path: path.to_path_buf(),
                message: e.to_string(),
            });
        }
        Ok((
            RustylineReader {
                editor,
                history_file: history_file.map(Path::to_path_buf),
            },
            warning,
        ))
    }
}

impl LineReader for RustylineReader {
    fn read_line(&mut self, prompt: &str) -> Result<ReadOutcome, CliError> {
        use rustyline::error::ReadlineError;
        match self.editor.readline(prompt) {
            Ok(line) => Ok(ReadOutcome::Line(line)),
            Err(ReadlineError::Interrupted) => Ok(ReadOutcome::Interrupted),
            Err(ReadlineError::Eof) => Ok(ReadOutcome::Eof),
            Err(e) => Err(CliError::Terminal(e.to_string())),
        }
    }

    fn add_history(&mut self, entry: &str) -> Result<(), CliError> {
        let history_error = |path: &Path, e: rustyline::error::ReadlineError| CliError::History {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let path = self.history_file.as_deref().unwrap_or(Path::new(""));
        self.editor
            .add_history_entry(entry)
            .map_err(|e| history_error(path, e))?;
        if let Some(path) = &self.history_file {
            self.editor
                .append_history(path)
                .map_err(|e| history_error(path, e))?;
        }
        Ok(())
    }
}

const PROMPT: &str = "fhirlake> ";
const CONTINUATION_PROMPT: &str = "      ... ";

/// The first query the banner suggests.
const EXAMPLE_QUERY: &str = "SELECT name[1].family, birthdate FROM patient LIMIT 5;";

const HELP: &str = "\
Statements end with ';' and may span several lines.
Ctrl-C cancels a running query or clears the input; Ctrl-D or \\q quits.

  \\d                        list tables that have rows
  \\d+                       list every resource type, empty ones included
  \\d TABLE [DEPTH]          describe a table, expanding DEPTH levels of nesting
  \\d+ TABLE                 describe a table with every level expanded
  \\timing [on|off]          show how long each statement takes
  \\format [table|csv|json]  show or change the output format
  \\? or help                this help
  \\q                        quit
";

/// Runs the interactive session on the terminal until Ctrl-D or `\q`.
pub async fn run_repl(
    backend: Arc<dyn QueryBackend>,
    options: ReplOptions,
) -> Result<(), CliError> {
    let io = ReplIo::terminal(options.history_file.as_deref())?;
    run_repl_with(backend, options, io).await
}

/// Runs the interactive session on the given input and outputs.
///
/// Returns when input ends or `\q` is given. Statement errors are printed to `io.err` and the
/// session continues; only failures of the output or input end it with an error.
pub async fn run_repl_with(
    backend: Arc<dyn QueryBackend>,
    options: ReplOptions,
    io: ReplIo,
) -> Result<(), CliError> {
    if options.format == OutputFormat::Parquet {
        return Err(CliError::UnsupportedInteractiveFormat(options.format));
    }
    let ReplIo {
        reader,
        mut out,
        mut err,
        interrupt,
    } = io;
    let mut session = Session::new(
        backend.as_ref(),
        options.format,
        options.render,
        options.timing,
    );

    writeln!(
        out,
        "fhirlake {} - Athena-dialect SQL over FHIR R4 tables",
        env!("CARGO_PKG_VERSION")
    )?;
    if let Some(banner) = &options.banner {
        writeln!(out, "{banner}")?;
    }
    writeln!(
        out,
        "End statements with ';'. \\d lists tables, \\? shows help, \\q quits.\nTry: {EXAMPLE_QUERY}\n"
    )?;
    out.flush()?;

    let mut reader = Some(reader);
    let mut buffer = String::new();
    let mut history_failed = false;
    loop {
        let prompt = if buffer.is_empty() {
            PROMPT
        } else {
            CONTINUATION_PROMPT
        };
        let Some(current) = reader.take() else {
            return Err(CliError::LineEditor("the line reader was lost".into()));
        };
        let (returned, outcome) = tokio::task::spawn_blocking(move || {
            let mut current = current;
            let outcome = current.read_line(prompt);
            (current, outcome)
        })
        .await
        .map_err(|e| CliError::LineEditor(e.to_string()))?;
        let current = reader.insert(returned);

        let line = match outcome? {
            ReadOutcome::Line(line) => line,
            ReadOutcome::Interrupted => {
                buffer.clear();
                continue;
            }
            ReadOutcome::Eof => break,
        };
        if buffer.is_empty() {
            let word = line
                .trim()
                .trim_end_matches(';')
                .trim()
                .to_ascii_lowercase();
            match word.as_str() {
                "help" => {
                    out.write_all(HELP.as_bytes())?;
                    out.flush()?;
                    continue;
                }
                "quit" | "exit" => break,
                _ => {}
            }
        }

        buffer.push_str(&line);
        buffer.push('\n');
        let split = split_script(&buffer);
        let entry = buffer[..split.rest_offset].trim();
        if !entry.is_empty()
            && !split.items.is_empty()
            && let Err(e) = current.add_history(entry)
            && !history_failed
        {
            writeln!(err, "warning: {e}")?;
            history_failed = true;
        }
        buffer.drain(..split.rest_offset);

        for item in &split.items {
            let started = Instant::now();
            let result = tokio::select! {
                result = session.run_item(item, &mut *out) => Some(result),
                () = interrupt() => None,
            };
            out.flush()?;
            match result {
                None => writeln!(err, "query cancelled")?,
                Some(Ok(Flow::Quit)) => return Ok(()),
                Some(Ok(Flow::Continue)) => {
                    if matches!(item, ScriptItem::Sql(_)) {
                        // A blank line sets each table apart from the next prompt, as psql does.
                        if session.format == OutputFormat::Table {
                            writeln!(out)?;
                        }
                        if session.timing {
                            writeln!(out, "{}", format_elapsed(started.elapsed()))?;
                        }
                    }
                }
                Some(Err(e)) if e.is_fatal() => return Err(e),
                Some(Err(e)) => writeln!(err, "ERROR: {e}")?,
            }
            out.flush()?;
            err.flush()?;
        }
    }
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// Runs a script (`-e SQL` or `-f FILE`) with results on stdout or in `output`, errors on
/// stderr.
///
/// The script is split on `;` outside quotes and comments; backslash commands (`\d patient`)
/// work too. Execution stops at the first failing statement. Parquet output needs `output`
/// and a script with exactly one statement; a failed Parquet export removes its file.
pub async fn run_statements(
    backend: Arc<dyn QueryBackend>,
    sql_text: &str,
    format: OutputFormat,
    output: Option<&Path>,
) -> Result<RunStatus, CliError> {
    if format == OutputFormat::Parquet {
        if output.is_none() {
            return Err(CliError::ParquetNeedsFile);
        }
        let count = split_statements(sql_text).len();
        if count != 1 {
            return Err(CliError::ParquetSingleResult(count));
        }
    }
    let mut err = io::stderr();
    let options = RenderOptions::default();
    match output {
        None => {
            let mut out = io::BufWriter::new(io::stdout());
            let status = run_statements_to(
                backend.as_ref(),
                sql_text,
                format,
                &options,
                &mut out,
                &mut err,
            )
            .await;
            match out.flush() {
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
                Err(e) => return Err(e.into()),
                Ok(()) => {}
            }
            status
        }
        Some(path) => {
            let file = std::fs::File::create(path).map_err(|source| CliError::CreateOutput {
                path: path.to_path_buf(),
                source,
            })?;
            let mut out = io::BufWriter::new(file);
            let status = run_statements_to(
                backend.as_ref(),
                sql_text,
                format,
                &options,
                &mut out,
                &mut err,
            )
            .await;
            let flushed = out.flush();
            let failed = !matches!(status, Ok(RunStatus::Success)) || flushed.is_err();
            if failed && format == OutputFormat::Parquet {
                // A half-written Parquet file has no footer and no reader can open it.
                drop(out);
                let _ = std::fs::remove_file(path);
            }
            flushed?;
            status
        }
    }
}

/// Runs a script against explicit output and error writers; see [`run_statements`].
///
/// Results of consecutive statements follow each other (separated by a blank line in the
/// table format; CSV repeats its header per result). Timing lines (`\timing`) go to `err` so
/// they never mix with exported data.
pub async fn run_statements_to(
    backend: &dyn QueryBackend,
    sql_text: &str,
    format: OutputFormat,
    options: &RenderOptions,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> Result<RunStatus, CliError> {
    let items = split_statements(sql_text);
    let total = items.len();
    let mut session = Session::new(backend, format, options.clone(), false);
    for (index, item) in items.iter().enumerate() {
        if index > 0 && session.format == OutputFormat::Table {
            writeln!(out)?;
        }
        let started = Instant::now();
        match session.run_item(item, out).await {
            Ok(Flow::Quit) => break,
            Ok(Flow::Continue) => {
                if session.timing && matches!(item, ScriptItem::Sql(_)) {
                    writeln!(err, "{}", format_elapsed(started.elapsed()))?;
                }
            }
            Err(e) if e.is_broken_pipe() => return Ok(RunStatus::Success),
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                match out.flush() {
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
                    other => other?,
                }
                if total > 1 {
                    writeln!(err, "ERROR (statement {} of {total}): {e}", index + 1)?;
                } else {
                    writeln!(err, "ERROR: {e}")?;
                }
                err.flush()?;
                return Ok(RunStatus::Failed);
            }
        }
    }
    match out.flush() {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(RunStatus::Success),
        Err(e) => Err(e.into()),
        Ok(()) => Ok(RunStatus::Success),
    }
}

fn format_elapsed(elapsed: Duration) -> String {
    format!("Time: {:.3} s", elapsed.as_secs_f64())
}

/// Whether the session goes on after an item.
enum Flow {
    Continue,
    Quit,
}

/// State shared by the REPL and scripts: backend, current format and toggles.
struct Session<'b> {
    backend: &'b dyn QueryBackend,
    format: OutputFormat,
    render: RenderOptions,
    timing: bool,
}

impl<'b> Session<'b> {
    fn new(
        backend: &'b dyn QueryBackend,
        format: OutputFormat,
        render: RenderOptions,
        timing: bool,
    ) -> Self {
        Session {
            backend,
            format,
            render,
            timing,
        }
    }

    async fn run_item(
        &mut self,
        item: &ScriptItem,
        out: &mut (dyn Write + Send),
    ) -> Result<Flow, CliError> {
        match item {
            ScriptItem::Sql(sql) => {
                let stream = self.backend.execute(sql).await?;
                output::write_stream(stream, self.format, out, &self.render).await?;
                Ok(Flow::Continue)
            }
            ScriptItem::Command(command) => self.run_command(command, out).await,
        }
    }

    async fn run_command(
        &mut self,
        command: &str,
        out: &mut (dyn Write + Send),
    ) -> Result<Flow, CliError> {
        let mut words = command.split_whitespace();
        let name = words.next().unwrap_or_default();
        let args: Vec<&str> = words.collect();
        match name {
            "q" | "quit" => Ok(Flow::Quit),
            "?" | "h" | "help" => {
                out.write_all(HELP.as_bytes())?;
                Ok(Flow::Continue)
            }
            "timing" => {
                self.timing = match args.as_slice() {
                    [] => !self.timing,
                    ["on"] => true,
                    ["off"] => false,
                    _ => return Err(invalid("timing", "expected on or off")),
                };
                let state = if self.timing { "on" } else { "off" };
                writeln!(out, "Timing is {state}.")?;
                Ok(Flow::Continue)
            }
            "format" => {
                match args.as_slice() {
                    [] => {}
                    ["table"] => self.format = OutputFormat::Table,
                    ["csv"] => self.format = OutputFormat::Csv,
                    ["json"] => self.format = OutputFormat::Json,
                    _ => return Err(invalid("format", "expected table, csv or json")),
                }
                writeln!(out, "Output format is {}.", self.format)?;
                Ok(Flow::Continue)
            }
            "d" | "d+" => {
                let all = name == "d+";
                match args.as_slice() {
                    [] => self.list_tables(all, out).await?,
                    [table] => {
                        let depth = (!all).then_some(self.render.describe_depth.max(1));
                        self.describe(table, depth, out).await?;
                    }
                    [table, depth] if !all => {
                        let depth =
                            depth
                                .parse::<usize>()
                                .ok()
                                .filter(|d| *d > 0)
                                .ok_or_else(|| {
                                    invalid(
                                        "d",
                                        &format!("depth must be a positive number, not {depth}"),
                                    )
                                })?;
                        self.describe(table, Some(depth), out).await?;
                    }
                    _ => return Err(invalid(name, "expected at most a table name and a depth")),
                }
                Ok(Flow::Continue)
            }
            other => Err(CliError::UnknownCommand(other.to_string())),
        }
    }

    /// `\d`: tables with their row counts, as a result in the current format. Without `+`,
    /// empty resource types are left out and counted in a footer line.
    async fn list_tables(&self, all: bool, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
        let mut tables = self.backend.tables().await?;
        tables.sort_by(|a, b| a.name.cmp(&b.name));
        let empty = tables.iter().filter(|t| t.rows == 0).count();
        if !all {
            tables.retain(|t| t.rows > 0);
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("table", DataType::Utf8, false),
            Field::new("rows", DataType::UInt64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    tables.iter().map(|t| &t.name),
                )),
                Arc::new(UInt64Array::from_iter_values(tables.iter().map(|t| t.rows))),
            ],
        )
        .map_err(|e| BackendError::DataFusion(e.into()))?;
        self.write_batch(batch, out)?;
        if !all && empty > 0 && self.format == OutputFormat::Table {
            let plural = if empty == 1 { "type is" } else { "types are" };
            writeln!(
                out,
                "{empty} empty resource {plural} not shown; \\d+ lists all."
            )?;
        }
        Ok(())
    }

    /// `\d TABLE`: the nested column tree in the table format, one row per (dotted) field in
    /// the others.
    async fn describe(
        &self,
        table: &str,
        depth: Option<usize>,
        out: &mut (dyn Write + Send),
    ) -> Result<(), CliError> {
        let table = table.trim_matches('"');
        let schema = self
            .backend
            .describe(table)
            .await?
            .ok_or_else(|| CliError::UnknownTable(table.to_string()))?;
        if self.format == OutputFormat::Table {
            let name = table.to_lowercase();
            out.write_all(output::describe_tree(&name, &schema, depth).as_bytes())?;
        } else {
            let batch =
                output::describe_batch(&schema).map_err(|e| BackendError::DataFusion(e.into()))?;
            self.write_batch(batch, out)?;
        }
        Ok(())
    }

    fn write_batch(
        &self,
        batch: RecordBatch,
        out: &mut (dyn Write + Send),
    ) -> Result<(), CliError> {
        let mut writer = ResultWriter::new(self.format, batch.schema(), out, &self.render)?;
        writer.write(&batch)?;
        writer.finish()?;
        Ok(())
    }
}

fn invalid(command: &str, message: &str) -> CliError {
    CliError::InvalidArgument {
        command: command.to_string(),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The futures the REPL hands to tokio must be `Send`, so a caller may spawn them.
    #[test]
    fn session_futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        struct Nothing;
        impl QueryBackend for Nothing {
            fn execute<'a>(
                &'a self,
                _: &'a str,
            ) -> BoxFuture<'a, Result<SendableRecordBatchStream, BackendError>> {
                Box::pin(async { Err(BackendError::other("no engine")) })
            }
            fn tables(&self) -> BoxFuture<'_, Result<Vec<TableInfo>, BackendError>> {
                Box::pin(async { Ok(Vec::new()) })
            }
            fn describe<'a>(
                &'a self,
                _: &'a str,
            ) -> BoxFuture<'a, Result<Option<SchemaRef>, BackendError>> {
                Box::pin(async { Ok(None) })
            }
        }
        let backend: Arc<dyn QueryBackend> = Arc::new(Nothing);
        let mut out = Vec::new();
        let mut err = Vec::new();
        let options = RenderOptions::default();
        let script = run_statements_to(
            backend.as_ref(),
            "SELECT 1",
            OutputFormat::Csv,
            &options,
            &mut out,
            &mut err,
        );
        assert_send(&script);
        let repl = run_repl(backend.clone(), ReplOptions::default());
        assert_send(&repl);
    }

    #[test]
    fn run_status_maps_to_exit_codes() {
        assert_eq!(
            RunStatus::Success.exit_code(),
            std::process::ExitCode::SUCCESS
        );
        assert_eq!(
            RunStatus::Failed.exit_code(),
            std::process::ExitCode::FAILURE
        );
    }
}
