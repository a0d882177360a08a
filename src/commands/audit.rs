//! `fhirlake audit`: checks the audit log's hash chain (`verify`) or prints its last records
//! (`tail`). Both read `<data-dir>/audit/` directly, without opening the installation, so
//! they run next to a serving process.

use std::process::ExitCode;

use fhirlake::audit::{AUDIT_DIR, VerifyError};

use super::Globals;

#[derive(clap::Args)]
pub(crate) struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(clap::Subcommand)]
enum AuditCommand {
    /// Recompute every record's hash and check the chain; exit 1 at the first bad record,
    /// naming its file and line.
    Verify,
    /// Print the last records, oldest first (JSON Lines, as stored).
    Tail {
        /// How many records.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: usize,
    },
}

impl AuditArgs {
    pub(crate) async fn run(self, g: &Globals) -> anyhow::Result<ExitCode> {
        let dir = g.data_dir.join(AUDIT_DIR);
        match self.command {
            AuditCommand::Verify => verify(&dir),
            AuditCommand::Tail { lines } => {
                for line in fhirlake::audit::tail(&dir, lines)? {
                    println!("{line}");
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// Prints the verdict: the count when intact; the bad record's place and problem when not.
fn verify(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    match fhirlake::audit::verify(dir) {
        Ok(v) => {
            println!(
                "audit log intact: {} records in {} files; last hash {}",
                v.records, v.files, v.last_hash
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ VerifyError::Bad { .. }) => {
            println!("audit log damaged: {e}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}
