//! The `fhirlake sql` front end: an interactive REPL, script execution and result output.
//!
//! Everything here talks to the query engine through the small [`QueryBackend`] trait, so the
//! same REPL serves the embedded DataFusion engine and a remote Flight SQL server alike. The
//! module is split in three:
//!
//! * this file: script splitting ([`split_script`]) and the shared [`CliError`];
//! * [`repl`]: the backend trait, the interactive loop ([`run_repl`]) and non-interactive
//!   execution of `-e`/`-f` scripts ([`run_statements`]);
//! * [`output`]: rendering of result streams as an aligned table, CSV, JSON lines or Parquet.

pub mod local;
pub mod output;
pub mod remote;
pub mod repl;

use std::path::PathBuf;

pub use output::{OutputError, OutputFormat, RenderOptions, ResultWriter, write_stream};
pub use repl::{
    BackendError, Interrupt, LineReader, QueryBackend, ReadOutcome, ReplIo, ReplOptions, RunStatus,
    TableInfo, ctrl_c_interrupt, run_repl, run_repl_with, run_statements, run_statements_to,
};

/// Failures of the SQL front end.
///
/// Most variants describe one failed statement or command: the REPL prints them and carries
/// on, scripts stop with a non-zero exit status. [`CliError::is_fatal`] tells the two apart
/// from failures of the terminal or output file, which end the session.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The backend rejected or failed a statement.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Writing a result failed (or the result stream failed while being written).
    #[error(transparent)]
    Output(#[from] OutputError),
    /// A backslash command that does not exist.
    #[error("unknown command \\{0}; \\? lists the commands")]
    UnknownCommand(String),
    /// A backslash command with arguments it does not accept.
    #[error("\\{command}: {message}")]
    InvalidArgument {
        /// The command, without its backslash.
        command: String,
        /// What is wrong with the arguments.
        message: String,
    },
    /// `\d NAME` named a table the backend does not know.
    #[error("no table named \"{0}\"; \\d lists the tables")]
    UnknownTable(String),
    /// Parquet output was requested without an output file.
    #[error("parquet output needs an output file (--output FILE)")]
    ParquetNeedsFile,
    /// Parquet output was requested for a script with more than one result.
    #[error("parquet output holds exactly one result, but the script has {0} statements")]
    ParquetSingleResult(usize),
    /// The interactive session cannot write the requested format.
    #[error("the interactive session cannot write {0} output; use -e or -f with --output")]
    UnsupportedInteractiveFormat(OutputFormat),
    /// The output file could not be created.
    #[error("cannot create output file {}: {source}", path.display())]
    CreateOutput {
        /// The requested output path.
        path: PathBuf,
        /// Why it could not be created.
        source: std::io::Error,
    },
    /// The history file could not be read or written; the session goes on without it.
    #[error("cannot use history file {}: {message}", path.display())]
    History {
        /// The history file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Reading a line from the terminal failed.
    #[error("cannot read from the terminal: {0}")]
    Terminal(String),
    /// Writing to the terminal or the output file failed.
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
    /// The line-editor thread ended abnormally.
    #[error("the line editor stopped unexpectedly: {0}")]
    LineEditor(String),
}

impl CliError {
    /// True when the error is a failure of the output or terminal rather than of a statement,
    /// so continuing to run statements would be pointless.
    pub fn is_fatal(&self) -> bool {
        match self {
            CliError::Io(_)
            | CliError::CreateOutput { .. }
            | CliError::Terminal(_)
            | CliError::LineEditor(_) => true,
            CliError::Output(e) => e.is_io(),
            _ => false,
        }
    }

    /// True when output went to a pipe whose reader has gone away (`fhirlake sql ... | head`),
    /// which ends output quietly rather than as an error.
    pub fn is_broken_pipe(&self) -> bool {
        match self {
            CliError::Io(e) => e.kind() == std::io::ErrorKind::BrokenPipe,
            CliError::Output(e) => e.is_broken_pipe(),
            _ => false,
        }
    }
}

/// One unit of a SQL script: a statement for the backend or a backslash command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptItem {
    /// A SQL statement without its terminating `;`, trimmed; comments inside are kept.
    Sql(String),
    /// A backslash command without the backslash, e.g. `d+ patient`; it runs to the end of
    /// its line and a trailing `;` is dropped.
    Command(String),
}

/// The result of splitting text into complete script items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Complete items in order.
    pub items: Vec<ScriptItem>,
    /// Byte offset where unfinished input starts: a statement without its `;`, an open quote or
    /// an open block comment. Equal to the text length when nothing is left over (whitespace
    /// and finished comments after the last item count as nothing).
    pub rest_offset: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Lex {
    Code,
    Quoted(char),
    LineComment,
    BlockComment,
}

/// Splits SQL text into statements on `;` outside quotes and comments, and recognises
/// backslash commands at the start of a statement.
///
/// Quotes are `'…'` strings, `"…"` and `` `…` `` identifiers, each escaping its own quote by
/// doubling it (Trino/Athena have no backslash escapes). Comments are `-- …` to the end of the
/// line and `/* … */`. Statements that contain only comments are dropped. The REPL feeds its
/// accumulated input through this after every line and keeps the unfinished rest; scripts use
/// [`split_statements`], which also runs a final statement that lacks its `;`.
pub fn split_script(text: &str) -> Split {
    let mut items = Vec::new();
    let mut state = Lex::Code;
    let mut start = 0;
    let mut significant = false;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match state {
            Lex::Code => match c {
                '\'' | '"' | '`' => {
                    state = Lex::Quoted(c);
                    significant = true;
                }
                '-' if chars.peek().is_some_and(|&(_, n)| n == '-') => {
                    chars.next();
                    state = Lex::LineComment;
                }
                '/' if chars.peek().is_some_and(|&(_, n)| n == '*') => {
                    chars.next();
                    state = Lex::BlockComment;
                }
                ';' => {
                    if significant {
                        items.push(ScriptItem::Sql(text[start..i].trim().to_string()));
                    }
                    start = i + 1;
                    significant = false;
                }
                '\\' if !significant => {
                    let end = text[i..].find('\n').map_or(text.len(), |n| i + n);
                    let command = text[i + 1..end].trim();
                    let command = command.strip_suffix(';').unwrap_or(command).trim_end();
                    items.push(ScriptItem::Command(command.to_string()));
                    while chars.peek().is_some_and(|&(j, _)| j < end) {
                        chars.next();
                    }
                    start = end;
                }
                c if !c.is_whitespace() => significant = true,
                _ => {}
            },
            Lex::Quoted(q) => {
                if c == q {
                    if chars.peek().is_some_and(|&(_, n)| n == q) {
                        chars.next();
                    } else {
                        state = Lex::Code;
                    }
                }
            }
            Lex::LineComment => {
                if c == '\n' {
                    state = Lex::Code;
                }
            }
            Lex::BlockComment => {
                if c == '*' && chars.peek().is_some_and(|&(_, n)| n == '/') {
                    chars.next();
                    state = Lex::Code;
                }
            }
        }
    }
    let unfinished = significant || matches!(state, Lex::Quoted(_) | Lex::BlockComment);
    let rest_offset = if unfinished {
        start + (text[start..].len() - text[start..].trim_start().len())
    } else {
        text.len()
    };
    Split { items, rest_offset }
}

/// Splits a whole script into items; a final statement without `;` is included, so
/// `-e "SELECT 1"` works. An unterminated quote or comment is passed on as part of the last
/// statement, where the SQL parser reports it.
pub fn split_statements(text: &str) -> Vec<ScriptItem> {
    let split = split_script(text);
    let mut items = split.items;
    let rest = text[split.rest_offset..].trim();
    if !rest.is_empty() {
        items.push(ScriptItem::Sql(rest.to_string()));
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(s: &str) -> ScriptItem {
        ScriptItem::Sql(s.to_string())
    }

    fn cmd(s: &str) -> ScriptItem {
        ScriptItem::Command(s.to_string())
    }

    #[test]
    fn splits_on_semicolons_outside_quotes_and_comments() {
        let text =
            "SELECT ';' AS a, \"x;y\" FROM t; -- one; two\nSELECT 2 /* ; */ ;SELECT 'it''s;'";
        assert_eq!(
            split_statements(text),
            vec![
                sql("SELECT ';' AS a, \"x;y\" FROM t"),
                sql("-- one; two\nSELECT 2 /* ; */"),
                sql("SELECT 'it''s;'"),
            ]
        );
    }

    #[test]
    fn drops_empty_and_comment_only_statements() {
        assert_eq!(
            split_statements(";; -- nothing\n/* still; nothing */ ;\n"),
            Vec::<ScriptItem>::new()
        );
        assert_eq!(split_statements("  \n"), Vec::<ScriptItem>::new());
    }

    #[test]
    fn keeps_unfinished_input_as_rest() {
        let text = "SELECT 1;\nSELECT name\nFROM";
        let split = split_script(text);
        assert_eq!(split.items, vec![sql("SELECT 1")]);
        assert_eq!(&text[split.rest_offset..], "SELECT name\nFROM");

        let open_quote = "SELECT 'a;\n";
        let split = split_script(open_quote);
        assert!(split.items.is_empty());
        assert_eq!(split.rest_offset, 0);

        let open_comment = "/* a; b\n";
        let split = split_script(open_comment);
        assert!(split.items.is_empty());
        assert_eq!(split.rest_offset, 0);

        let done = "SELECT 1; -- trailing comment\n  ";
        assert_eq!(split_script(done).rest_offset, done.len());
    }

    #[test]
    fn recognises_backslash_commands_at_statement_start() {
        let text = "\\d+ patient;\nSELECT 1;\n  \\timing\n-- c\n\\q";
        assert_eq!(
            split_statements(text),
            vec![cmd("d+ patient"), sql("SELECT 1"), cmd("timing"), cmd("q")]
        );
        // Inside a statement a backslash is just SQL text.
        assert_eq!(
            split_statements("SELECT '\\d' \\x;"),
            vec![sql("SELECT '\\d' \\x")]
        );
    }

    #[test]
    fn final_statement_without_semicolon_is_kept() {
        assert_eq!(
            split_statements("SELECT 1; SELECT 2"),
            vec![sql("SELECT 1"), sql("SELECT 2")]
        );
        assert_eq!(split_statements("SELECT 'open"), vec![sql("SELECT 'open")]);
    }

    #[test]
    fn handles_multibyte_text() {
        assert_eq!(
            split_statements("SELECT 'é;ü' AS \"ß\"; SELECT '…'"),
            vec![sql("SELECT 'é;ü' AS \"ß\""), sql("SELECT '…'")]
        );
    }
}
