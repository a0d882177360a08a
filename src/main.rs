//! The `fhirlake` command line.

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use commands::Globals;
use fhirlake::lake::Warehouse;

/// Ingest allocates many small JSON values; mimalloc handles that churn far better than glibc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "fhirlake",
    version,
    about = "An analytics-first FHIR R4 lakehouse"
)]
struct Cli {
    /// Installation directory (resource store, Iceberg catalog and warehouse).
    #[arg(
        long,
        global = true,
        env = "FHIRLAKE_DATA_DIR",
        default_value = "./fhirlake-data"
    )]
    data_dir: PathBuf,
    /// Where the Iceberg tables live: a directory or s3://bucket/prefix (AWS_* environment).
    /// Recorded in <data-dir>/fhirlake.json by the first command that creates the
    /// installation; default <data-dir>/warehouse.
    #[arg(long, global = true, env = "FHIRLAKE_WAREHOUSE", value_parser = Warehouse::parse)]
    warehouse: Option<Warehouse>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Import FHIR NDJSON (a file or a directory of .ndjson/.ndjson.gz files).
    Import(commands::import::ImportArgs),
    /// Export a data store's current resources as NDJSON (one file per type, rolled at
    /// --max-file-mb), from one point in time, with a manifest.json.
    Export(commands::export::ExportArgs),
    /// Run SQL (Athena dialect) over the lake: interactive, or `-e`/`-f` scripts.
    Sql(commands::sql::SqlArgs),
    /// Serve the FHIR R4 REST API (one base URL per data store).
    Serve(commands::serve::ServeArgs),
    /// Data stores, as HealthLake's control plane: create, describe, list, delete, tags.
    Datastore(commands::datastore::DatastoreArgs),
    /// The demo: load the shipped Synthea sample (once) and open the SQL REPL.
    Demo(commands::demo::DemoArgs),
    /// Compact every table of a data store: rewrite live rows into few files, drop delete files.
    Compact(commands::compact::CompactArgs),
    /// The audit log of API calls: verify its hash chain, or show its last records.
    Audit(commands::audit::AuditArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    fhirlake::install_tls_provider();
    // The server logs each request; interactive commands only warnings. FHIRLAKE_LOG overrides.
    let default_filter = match cli.command {
        Command::Serve(_) => "info,sqlx=error",
        _ => "warn,sqlx=error",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FHIRLAKE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line. Our error types already quote their source in their
/// own message, so a cause whose text is already shown is not repeated.
fn error_chain(e: &anyhow::Error) -> String {
    let mut message = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    message
}

/// Dispatches to the command's own `run`.
async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = Globals {
        data_dir: cli.data_dir,
        warehouse: cli.warehouse,
    };
    match cli.command {
        Command::Import(args) => args.run(&g).await,
        Command::Export(args) => args.run(&g).await,
        Command::Sql(args) => args.run(&g).await,
        Command::Serve(args) => args.run(&g).await,
        Command::Datastore(args) => args.run(&g).await,
        Command::Demo(args) => args.run(&g).await,
        Command::Compact(args) => args.run(&g).await,
        Command::Audit(args) => args.run(&g).await,
    }
}
