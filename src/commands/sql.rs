//! `fhirlake sql`: runs SQL (Athena dialect) over a data store's tables, from `-e`/`-f`
//! scripts or the interactive REPL, locally or against a Flight SQL server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use fhirlake::cli::local::local_backend;
use fhirlake::cli::{OutputFormat, run_statements};

use super::{Globals, repl};

#[derive(clap::Args)]
pub(crate) struct SqlArgs {
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

impl SqlArgs {
    pub(crate) async fn run(self, g: &Globals) -> anyhow::Result<ExitCode> {
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
