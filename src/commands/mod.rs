//! The `fhirlake` subcommands, one module each, and what several of them share: the global
//! options, the control-plane options, S3 locations and staging, and the SQL REPL.

pub(crate) mod audit;
pub(crate) mod compact;
pub(crate) mod datastore;
pub(crate) mod demo;
pub(crate) mod export;
pub(crate) mod import;
pub(crate) mod serve;
pub(crate) mod sql;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fhirlake::cli::{OutputFormat, ReplOptions, run_repl};
use fhirlake::control::location::{Location, S3Prefix};
use fhirlake::installation::Installation;
use fhirlake::lake::Warehouse;

/// The options every command takes.
pub(crate) struct Globals {
    pub(crate) data_dir: PathBuf,
    pub(crate) warehouse: Option<Warehouse>,
}

impl Globals {
    /// Opens (creating if needed) the installation the options name.
    pub(crate) async fn open(&self) -> anyhow::Result<Installation> {
        Ok(Installation::open_with(&self.data_dir, self.warehouse.as_ref()).await?)
    }
}

/// Options of the control plane (data stores and jobs, HealthLake's AWS JSON API on `POST /`).
#[derive(clap::Args)]
pub(crate) struct ControlArgs {
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
    pub(crate) fn config(&self, http: std::net::SocketAddr) -> fhirlake::control::ControlConfig {
        fhirlake::control::ControlConfig {
            region: self.region.clone(),
            access_key: self
                .aws_access_key_id
                .clone()
                .zip(self.aws_secret_access_key.clone())
                .map(|(id, secret)| fhirlake::auth::sigv4::AccessKey { id, secret }),
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

/// The interactive REPL, with history in the data directory.
pub(crate) async fn repl(
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

/// A command's input or output: an `s3://` URI (reached with the AWS_* environment, no
/// allowed-root check: this is the operator's own CLI) or a local path.
pub(crate) fn cli_location(path: &Path) -> anyhow::Result<Location> {
    Ok(match path.to_str().filter(|p| p.starts_with("s3://")) {
        Some(uri) => Location::S3(S3Prefix::from_uri(uri).map_err(anyhow::Error::msg)?),
        None => Location::Local(path.to_path_buf()),
    })
}

/// A fresh directory for one CLI command's S3 staging; apart from the server's job staging,
/// which a starting server clears.
pub(crate) fn cli_staging_dir(inst: &Installation) -> PathBuf {
    inst.data_dir
        .join("cli-staging")
        .join(uuid::Uuid::new_v4().simple().to_string())
}
