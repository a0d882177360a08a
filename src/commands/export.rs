//! `fhirlake export`: writes a data store's current resources, as of one point in time, as
//! NDJSON files with a manifest.json, to a directory or S3.

use std::path::PathBuf;
use std::process::ExitCode;

use fhirlake::control::staging::Staging;

use super::{Globals, cli_location, cli_staging_dir};

#[derive(clap::Args)]
pub(crate) struct ExportArgs {
    /// Output directory (created), or an s3:// prefix (AWS_* environment; written to the
    /// data directory's staging area and uploaded when complete).
    out: PathBuf,
    /// Data store (default: the installation's default).
    #[arg(long)]
    datastore: Option<String>,
    /// Only these resource types (comma-separated, as `_type`).
    #[arg(long = "type", value_delimiter = ',')]
    types: Vec<String>,
    /// Only resources last updated at or after this instant (as `_since`).
    #[arg(long)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only the Patient compartment (as `Patient/$export`).
    #[arg(long, conflicts_with = "group")]
    patient: bool,
    /// Only the compartments of this Group's member patients (as `Group/{id}/$export`).
    #[arg(long)]
    group: Option<String>,
    /// Roll files at this size.
    #[arg(long, default_value_t = 1024)]
    max_file_mb: u64,
}

impl ExportArgs {
    pub(crate) async fn run(self, g: &Globals) -> anyhow::Result<ExitCode> {
        let Self {
            out,
            datastore,
            types,
            since,
            patient,
            group,
            max_file_mb,
        } = self;
        use fhirlake::export::{ExportRequest, ExportScope};
        let inst = g.open().await?;
        let ds = inst.datastore(datastore.as_deref()).await?;
        // An s3:// output is written to a staging directory and uploaded once complete.
        let output = cli_location(&out)?;
        let staging = Staging::new(cli_staging_dir(&inst));
        let dir = staging.writable(&output);
        let request = ExportRequest {
            scope: match (patient, group) {
                (_, Some(g)) => ExportScope::Group(g),
                (true, None) => ExportScope::Patient,
                (false, None) => ExportScope::System,
            },
            types: (!types.is_empty()).then_some(types),
            since,
        };
        let report = fhirlake::export::export(
            &inst.store,
            &ds,
            &request,
            &dir,
            &fhirlake::export::ExportLimits {
                max_file_bytes: max_file_mb.max(1) << 20,
            },
            &Default::default(),
            &std::sync::atomic::AtomicBool::new(false),
        )
        .await;
        let written = match report {
            Ok(report) => report
                .write_manifest(&dir, &ds.id, None)
                .await
                .map(|()| report)
                .map_err(anyhow::Error::from),
            Err(e) => Err(e.into()),
        };
        let uploaded = match &written {
            Ok(_) => staging.publish(&output).await,
            Err(_) => Ok(()),
        };
        staging.remove().await;
        let report = written?;
        uploaded?;
        let seconds = report.seconds;
        println!(
            "Exported {} resources ({:.1} MB) in {} files to {} in {seconds:.1} s \
             ({:.0} resources/s, {:.1} MB/s); as of {}",
            report.resources(),
            report.bytes() as f64 / 1e6,
            report.files.len(),
            out.display(),
            report.resources() as f64 / seconds.max(1e-9),
            report.bytes() as f64 / 1e6 / seconds.max(1e-9),
            report.transaction_time
        );
        Ok(ExitCode::SUCCESS)
    }
}
