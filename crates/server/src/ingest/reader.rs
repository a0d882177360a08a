//! Streaming NDJSON input: plain or gzipped files, or a directory of them.
//!
//! Lines are read with a hard size cap so one huge or endless line cannot exhaust memory;
//! encoding and decompression problems become per-line or per-file errors, never panics.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flate2::read::MultiGzDecoder;

/// Counts bytes as they are read from the underlying file.
struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Errors opening the input.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} contains no .ndjson, .ndjson.gz, .json or .json.gz files")]
    NoInputFiles(PathBuf),
}

/// The input files named by `path`: the file itself, or the NDJSON files under a directory
/// (recursively), sorted by path so imports are reproducible.
pub fn input_files(path: &Path) -> Result<Vec<PathBuf>, InputError> {
    let meta = std::fs::metadata(path).map_err(|source| InputError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| InputError::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let p = entry.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.is_file() && is_ndjson_name(&p) {
                files.push(p);
            }
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(InputError::NoInputFiles(path.to_path_buf()));
    }
    Ok(files)
}

/// Whether a file in an input directory is data. `manifest.json` is what import and export
/// jobs write next to their output, never data, so a directory written by an export imports
/// as it is.
pub fn is_ndjson_name(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if name == "manifest.json" {
        return false;
    }
    [
        ".ndjson",
        ".ndjson.gz",
        ".json",
        ".json.gz",
        ".jsonl",
        ".jsonl.gz",
    ]
    .iter()
    .any(|ext| name.ends_with(ext))
}

/// One line of an input file.
#[derive(Debug)]
pub enum Line {
    /// A line's text (1-based line number).
    Text { line: u64, text: String },
    /// A line that could not be taken as text: too long or not UTF-8.
    Bad { line: u64, message: String },
}

/// Reads the lines of one file, transparently gunzipping `.gz` files.
pub struct LineReader {
    inner: Box<dyn BufRead + Send>,
    line: u64,
    max_line_bytes: usize,
    buf: Vec<u8>,
    done: bool,
}

impl LineReader {
    /// Opens `path`; `bytes_read` is advanced by the (compressed) bytes consumed, for
    /// progress reporting.
    pub fn open(
        path: &Path,
        max_line_bytes: usize,
        bytes_read: Arc<AtomicU64>,
    ) -> Result<Self, InputError> {
        let file = File::open(path).map_err(|source| InputError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file = CountingReader {
            inner: file,
            count: bytes_read,
        };
        let gz = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
        Ok(Self::from_reader(
            if gz {
                Box::new(BufReader::with_capacity(
                    1 << 20,
                    MultiGzDecoder::new(BufReader::new(file)),
                ))
            } else {
                Box::new(BufReader::with_capacity(1 << 20, file))
            },
            max_line_bytes,
        ))
    }

    pub fn from_reader(inner: Box<dyn BufRead + Send>, max_line_bytes: usize) -> Self {
        Self {
            inner,
            line: 0,
            max_line_bytes,
            buf: Vec::new(),
            done: false,
        }
    }

    /// The next non-empty line, `Ok(None)` at end of file, or an I/O error (e.g. a truncated
    /// gzip stream) after which the reader is finished.
    pub fn next_line(&mut self) -> Result<Option<Line>, std::io::Error> {
        loop {
            if self.done {
                return Ok(None);
            }
            self.buf.clear();
            self.line += 1;
            let cap = self.max_line_bytes as u64 + 1;
            let n = match (&mut self.inner).take(cap).read_until(b'\n', &mut self.buf) {
                Ok(n) => n,
                Err(e) => {
                    self.done = true;
                    return Err(e);
                }
            };
            if n == 0 {
                self.done = true;
                return Ok(None);
            }
            let complete = self.buf.last() == Some(&b'\n');
            if !complete && self.buf.len() as u64 >= cap {
                // Skip the rest of the oversized line without holding it in memory.
                let mut skipped = self.buf.len() as u64;
                loop {
                    let available = match self.inner.fill_buf() {
                        Ok(b) => b,
                        Err(e) => {
                            self.done = true;
                            return Err(e);
                        }
                    };
                    if available.is_empty() {
                        self.done = true;
                        break;
                    }
                    if let Some(i) = available.iter().position(|&b| b == b'\n') {
                        self.inner.consume(i + 1);
                        skipped += i as u64;
                        break;
                    }
                    let len = available.len();
                    skipped += len as u64;
                    self.inner.consume(len);
                }
                return Ok(Some(Line::Bad {
                    line: self.line,
                    message: format!(
                        "Resource on line {} is {} bytes or more, over the limit of {} bytes",
                        self.line, skipped, self.max_line_bytes
                    ),
                }));
            }
            while matches!(self.buf.last(), Some(b'\n' | b'\r')) {
                self.buf.pop();
            }
            if self.buf.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let line = self.line;
            return Ok(Some(match std::str::from_utf8(&self.buf) {
                Ok(text) => Line::Text {
                    line,
                    text: text.to_string(),
                },
                Err(e) => Line::Bad {
                    line,
                    message: format!(
                        "Invalid UTF-8 found in input file at byte {} of the line",
                        e.valid_up_to()
                    ),
                },
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    #[test]
    fn job_manifests_are_not_input() {
        assert!(is_ndjson_name(Path::new("/x/Patient-1.ndjson")));
        assert!(is_ndjson_name(Path::new("/x/bundle.json.gz")));
        assert!(!is_ndjson_name(Path::new("/x/manifest.json")));
        assert!(!is_ndjson_name(Path::new("/x/notes.txt")));
    }

    fn lines(data: &[u8], max: usize) -> Vec<Result<Line, String>> {
        let mut r = LineReader::from_reader(Box::new(Cursor::new(data.to_vec())), max);
        let mut out = Vec::new();
        loop {
            match r.next_line() {
                Ok(Some(l)) => out.push(Ok(l)),
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    break;
                }
            }
        }
        out
    }

    #[test]
    fn skips_blank_lines_and_keeps_numbers() {
        let got = lines(b"{\"a\":1}\n\n  \r\n{\"b\":2}\r\n{\"c\":3}", 100);
        let nums: Vec<u64> = got
            .iter()
            .map(|l| match l {
                Ok(Line::Text { line, .. }) => *line,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(nums, [1, 4, 5]);
    }

    #[test]
    fn oversized_and_non_utf8_lines_are_reported_and_reading_goes_on() {
        let mut data = vec![b'x'; 50];
        data.extend_from_slice(b"\n\xff\xfe\n{\"ok\":true}\n");
        let got = lines(&data, 20);
        assert!(
            matches!(&got[0], Ok(Line::Bad { line: 1, message }) if message.contains("over the limit of 20 bytes"))
        );
        assert!(
            matches!(&got[1], Ok(Line::Bad { line: 2, message }) if message.contains("Invalid UTF-8"))
        );
        assert!(matches!(&got[2], Ok(Line::Text { line: 3, .. })), "{got:?}");
    }

    #[test]
    fn truncated_gzip_is_an_error_not_a_panic() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        for i in 0..2000 {
            writeln!(enc, "{{\"resourceType\":\"Patient\",\"id\":\"p{i}\"}}").unwrap();
        }
        let full = enc.finish().unwrap();
        let cut = &full[..full.len() / 2];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.ndjson.gz");
        std::fs::write(&path, cut).unwrap();
        let mut r = LineReader::open(&path, 1 << 20, Default::default()).unwrap();
        let mut ok = 0;
        let err = loop {
            match r.next_line() {
                Ok(Some(Line::Text { .. })) => ok += 1,
                Ok(Some(Line::Bad { .. })) => panic!("unexpected bad line"),
                Ok(None) => panic!("truncated gzip read to the end without error"),
                Err(e) => break e,
            }
        };
        assert!(ok > 0 && ok < 2000);
        assert!(!err.to_string().is_empty());
    }
}
