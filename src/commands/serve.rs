//! `fhirlake serve`: serves the FHIR R4 REST API (one base URL per data store), the control
//! plane and, unless disabled, a Flight SQL endpoint, until Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use fhirlake::installation::Installation;
use fhirlake::registry::Registry;

use super::{ControlArgs, Globals};

#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: std::net::SocketAddr,
    /// Largest accepted request body; larger ones get 413.
    #[arg(long, default_value_t = 16 << 20)]
    max_body_bytes: usize,
    /// PEM certificate chain to serve the REST API and control plane over HTTPS only
    /// (with --tls-key); base URLs then say https.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve without authentication beyond loopback: AWS_AUTH data stores and the control
    /// plane then answer unsigned requests from anyone who can reach the port. Without it,
    /// a non-loopback --http needs --aws-access-key-id.
    #[arg(long)]
    insecure: bool,
    #[command(flatten)]
    flight: FlightArgs,
    #[command(flatten)]
    control: ControlArgs,
    /// Boxed: the `Command` enum stays small (clippy's large_enum_variant).
    #[command(flatten)]
    limits: Box<QuotaArgs>,
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
            // Set once the REST API is bound (`serve`).
            http_origin: None,
        })
    }
}

impl ServeArgs {
    pub(crate) async fn run(self, g: &Globals) -> anyhow::Result<ExitCode> {
        let Self {
            http,
            max_body_bytes,
            tls_cert,
            tls_key,
            insecure,
            flight,
            control,
            limits,
        } = self;
        let control = open_only_where_allowed(control.config(http), http, insecure)?;
        // Bad certificate files fail here, before anything is opened or bound.
        let tls = match tls_cert.zip(tls_key) {
            Some((cert, key)) => Some(fhirlake::tls::server_config(&cert, &key)?),
            None => None,
        };
        let inst = g.open().await?;
        // Make sure the default data store exists, so a fresh installation serves it.
        inst.datastore(None).await?;
        let config = fhirlake::api::ApiConfig {
            body_limit: max_body_bytes,
            access_key: control.access_key.clone(),
            open: control.open,
            quotas: limits.quotas(),
            ..Default::default()
        };
        let listen = Listen { addr: http, tls };
        serve(inst, listen, config, flight.config(), control).await?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Refuses to serve unauthenticated beyond loopback unless `--insecure` says so (loudly).
fn open_only_where_allowed(
    control: fhirlake::control::ControlConfig,
    http: std::net::SocketAddr,
    insecure: bool,
) -> anyhow::Result<fhirlake::control::ControlConfig> {
    if http.ip().is_loopback() || control.access_key.is_some() {
        return Ok(control);
    }
    if !insecure {
        anyhow::bail!(
            "refusing to serve {http} without authentication: give --aws-access-key-id and \
             --aws-secret-access-key (SigV4; SMART on FHIR data stores use bearer tokens), or \
             --insecure to serve unsigned requests from anyone who can reach the port"
        );
    }
    tracing::warn!(
        "--insecure: serving {http} WITHOUT AUTHENTICATION; anyone who can reach it can read \
         and change every AWS_AUTH data store and use the control plane"
    );
    Ok(fhirlake::control::ControlConfig {
        open: true,
        ..control
    })
}

/// Where the REST API listens, and with which TLS configuration if any.
struct Listen {
    addr: std::net::SocketAddr,
    tls: Option<Arc<fhirlake::tls::ServerConfig>>,
}

/// Runs the REST API and (unless disabled) the Flight SQL endpoint until Ctrl-C or SIGTERM,
/// printing each data store's base URL and the Flight SQL endpoint once both are bound.
async fn serve(
    inst: Installation,
    http: Listen,
    config: fhirlake::api::ApiConfig,
    flight: Option<fhirlake::flight::FlightSqlConfig>,
    control: fhirlake::control::ControlConfig,
) -> anyhow::Result<()> {
    // One registry of live data stores under every front end.
    let registry = Registry::open(inst, config.sync_interval).await?;
    let mut api = match http.tls {
        Some(tls) => {
            fhirlake::api::Server::bind_registry_tls(registry.clone(), http.addr, config, tls)
                .await?
        }
        None => fhirlake::api::Server::bind_registry(registry.clone(), http.addr, config).await?,
    };
    let origin = api.state().origin().clone();
    let flight = match flight {
        Some(config) => {
            // SMART tokens name the REST API's data store endpoints.
            let config = fhirlake::flight::FlightSqlConfig {
                http_origin: Some(origin.clone()),
                ..config
            };
            Some(fhirlake::flight::FlightSqlServer::bind(registry.clone(), config).await?)
        }
        None => None,
    };
    let control = fhirlake::control::ControlPlane::new(registry.clone(), origin, control);
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
    // The REST server flushed the audit log when it stopped; Flight SQL may have added since.
    if let Some(audit) = registry.audit() {
        audit.flush().await;
    }
    api_result?;
    Ok(())
}

/// HealthLake-style request-rate quotas (off unless asked for).
#[derive(clap::Args)]
struct QuotaArgs {
    /// Throttle requests per data store and operation with a quota preset: `healthlake`
    /// (HealthLake's default quotas, e.g. 3000 reads, 100 searches, 10 Bundles per second).
    /// Without it nothing is throttled (except the --quota overrides).
    #[arg(long, value_name = "PRESET", value_parser = ["healthlake"])]
    quotas: Option<String>,
    /// Set one operation's quota (repeatable): RATE requests per second (0 lifts it), BURST
    /// requests at once (default: one second's worth), e.g. --quota ReadResource=100/200.
    #[arg(long, value_name = "OPERATION=RATE[/BURST]", value_parser = parse_quota)]
    quota: Vec<(&'static str, Option<fhirlake::limits::Quota>)>,
}

impl QuotaArgs {
    fn quotas(&self) -> fhirlake::limits::Quotas {
        let mut quotas = match self.quotas.as_deref() {
            Some("healthlake") => fhirlake::limits::Quotas::healthlake(),
            _ => fhirlake::limits::Quotas::off(),
        };
        for (operation, quota) in &self.quota {
            quotas.set(operation, *quota);
        }
        quotas
    }
}

fn parse_quota(spec: &str) -> Result<(&'static str, Option<fhirlake::limits::Quota>), String> {
    fhirlake::limits::quota::parse_override(spec)
}
