//! `fhirlake compact`: brings a data store's tables up to date with the store, then
//! compacts each one: live rows rewritten into few files, delete files dropped.

use std::process::ExitCode;

use fhirlake::lake::compact::{CompactionPolicy, compact_table};
use fhirlake::lake::sync::{BatchLimits, sync_datastore};

use super::Globals;

#[derive(clap::Args)]
pub(crate) struct CompactArgs {
    #[arg(long)]
    datastore: Option<String>,
}

impl CompactArgs {
    pub(crate) async fn run(self, g: &Globals) -> anyhow::Result<ExitCode> {
        let Self { datastore } = self;
        let inst = g.open().await?;
        let ds = inst.datastore(datastore.as_deref()).await?;
        sync_datastore(&inst.store, &inst.lake, &ds, BatchLimits::default()).await?;
        for name in inst.lake.table_names(&ds.name).await? {
            let Some(ty) = fhirlake::schema::Registry::global().canonical_name(&name) else {
                continue;
            };
            match compact_table(
                &inst.store,
                &inst.lake,
                &ds,
                ty,
                CompactionPolicy::default(),
                true,
            )
            .await?
            {
                Some(c) => println!(
                    "{ty}: {} data + {} delete files -> {} files, {} rows",
                    c.files_before, c.delete_files_before, c.files_after, c.rows
                ),
                None => println!("{ty}: already compact"),
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
