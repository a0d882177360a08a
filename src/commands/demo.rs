//! `fhirlake demo`: loads the shipped Synthea sample into the default data store (once) and
//! opens the SQL REPL on it.

use std::path::PathBuf;
use std::process::ExitCode;

use fhirlake::cli::OutputFormat;
use fhirlake::cli::local::local_backend;

use super::import::import;
use super::{Globals, repl};

#[derive(clap::Args)]
pub(crate) struct DemoArgs {
    /// Directory with the sample NDJSON.
    #[arg(long, default_value = "data")]
    sample: PathBuf,
}

impl DemoArgs {
    pub(crate) async fn run(self, g: &Globals) -> anyhow::Result<ExitCode> {
        let Self { sample } = self;
        let inst = g.open().await?;
        let ds = inst.datastore(None).await?;
        if inst.store.current_counts(&ds.id).await?.is_empty() {
            println!("Loading the Synthea sample from {} …", sample.display());
            import(&inst, &sample, None, false).await?;
        }
        let backend = local_backend(inst.clone(), &ds).await?;
        repl(
            Some(inst.data_dir.join("sql_history")),
            backend,
            OutputFormat::Table,
        )
        .await?;
        Ok(ExitCode::SUCCESS)
    }
}
