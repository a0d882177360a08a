//! The SQL examples of `sql-examples/` against their golden results.
//!
//! One installation is built from the shipped sample (`data/`) by the real binary; every
//! `sql-examples/*.sql` then runs through `fhirlake sql -f FILE --format csv`, exactly as a
//! user would run it, and its output is compared with the golden file next to it. Every
//! mismatch is collected and reported in one failure, so a change that moves many results is
//! seen whole. With `FHIRLAKE_BLESS=1` the test writes the goldens instead of comparing.
//!
//! The rules (rows compared as a sorted multiset unless the file says `-- compare: ordered`,
//! a fixed `current_date`, the `<import-time>` placeholder, summaries of big results, expected
//! errors and known failures) are documented in `sql-examples/README.md`; the constants below
//! are the single source of truth for them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use regex::Regex;
use sha2::{Digest, Sha256};

/// What `current_date` is replaced with before a query runs, so ages stay stable.
const FIXED_CURRENT_DATE: &str = "DATE '2026-01-01'";
/// Results whose golden CSV would be larger than this are stored as a summary.
const SUMMARY_THRESHOLD_BYTES: usize = 300 * 1024;
/// Replaces timestamps written by the test's own import (`_last_updated`, `meta.lastUpdated`).
const IMPORT_TIME: &str = "<import-time>";
/// A line of an example that asks for its rows to be compared in order.
const ORDERED_DIRECTIVE: &str = "-- compare: ordered";
/// Set to `1` to write goldens instead of comparing.
const BLESS_VAR: &str = "FHIRLAKE_BLESS";
/// Sorted rows shown at the end of a summary, to orient a reader.
const SUMMARY_SAMPLE_ROWS: usize = 3;
/// First line of every summary file: names the format version.
const SUMMARY_MAGIC: &str =
    "# fhirlake sql-examples result summary v1 (format: sql-examples/README.md)";
/// Longest excerpt of a line or an error quoted in the failure report.
const REPORT_CLIP: usize = 300;

const CSV_SUFFIX: &str = ".expected.csv";
const SUMMARY_SUFFIX: &str = ".expected.summary";
const ERROR_SUFFIX: &str = ".expected-error";
const KNOWN_FAILURE_SUFFIX: &str = ".known-failure";
const GOLDEN_SUFFIXES: [&str; 4] = [
    CSV_SUFFIX,
    SUMMARY_SUFFIX,
    ERROR_SUFFIX,
    KNOWN_FAILURE_SUFFIX,
];

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sql-examples")
}

/// One `sql-examples/<name>.sql`.
struct Example {
    name: String,
    sql: String,
}

impl Example {
    fn ordered(&self) -> bool {
        self.sql.lines().any(|l| l.trim() == ORDERED_DIRECTIVE)
    }

    fn sql_path(&self) -> PathBuf {
        examples_dir().join(format!("{}.sql", self.name))
    }

    fn golden_path(&self, suffix: &str) -> PathBuf {
        examples_dir().join(format!("{}{suffix}", self.name))
    }
}

/// The recorded expectation of an example.
enum Golden {
    /// The full normalized CSV.
    Csv(String),
    /// A summary (see [`summarize`]) of a result too large to store.
    Summary(String),
    /// The query is wrong as written; its error message contains this text.
    Error(String),
    /// The query is right but fhirlake fails on it (a bug listed under "Known failures" in
    /// the README); the error message currently contains this text.
    KnownFailure(String),
}

/// What running an example produced.
enum Run {
    /// CSV records after normalization, header first.
    Rows(Vec<String>),
    /// The binary exited unsuccessfully; its stderr.
    Failed(String),
}

/// The span of the test's import: timestamps inside it were written by the import.
struct ImportWindow {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

fn load_examples() -> Vec<Example> {
    let mut examples: Vec<Example> = std::fs::read_dir(examples_dir())
        .expect("sql-examples/ is readable")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .map(|p| Example {
            name: p.file_stem().unwrap().to_string_lossy().into_owned(),
            sql: std::fs::read_to_string(&p).expect("example is UTF-8 text"),
        })
        .collect();
    examples.sort_by(|a, b| a.name.cmp(&b.name));
    examples
}

/// Golden files whose example does not exist (renamed or deleted `.sql`).
fn orphan_goldens(examples: &[Example]) -> Vec<String> {
    let mut orphans = Vec::new();
    for entry in std::fs::read_dir(examples_dir()).expect("sql-examples/ is readable") {
        let file = entry.expect("directory entry").file_name();
        let file = file.to_string_lossy();
        if let Some(stem) = GOLDEN_SUFFIXES.iter().find_map(|s| file.strip_suffix(s))
            && !examples.iter().any(|e| e.name == stem)
        {
            orphans.push(file.into_owned());
        }
    }
    orphans.sort();
    orphans
}

fn read_golden(example: &Example) -> Result<Option<Golden>, String> {
    let mut found = Vec::new();
    for suffix in GOLDEN_SUFFIXES {
        let path = example.golden_path(suffix);
        if let Ok(text) = std::fs::read_to_string(&path) {
            let golden = match suffix {
                CSV_SUFFIX => Golden::Csv(text),
                SUMMARY_SUFFIX => Golden::Summary(text),
                ERROR_SUFFIX => Golden::Error(text.trim().to_string()),
                _ => Golden::KnownFailure(text.trim().to_string()),
            };
            found.push((suffix, golden));
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop().map(|(_, g)| g)),
        _ => Err(format!(
            "conflicting goldens {}: keep exactly one",
            found
                .iter()
                .map(|(s, _)| format!("{}{s}", example.name))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Replaces `current_date` (a whole word, any case) with [`FIXED_CURRENT_DATE`].
fn fix_current_date(sql: &str) -> Option<String> {
    static CURRENT_DATE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(?i)\bcurrent_date\b").unwrap());
    CURRENT_DATE.is_match(sql).then(|| {
        CURRENT_DATE
            .replace_all(sql, FIXED_CURRENT_DATE)
            .into_owned()
    })
}

/// Parses the ISO-8601 timestamps the CSV output and FHIR `instant`s use; no zone means UTC.
fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let text = text.replacen(' ', "T", 1);
    if let Ok(t) = DateTime::parse_from_rfc3339(&text) {
        return Some(t.with_timezone(&Utc));
    }
    if let Ok(t) = DateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S%.f%z") {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc())
}

/// Replaces every timestamp that falls within the import (give or take two seconds) with
/// [`IMPORT_TIME`]: those are the write times the import stamped, different on every run.
fn mask_import_times(text: &str, window: &ImportWindow) -> String {
    static TIMESTAMP: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:?\d{2})?")
            .unwrap()
    });
    let slack = Duration::seconds(2);
    TIMESTAMP
        .replace_all(text, |caps: &regex::Captures<'_>| {
            let found = &caps[0];
            match parse_timestamp(found) {
                Some(t) if t >= window.start - slack && t <= window.end + slack => {
                    IMPORT_TIME.to_string()
                }
                _ => found.to_string(),
            }
        })
        .into_owned()
}

/// Splits RFC 4180 CSV into records (a quoted field may hold line breaks).
fn csv_records(text: &str) -> Vec<String> {
    let mut records = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            '\n' if !quoted => {
                if current.ends_with('\r') {
                    current.pop();
                }
                records.push(std::mem::take(&mut current));
            }
            _ => current.push(c),
        }
    }
    if !current.is_empty() {
        records.push(current);
    }
    records
}

/// Shows a record on one line of a summary or report.
fn one_line(record: &str) -> String {
    record
        .replace('\\', "\\\\")
        .replace('\r', "\\r")
        .replace('\n', "\\n")
}

/// The summary of a result: header, row count, SHA-256 of the sorted rows (each followed by
/// a line feed) and the first sorted rows. Format documented in `sql-examples/README.md`.
fn summarize(records: &[String]) -> String {
    let (header, rows) = records.split_first().map_or(("", &[][..]), |(h, r)| (h, r));
    let mut sorted: Vec<&String> = rows.iter().collect();
    sorted.sort();
    let mut hasher = Sha256::new();
    for row in &sorted {
        hasher.update(row.as_bytes());
        hasher.update(b"\n");
    }
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut text = format!(
        "{SUMMARY_MAGIC}\nheader: {}\nrows: {}\nsha256-sorted-rows: {digest}\n",
        one_line(header),
        sorted.len()
    );
    for row in sorted.iter().take(SUMMARY_SAMPLE_ROWS) {
        text.push_str(&format!("sample: {}\n", one_line(row)));
    }
    text
}

fn csv_text(records: &[String]) -> String {
    let mut text = records.join("\n");
    text.push('\n');
    text
}

fn clip(text: &str) -> String {
    let text = one_line(text.trim());
    match text.char_indices().nth(REPORT_CLIP) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// Compares a result with its golden CSV; `None` when they match.
fn compare_rows(expected: &[String], actual: &[String], ordered: bool) -> Option<String> {
    let (exp_header, exp_rows) = expected.split_first()?;
    let Some((act_header, act_rows)) = actual.split_first() else {
        return Some("the output is empty (no header line)".into());
    };
    if exp_header != act_header {
        return Some(format!(
            "header differs\n    expected: {}\n    actual:   {}",
            clip(exp_header),
            clip(act_header)
        ));
    }
    let mut exp_rows: Vec<&String> = exp_rows.iter().collect();
    let mut act_rows: Vec<&String> = act_rows.iter().collect();
    let which = if ordered {
        "data row"
    } else {
        exp_rows.sort();
        act_rows.sort();
        "sorted data row"
    };
    let counts = if exp_rows.len() == act_rows.len() {
        String::new()
    } else {
        format!(
            "{} rows expected, {} returned; ",
            exp_rows.len(),
            act_rows.len()
        )
    };
    let first_diff =
        (0..exp_rows.len().max(act_rows.len())).find(|&i| exp_rows.get(i) != act_rows.get(i))?;
    let show = |row: Option<&&String>| row.map_or("(none)".to_string(), |r| clip(r));
    Some(format!(
        "{counts}first difference at {which} {}\n    expected: {}\n    actual:   {}",
        first_diff + 1,
        show(exp_rows.get(first_diff)),
        show(act_rows.get(first_diff))
    ))
}

/// Compares two summaries line by line; `None` when they match.
fn compare_summaries(expected: &str, actual: &str) -> Option<String> {
    let mut exp = expected.lines();
    let mut act = actual.lines();
    loop {
        match (exp.next(), act.next()) {
            (None, None) => return None,
            (e, a) if e == a => continue,
            (e, a) => {
                return Some(format!(
                    "summary differs (regenerate the full CSV to see the rows)\n    expected: {}\n    actual:   {}",
                    clip(e.unwrap_or("(none)")),
                    clip(a.unwrap_or("(none)"))
                ));
            }
        }
    }
}

fn run_example(
    bin: &Path,
    data_dir: &Path,
    scratch: &Path,
    example: &Example,
    window: &ImportWindow,
) -> Run {
    let file = match fix_current_date(&example.sql) {
        Some(fixed) => {
            let path = scratch.join(format!("{}.sql", example.name));
            std::fs::write(&path, fixed).expect("write the date-fixed query");
            path
        }
        None => example.sql_path(),
    };
    let output = Command::new(bin)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["sql", "--format", "csv", "-f"])
        .arg(&file)
        .output()
        .expect("run fhirlake sql");
    if !output.status.success() {
        return Run::Failed(String::from_utf8_lossy(&output.stderr).trim().to_string());
    }
    let stdout = String::from_utf8(output.stdout).expect("CSV output is UTF-8");
    Run::Rows(csv_records(&mask_import_times(&stdout, window)))
}

/// Checks one result against its golden; returns the problem, if any.
fn check(example: &Example, golden: Option<Golden>, run: &Run) -> Option<String> {
    match (golden, run) {
        (None, Run::Rows(_)) => Some(format!(
            "no golden file: run with {BLESS_VAR}=1 to write it"
        )),
        (None, Run::Failed(err)) => Some(format!("fails and has no golden: {}", clip(err))),
        (Some(Golden::Csv(text)), Run::Rows(rows)) => {
            compare_rows(&csv_records(&text), rows, example.ordered())
        }
        (Some(Golden::Summary(text)), Run::Rows(rows)) => {
            compare_summaries(&text, &summarize(rows))
        }
        (Some(Golden::Csv(_) | Golden::Summary(_)), Run::Failed(err)) => {
            Some(format!("fails: {}", clip(err)))
        }
        (Some(Golden::Error(expected) | Golden::KnownFailure(expected)), Run::Failed(err)) => {
            (!err.contains(&expected)).then(|| {
                format!(
                    "fails with a different error\n    expected to contain: {}\n    actual: {}",
                    clip(&expected),
                    clip(err)
                )
            })
        }
        (Some(Golden::Error(expected)), Run::Rows(rows)) => Some(format!(
            "expected an error containing {:?}, but it returned {} rows",
            clip(&expected),
            rows.len().saturating_sub(1)
        )),
        (Some(Golden::KnownFailure(_)), Run::Rows(_)) => Some(format!(
            "known failure now succeeds: run with {BLESS_VAR}=1 to record its result (that removes {}{KNOWN_FAILURE_SUFFIX}) and delete its entry under \"Known failures\" in sql-examples/README.md",
            example.name
        )),
    }
}

/// Writes the golden of a successful result and removes any other kind; failures are only
/// re-checked, since which text of an error is stable (and whether it is the query's fault or
/// fhirlake's) is a decision for a person.
fn bless(example: &Example, golden: Option<Golden>, run: &Run) -> Option<String> {
    let Run::Rows(rows) = run else {
        return check(example, golden, run);
    };
    let text = csv_text(rows);
    let (keep, content) = if text.len() > SUMMARY_THRESHOLD_BYTES {
        (SUMMARY_SUFFIX, summarize(rows))
    } else {
        (CSV_SUFFIX, text)
    };
    for suffix in GOLDEN_SUFFIXES.iter().filter(|s| **s != keep) {
        let path = example.golden_path(suffix);
        if path.exists() {
            std::fs::remove_file(&path).expect("remove a stale golden");
            eprintln!("blessed {}: removed {}{suffix}", example.name, example.name);
        }
    }
    std::fs::write(example.golden_path(keep), content).expect("write the golden");
    None
}

#[test]
fn sql_examples_match_their_goldens() {
    let started = Instant::now();
    let bless_mode = std::env::var(BLESS_VAR).is_ok_and(|v| v == "1");
    let bin = Path::new(env!("CARGO_BIN_EXE_fhirlake"));
    let examples = load_examples();
    assert!(!examples.is_empty(), "no sql-examples/*.sql found");

    let temp = tempfile::tempdir().expect("temp dir");
    let data_dir = temp.path().join("installation");
    let scratch = temp.path().join("queries");
    std::fs::create_dir_all(&scratch).expect("scratch dir");

    let import_start = Utc::now();
    let import = Command::new(bin)
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("import")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("data"))
        .arg("--quiet")
        .output()
        .expect("run fhirlake import");
    let window = ImportWindow {
        start: import_start,
        end: Utc::now(),
    };
    assert!(
        import.status.success(),
        "importing data/ failed: {}",
        String::from_utf8_lossy(&import.stderr)
    );
    let import_secs = started.elapsed().as_secs_f64();

    // The binary is single-query; a few at once use the cores without starving other tests.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
    let next = AtomicUsize::new(0);
    let runs: Mutex<Vec<Option<Run>>> = Mutex::new((0..examples.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(example) = examples.get(i) else {
                        break;
                    };
                    let run = run_example(bin, &data_dir, &scratch, example, &window);
                    runs.lock().unwrap()[i] = Some(run);
                }
            });
        }
    });
    let runs = runs.into_inner().unwrap();

    let mut problems = Vec::new();
    let mut known_failures = Vec::new();
    for (example, run) in examples.iter().zip(runs) {
        let run = run.expect("every example ran");
        let golden = match read_golden(example) {
            Ok(golden) => golden,
            Err(conflict) => {
                problems.push(format!("{}: {conflict}", example.name));
                continue;
            }
        };
        if matches!(golden, Some(Golden::KnownFailure(_))) && matches!(run, Run::Failed(_)) {
            known_failures.push(example.name.clone());
        }
        let problem = if bless_mode {
            bless(example, golden, &run)
        } else {
            check(example, golden, &run)
        };
        if let Some(problem) = problem {
            problems.push(format!("{}: {problem}", example.name));
        }
    }
    for orphan in orphan_goldens(&examples) {
        problems.push(format!("{orphan}: golden file without a .sql example"));
    }

    eprintln!(
        "sql-examples: {} examples, import {import_secs:.1}s, total {:.1}s{}",
        examples.len(),
        started.elapsed().as_secs_f64(),
        if bless_mode { " (blessed)" } else { "" }
    );
    if !known_failures.is_empty() {
        eprintln!(
            "sql-examples: known failures (fhirlake bugs, see sql-examples/README.md): {}",
            known_failures.join(", ")
        );
    }
    assert!(
        problems.is_empty(),
        "{} of {} SQL examples do not match their goldens:\n\n{}\n",
        problems.len(),
        examples.len(),
        problems.join("\n\n")
    );
}

#[test]
fn csv_records_keep_quoted_line_breaks_together() {
    let text = "a,b\r\n1,\"x\ny\"\n\"he said \"\"hi\"\"\",2\n";
    assert_eq!(
        csv_records(text),
        vec!["a,b", "1,\"x\ny\"", "\"he said \"\"hi\"\"\",2"]
    );
}

#[test]
fn only_timestamps_within_the_import_are_masked() {
    let window = ImportWindow {
        start: parse_timestamp("2026-11-27T23:30:00Z").unwrap(),
        end: parse_timestamp("2026-11-27T23:31:00Z").unwrap(),
    };
    let text = "2026-11-27T23:30:28.213Z,2026-11-27 23:30:59.5,2020-07-10T04:38:18+00:00,2026-11-28T00:30:10+01:00";
    assert_eq!(
        mask_import_times(text, &window),
        "<import-time>,<import-time>,2020-07-10T04:38:18+00:00,<import-time>"
    );
}

#[test]
fn current_date_is_fixed_as_a_whole_word_only() {
    assert_eq!(
        fix_current_date("SELECT year(CURRENT_DATE), current_dates FROM t").as_deref(),
        Some("SELECT year(DATE '2026-01-01'), current_dates FROM t")
    );
    assert_eq!(fix_current_date("SELECT 1"), None);
}

#[test]
fn summaries_do_not_depend_on_row_order() {
    let a: Vec<String> = ["h", "2", "1", "3"].map(String::from).into();
    let b: Vec<String> = ["h", "3", "2", "1"].map(String::from).into();
    assert_eq!(summarize(&a), summarize(&b));
    assert!(summarize(&a).contains("\nrows: 3\n"));
    let c: Vec<String> = ["h", "3", "2", "1", "1"].map(String::from).into();
    assert_ne!(summarize(&a), summarize(&c));
}
