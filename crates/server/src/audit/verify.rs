//! Checking the audit chain (`fhirlake audit verify`) and reading its end (`audit tail`).
//!
//! Every record's hash is recomputed and its `prev_hash` compared with the hash of the record
//! before it, across files in their numbered order. An edited record fails its own hash; a
//! deleted or moved record breaks the link of the record after it. Only the end of the chain
//! cannot vouch for itself: cutting off the last records leaves a valid shorter chain, so
//! compare the count (or the last hash) with one noted earlier to detect that.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use super::writer::list_files;
use super::{AuditRecord, GENESIS};

/// What an intact log holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
    pub files: usize,
    /// The last record's hash (note it to detect a later truncation).
    pub last_hash: String,
}

/// What is wrong with a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("unparseable record: {0}")]
    Unparseable(String),
    #[error("hash mismatch: the record says {stored}, its content hashes to {computed}")]
    HashMismatch { stored: String, computed: String },
    #[error(
        "broken chain: prev_hash is {found}, but the record before it has hash {expected} \
         (a record was deleted, inserted or moved)"
    )]
    BrokenChain { expected: String, found: String },
}

/// Why verification stopped.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{}:{line}: {problem}", file.display())]
    Bad {
        file: PathBuf,
        /// 1-based line number within `file`.
        line: usize,
        problem: Problem,
    },
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Walks every audit file of `dir` and checks each record; the first bad one is the error.
pub fn verify(dir: &Path) -> Result<Verified, VerifyError> {
    let files = list_files(dir).map_err(|source| VerifyError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut chain = Chain {
        records: 0,
        last_hash: GENESIS.to_string(),
    };
    for (_, path) in &files {
        chain.check_file(path)?;
    }
    Ok(Verified {
        records: chain.records,
        files: files.len(),
        last_hash: chain.last_hash,
    })
}

struct Chain {
    records: u64,
    last_hash: String,
}

impl Chain {
    fn check_file(&mut self, path: &Path) -> Result<(), VerifyError> {
        let io = |source| VerifyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let reader = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
        for (i, line) in reader.lines().enumerate() {
            let line = line.map_err(io)?;
            self.check(&line).map_err(|problem| VerifyError::Bad {
                file: path.to_path_buf(),
                line: i + 1,
                problem,
            })?;
        }
        Ok(())
    }

    fn check(&mut self, line: &str) -> Result<(), Problem> {
        let record: AuditRecord =
            serde_json::from_str(line).map_err(|e| Problem::Unparseable(e.to_string()))?;
        let computed = record.compute_hash();
        if computed != record.hash {
            return Err(Problem::HashMismatch {
                stored: record.hash,
                computed,
            });
        }
        if record.prev_hash != self.last_hash {
            return Err(Problem::BrokenChain {
                expected: self.last_hash.clone(),
                found: record.prev_hash,
            });
        }
        self.records += 1;
        self.last_hash = record.hash;
        Ok(())
    }
}

/// The last `n` lines of the log, oldest first (as written, unchecked).
pub fn tail(dir: &Path, n: usize) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for (_, path) in list_files(dir)?.iter().rev() {
        if out.len() >= n {
            break;
        }
        let text = std::fs::read_to_string(path)?;
        let lines: Vec<&str> = text.lines().collect();
        let keep = lines.len().min(n - out.len());
        let mut part: Vec<String> = lines[lines.len() - keep..]
            .iter()
            .map(|l| l.to_string())
            .collect();
        part.append(&mut out);
        out = part;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain of `n` sealed records as file lines.
    fn chain(n: u64) -> Vec<String> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let mut r = AuditRecord::new("SearchWithGet", "key").with_status(200);
                r.resource_type = Some("Patient".into());
                r.seal(seq, &prev);
                prev = r.hash.clone();
                serde_json::to_string(&r).unwrap()
            })
            .collect()
    }

    fn check(lines: &[String]) -> Result<Verified, VerifyError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("audit-000001.ndjson"),
            lines.join("\n") + "\n",
        )
        .unwrap();
        verify(dir.path())
    }

    fn problem_at(lines: &[String]) -> (usize, Problem) {
        match check(lines) {
            Err(VerifyError::Bad { line, problem, .. }) => (line, problem),
            other => panic!("expected a bad record, got {other:?}"),
        }
    }

    #[test]
    fn an_intact_chain_verifies() {
        let verified = check(&chain(5)).unwrap();
        assert_eq!(verified.records, 5);
        assert_eq!(verified.files, 1);
    }

    #[test]
    fn an_edited_middle_record_fails_its_hash() {
        let mut lines = chain(5);
        lines[2] = lines[2].replace("\"status\":200", "\"status\":404");
        let (line, problem) = problem_at(&lines);
        assert_eq!(line, 3);
        assert!(matches!(problem, Problem::HashMismatch { .. }), "{problem}");
    }

    #[test]
    fn an_edited_record_with_a_recomputed_hash_breaks_the_chain() {
        let mut lines = chain(5);
        let mut r: AuditRecord = serde_json::from_str(&lines[2]).unwrap();
        r.principal = "someone-else".into();
        r.hash = r.compute_hash();
        lines[2] = serde_json::to_string(&r).unwrap();
        let (line, problem) = problem_at(&lines);
        assert_eq!(line, 4);
        assert!(matches!(problem, Problem::BrokenChain { .. }), "{problem}");
    }

    #[test]
    fn a_deleted_record_breaks_the_chain() {
        let mut lines = chain(5);
        lines.remove(1);
        let (line, problem) = problem_at(&lines);
        assert_eq!(line, 2);
        assert!(matches!(problem, Problem::BrokenChain { .. }), "{problem}");
    }

    #[test]
    fn reordered_records_break_the_chain() {
        let mut lines = chain(5);
        lines.swap(2, 3);
        let (line, problem) = problem_at(&lines);
        assert_eq!(line, 3);
        assert!(matches!(problem, Problem::BrokenChain { .. }), "{problem}");
    }

    #[test]
    fn garbage_and_unknown_fields_are_unparseable() {
        let mut lines = chain(3);
        lines[1] = lines[1].replacen('{', "{\"extra\":1,", 1);
        assert!(matches!(problem_at(&lines), (2, Problem::Unparseable(_))));
        let mut lines = chain(3);
        lines[0] = "not json".into();
        assert!(matches!(problem_at(&lines), (1, Problem::Unparseable(_))));
    }

    #[test]
    fn tail_reads_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let lines = chain(5);
        std::fs::write(
            dir.path().join("audit-000001.ndjson"),
            lines[..3].join("\n"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("audit-000002.ndjson"),
            lines[3..].join("\n"),
        )
        .unwrap();
        assert_eq!(tail(dir.path(), 3).unwrap(), lines[2..].to_vec());
        assert_eq!(tail(dir.path(), 10).unwrap(), lines);
    }
}
