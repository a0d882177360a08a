//! `fhirlake import`: imports FHIR NDJSON from a file, a directory or S3 into a data store
//! and commits it to the lake, with progress and a summary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fhirlake::control::staging::{Staging, import_report_name};
use fhirlake::ingest::{self, ImportOptions, ImportProgress};
use fhirlake::installation::Installation;
use fhirlake::lake::background::BackgroundSync;
use fhirlake::lake::sync::BatchLimits;

use super::{Globals, cli_location, cli_staging_dir};

#[derive(clap::Args)]
pub(crate) struct ImportArgs {
    /// A file, a directory, or an s3:// prefix or object (AWS_* environment; staged
    /// through the data directory).
    path: PathBuf,
    /// Data store to import into (created if missing; default: the installation's default).
    #[arg(long)]
    datastore: Option<String>,
    /// Do not show a progress bar.
    #[arg(long)]
    quiet: bool,
}

impl ImportArgs {
    pub(crate) async fn run(self, g: &Globals) -> anyhow::Result<ExitCode> {
        let Self {
            path,
            datastore,
            quiet,
        } = self;
        let inst = g.open().await?;
        let input = cli_location(&path)?;
        let staging = Staging::new(cli_staging_dir(&inst));
        let result = async {
            let listing = staging.list(&input).await?;
            if listing.files.is_empty() {
                anyhow::bail!(
                    "{} holds no .ndjson, .ndjson.gz, .json or .jsonl objects",
                    path.display()
                );
            }
            let dir = staging.fetch(&listing).await?;
            import(&inst, &dir, datastore.as_deref(), quiet).await
        }
        .await;
        staging.remove().await;
        result?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Imports `path` and commits it to the lake, with progress and a summary.
pub(crate) async fn import(
    inst: &Installation,
    path: &Path,
    datastore: Option<&str>,
    quiet: bool,
) -> anyhow::Result<()> {
    let ds = inst.datastore_or_create(datastore).await?;
    let job_id = uuid::Uuid::new_v4().simple().to_string();
    let report_dir = inst
        .data_dir
        .join("imports")
        .join(import_report_name(&ds.id, &job_id));
    let options = ImportOptions::new(report_dir);
    let progress = Arc::new(ImportProgress::default());
    let started = Instant::now();

    let bar = (!quiet).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
            )
            .expect("valid template"),
        );
        bar
    });
    let ticker = bar.clone().map(|bar| {
        let progress = progress.clone();
        tokio::spawn(async move {
            loop {
                bar.set_length(progress.total_bytes.load(Ordering::Relaxed));
                bar.set_position(progress.bytes_read.load(Ordering::Relaxed));
                let n = progress.resources.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64().max(0.001);
                bar.set_message(format!(
                    "{n} resources ({:.0}/s), {} errors",
                    n as f64 / secs,
                    progress.errors.load(Ordering::Relaxed)
                ));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    });
    // Commit to the lake while the import runs, so both cores work.
    let background = BackgroundSync::spawn(
        inst.store.clone(),
        inst.lake.clone(),
        ds.clone(),
        Duration::from_secs(2),
        BatchLimits::default(),
    );
    let report = ingest::import(&inst.store, &ds, path, &options, progress.clone()).await;
    if let Some(t) = ticker {
        t.abort();
    }
    let report = report?;
    if let Some(bar) = &bar {
        bar.set_message("committing to the lake…");
    }
    let synced = background.shutdown().await?;
    inst.store.checkpoint().await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "Imported {} resources into data store '{}' in {:.1}s ({:.0} resources/s, {:.1} MB/s of input files); {} failed.",
        report.imported(),
        ds.name,
        secs,
        report.imported() as f64 / secs,
        report.bytes_scanned as f64 / 1e6 / secs,
        report.failed()
    );
    for (ty, n) in &report.per_type {
        println!("  {ty:<28} {n:>9}");
    }
    let compacted = synced.iter().filter(|s| s.compaction.is_some()).count();
    println!(
        "Lake: all {} resource types committed ({compacted} tables compacted at the end).",
        report.per_type.len()
    );
    for f in report.files.iter().filter(|f| f.read_error.is_some()) {
        println!(
            "  {}: {}",
            f.path.display(),
            f.read_error.as_deref().unwrap_or_default()
        );
    }
    println!(
        "Report: {}",
        report.report_dir.join("manifest.json").display()
    );
    if report.failed() > 0 {
        println!(
            "Failed lines: {}",
            report.report_dir.join("FAILURE").display()
        );
    }
    Ok(())
}
