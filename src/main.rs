//! The `fhirlake` command line.

use fhirlake::control::location::{Location, S3Prefix};
use fhirlake::control::staging::{Staging, import_report_name};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};

use fhirlake::cli::local::local_backend;
use fhirlake::cli::{OutputFormat, ReplOptions, run_repl, run_statements};
use fhirlake::ingest::{self, ImportOptions, ImportProgress};
use fhirlake::installation::Installation;
use fhirlake::lake::Warehouse;
use fhirlake::lake::background::BackgroundSync;
use fhirlake::lake::compact::{CompactionPolicy, compact_table};
use fhirlake::lake::sync::{BatchLimits, sync_datastore};
use fhirlake::origin::HttpOrigin;
use fhirlake::registry::Registry;

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
    Import(ImportArgs),
    /// Export a data store's current resources as NDJSON (one file per type, rolled at
    /// --max-file-mb), from one point in time, with a manifest.json.
    Export(ExportArgs),
    /// Run SQL (Athena dialect) over the lake: interactive, or `-e`/`-f` scripts.
    Sql(SqlArgs),
    /// Serve the FHIR R4 REST API (one base URL per data store).
    Serve(ServeArgs),
    /// Data stores, as HealthLake's control plane: create, describe, list, delete, tags.
    Datastore(DatastoreArgs),
    /// The demo: load the shipped Synthea sample (once) and open the SQL REPL.
    Demo(DemoArgs),
    /// Compact every table of a data store: rewrite live rows into few files, drop delete files.
    Compact(CompactArgs),
}

#[derive(clap::Args)]
struct ImportArgs {
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

#[derive(clap::Args)]
struct ExportArgs {
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

#[derive(clap::Args)]
struct SqlArgs {
    /// Data store whose tables unqualified names refer to (default: the default store).
    #[arg(long)]
    datastore: Option<String>,
    /// Run these statements and exit.
    #[arg(
        short = 'e',
        long = "execute",
        conflicts_with = "file",
        allow_hyphen_values = true
    )]
    execute: Option<String>,
    /// Run the statements of this file and exit.
    #[arg(short = 'f', long)]
    file: Option<PathBuf>,
    /// Result format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    format: OutputFormat,
    /// Write results to this file instead of stdout.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Run against a fhirlake Flight SQL server (grpc://HOST:PORT or grpc+tls://…)
    /// instead of the local data directory.
    #[arg(long, value_name = "URL")]
    connect: Option<String>,
    /// Bearer token for --connect.
    #[arg(
        long,
        env = "FHIRLAKE_FLIGHT_SQL_TOKEN",
        hide_env_values = true,
        requires = "connect"
    )]
    token: Option<String>,
    /// User name for --connect (the password comes from FHIRLAKE_FLIGHT_SQL_PASSWORD).
    #[arg(long, requires = "connect")]
    user: Option<String>,
    /// CA certificate (PEM) for a grpc+tls server with a private CA.
    #[arg(long, requires = "connect")]
    tls_ca: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: std::net::SocketAddr,
    /// Largest accepted request body; larger ones get 413.
    #[arg(long, default_value_t = 16 << 20)]
    max_body_bytes: usize,
    #[command(flatten)]
    flight: FlightArgs,
    #[command(flatten)]
    control: ControlArgs,
}

#[derive(clap::Args)]
struct DatastoreArgs {
    #[command(subcommand)]
    command: fhirlake::control::cli::DatastoreCommand,
    /// Print the operation's JSON response body instead of a table.
    #[arg(long, value_enum, default_value_t = fhirlake::control::cli::Output::Table, global = true)]
    output: fhirlake::control::cli::Output,
    #[command(flatten)]
    control: ControlArgs,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Directory with the sample NDJSON.
    #[arg(long, default_value = "data")]
    sample: PathBuf,
}

#[derive(clap::Args)]
struct CompactArgs {
    #[arg(long)]
    datastore: Option<String>,
}

/// Options of the Flight SQL endpoint that `serve` starts next to the REST API.
#[derive(clap::Args)]
struct FlightArgs {
    /// Address of the Arrow Flight SQL endpoint (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:50051")]
    flight_sql: std::net::SocketAddr,
    /// Do not serve Flight SQL.
    #[arg(long, conflicts_with = "flight_sql")]
    no_flight_sql: bool,
    /// Bearer token Flight SQL clients must send (required off loopback, unless a user is set).
    #[arg(long, env = "FHIRLAKE_FLIGHT_SQL_TOKEN", hide_env_values = true)]
    flight_sql_token: Option<String>,
    /// User name for Flight SQL basic authentication (with --flight-sql-password).
    #[arg(
        long,
        env = "FHIRLAKE_FLIGHT_SQL_USER",
        requires = "flight_sql_password"
    )]
    flight_sql_user: Option<String>,
    /// Password for Flight SQL basic authentication.
    #[arg(
        long,
        env = "FHIRLAKE_FLIGHT_SQL_PASSWORD",
        hide_env_values = true,
        requires = "flight_sql_user"
    )]
    flight_sql_password: Option<String>,
    /// PEM certificate chain to serve Flight SQL over TLS (with --flight-sql-tls-key).
    #[arg(long, requires = "flight_sql_tls_key")]
    flight_sql_tls_cert: Option<PathBuf>,
    /// PEM private key for --flight-sql-tls-cert.
    #[arg(long, requires = "flight_sql_tls_cert")]
    flight_sql_tls_key: Option<PathBuf>,
    /// Most memory (MiB) one query's sorts, joins and aggregations may use; 0 for no limit.
    #[arg(long, default_value_t = 2048)]
    query_memory_mb: usize,
    /// Longest (seconds) one Flight SQL query may run, including fetching; 0 for no limit.
    #[arg(long, default_value_t = 600)]
    query_timeout_secs: u64,
}

/// Options of the control plane (data stores and jobs, HealthLake's AWS JSON API on `POST /`).
#[derive(clap::Args)]
struct ControlArgs {
    /// A local directory (file:// URIs) or S3 prefix (s3://BUCKET/PREFIX, reached with the
    /// AWS_* environment: AWS_ENDPOINT, AWS_REGION, keys) import and export jobs may use;
    /// repeatable. Jobs are refused any other location.
    #[arg(
        long = "allowed-root",
        value_name = "DIR|s3://BUCKET/PREFIX",
        global = true
    )]
    allowed_roots: Vec<fhirlake::control::location::Root>,
    /// The Synthea sample loaded into data stores created with PreloadDataType SYNTHEA.
    #[arg(long, default_value = "data", global = true)]
    preload_dir: PathBuf,
    /// Most data stores CREATING or ACTIVE at once.
    #[arg(long, default_value_t = 10, global = true)]
    max_datastores: usize,
    /// Seconds between two CreateFHIRDatastore (or DeleteFHIRDatastore) calls; 0 for none.
    #[arg(long, default_value_t = 60)]
    datastore_op_interval_secs: u64,
    /// Region shown in ARNs.
    #[arg(long, default_value = "us-east-1", global = true)]
    region: String,
    /// Access key id control-plane requests must be signed with (AWS SigV4). Without it,
    /// signatures are not checked, which is allowed only when serving on loopback.
    #[arg(long, requires = "aws_secret_access_key")]
    aws_access_key_id: Option<String>,
    /// The secret of --aws-access-key-id.
    #[arg(long, env = "FHIRLAKE_AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    aws_secret_access_key: Option<String>,
}

impl ControlArgs {
    fn config(&self, http: std::net::SocketAddr) -> fhirlake::control::ControlConfig {
        fhirlake::control::ControlConfig {
            region: self.region.clone(),
            access_key: self
                .aws_access_key_id
                .clone()
                .zip(self.aws_secret_access_key.clone())
                .map(|(id, secret)| fhirlake::control::sigv4::AccessKey { id, secret }),
            open: http.ip().is_loopback(),
            allowed_roots: self.allowed_roots.clone(),
            preload_dir: self.preload_dir.clone(),
            max_datastores: self.max_datastores,
            create_delete_interval: (self.datastore_op_interval_secs > 0)
                .then(|| Duration::from_secs(self.datastore_op_interval_secs)),
            ..Default::default()
        }
    }
}

impl FlightArgs {
    fn config(&self) -> Option<fhirlake::flight::FlightSqlConfig> {
        if self.no_flight_sql {
            return None;
        }
        Some(fhirlake::flight::FlightSqlConfig {
            addr: self.flight_sql,
            auth: fhirlake::flight::AuthConfig {
                token: self.flight_sql_token.clone(),
                basic: self
                    .flight_sql_user
                    .clone()
                    .zip(self.flight_sql_password.clone()),
            },
            tls: self
                .flight_sql_tls_cert
                .clone()
                .zip(self.flight_sql_tls_key.clone()),
            memory_limit: (self.query_memory_mb > 0).then_some(self.query_memory_mb << 20),
            timeout: (self.query_timeout_secs > 0)
                .then(|| Duration::from_secs(self.query_timeout_secs)),
        })
    }
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
    }
}

/// The options every command takes.
struct Globals {
    data_dir: PathBuf,
    warehouse: Option<Warehouse>,
}

impl Globals {
    /// Opens (creating if needed) the installation the options name.
    async fn open(&self) -> anyhow::Result<Installation> {
        Ok(Installation::open_with(&self.data_dir, self.warehouse.as_ref()).await?)
    }
}

impl ImportArgs {
    async fn run(self, g: &Globals) -> anyhow::Result<ExitCode> {
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

impl ExportArgs {
    async fn run(self, g: &Globals) -> anyhow::Result<ExitCode> {
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

impl SqlArgs {
    async fn run(self, g: &Globals) -> anyhow::Result<ExitCode> {
        let Self {
            datastore,
            execute,
            file,
            format,
            output,
            connect,
            token,
            user,
            tls_ca,
        } = self;
        let script = match (execute, file) {
            (Some(sql), _) => Some(sql),
            (None, Some(f)) => Some(
                std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?,
            ),
            (None, None) => None,
        };
        let (backend, history) = match connect {
            Some(url) => {
                let basic = match user {
                    Some(user) => Some((
                        user,
                        std::env::var("FHIRLAKE_FLIGHT_SQL_PASSWORD")
                            .context("--user needs the password in FHIRLAKE_FLIGHT_SQL_PASSWORD")?,
                    )),
                    None => None,
                };
                let options = fhirlake::cli::remote::RemoteOptions {
                    url,
                    datastore,
                    token,
                    basic,
                    tls_ca,
                };
                let backend = fhirlake::cli::remote::RemoteBackend::connect(options).await?;
                (
                    Arc::new(backend) as Arc<dyn fhirlake::cli::QueryBackend>,
                    None,
                )
            }
            None => {
                let inst = g.open().await?;
                let ds = inst.datastore(datastore.as_deref()).await?;
                let history = inst.data_dir.join("sql_history");
                (local_backend(inst, &ds).await?, Some(history))
            }
        };
        match script {
            Some(sql) => Ok(run_statements(backend, &sql, format, output.as_deref())
                .await?
                .exit_code()),
            None => {
                repl(history, backend, format).await?;
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

impl ServeArgs {
    async fn run(self, g: &Globals) -> anyhow::Result<ExitCode> {
        let Self {
            http,
            max_body_bytes,
            flight,
            control,
        } = self;
        let inst = g.open().await?;
        // Make sure the default data store exists, so a fresh installation serves it.
        inst.datastore(None).await?;
        let config = fhirlake::api::ApiConfig {
            body_limit: max_body_bytes,
            ..Default::default()
        };
        serve(inst, http, config, flight.config(), control.config(http)).await?;
        Ok(ExitCode::SUCCESS)
    }
}

impl DatastoreArgs {
    async fn run(self, g: &Globals) -> anyhow::Result<ExitCode> {
        let Self {
            command,
            output,
            control,
        } = self;
        let inst = g.open().await?;
        // Endpoints point at where `fhirlake serve` listens by default.
        let http: std::net::SocketAddr = ([127, 0, 0, 1], 8080).into();
        // Serves only the data stores this command creates (so their lake sync runs), not
        // the others, which a running server may be syncing.
        let registry = Registry::empty(inst, fhirlake::api::ApiConfig::default().sync_interval)?;
        let plane = fhirlake::control::ControlPlane::new(
            registry.clone(),
            HttpOrigin::new(http.to_string()),
            control.config(http),
        );
        let result = fhirlake::control::cli::run(
            &plane,
            &command,
            output,
            &http.to_string(),
            &mut std::io::stdout(),
        )
        .await;
        registry.flush().await?;
        result?;
        Ok(ExitCode::SUCCESS)
    }
}

impl DemoArgs {
    async fn run(self, g: &Globals) -> anyhow::Result<ExitCode> {
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

impl CompactArgs {
    async fn run(self, g: &Globals) -> anyhow::Result<ExitCode> {
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

/// Runs the REST API and (unless disabled) the Flight SQL endpoint until Ctrl-C or SIGTERM,
/// printing each data store's base URL and the Flight SQL endpoint once both are bound.
async fn serve(
    inst: Installation,
    http: std::net::SocketAddr,
    config: fhirlake::api::ApiConfig,
    flight: Option<fhirlake::flight::FlightSqlConfig>,
    control: fhirlake::control::ControlConfig,
) -> anyhow::Result<()> {
    // One registry of live data stores under every front end.
    let registry = Registry::open(inst, config.sync_interval).await?;
    let mut api = fhirlake::api::Server::bind_registry(registry.clone(), http, config).await?;
    let flight = match flight {
        Some(config) => {
            Some(fhirlake::flight::FlightSqlServer::bind(registry.clone(), config).await?)
        }
        None => None,
    };
    let origin = api.state().origin().clone();
    let control = fhirlake::control::ControlPlane::new(registry, origin, control);
    let interrupted = control.fail_interrupted_jobs().await?;
    if interrupted > 0 {
        tracing::warn!("{interrupted} job(s) interrupted by the last shutdown were marked FAILED");
    }
    api.add_routes(fhirlake::control::bulk::router(control.clone()));
    api.add_routes(fhirlake::control::wire::router(control));
    for (ds, url) in api.base_urls() {
        println!("FHIR R4 base URL of data store '{}': {url}", ds.name);
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stop = Arc::new(stop);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let flight_task = flight.map(|server| {
        println!("Flight SQL endpoint: {}", server.endpoint());
        tokio::spawn(server.run(until_stopped()))
    });
    use std::io::Write as _;
    std::io::stdout().flush()?;
    let on_signal = Arc::clone(&stop);
    tokio::spawn(async move {
        fhirlake::api::shutdown_signal().await;
        on_signal.send_replace(true);
    });
    let api_result = api.run(until_stopped()).await;
    // Whichever way the REST server ended, the Flight SQL endpoint ends with it.
    stop.send_replace(true);
    if let Some(task) = flight_task {
        task.await??;
    }
    api_result?;
    Ok(())
}

/// The interactive REPL, with history in the data directory.
async fn repl(
    history_file: Option<PathBuf>,
    backend: Arc<dyn fhirlake::cli::QueryBackend>,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let options = ReplOptions {
        history_file,
        format,
        ..Default::default()
    };
    run_repl(backend, options).await?;
    Ok(())
}

/// Imports `path` and commits it to the lake, with progress and a summary.
/// A command's input or output: an `s3://` URI (reached with the AWS_* environment, no
/// allowed-root check: this is the operator's own CLI) or a local path.
fn cli_location(path: &Path) -> anyhow::Result<Location> {
    Ok(match path.to_str().filter(|p| p.starts_with("s3://")) {
        Some(uri) => Location::S3(S3Prefix::from_uri(uri).map_err(anyhow::Error::msg)?),
        None => Location::Local(path.to_path_buf()),
    })
}

/// A fresh directory for one CLI command's S3 staging; apart from the server's job staging,
/// which a starting server clears.
fn cli_staging_dir(inst: &Installation) -> PathBuf {
    inst.data_dir
        .join("cli-staging")
        .join(uuid::Uuid::new_v4().simple().to_string())
}

async fn import(
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
