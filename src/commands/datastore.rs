//! `fhirlake datastore`: the data-store operations of HealthLake's control plane (create,
//! describe, list, delete, tags) on the local installation.

use std::process::ExitCode;

use fhirlake::origin::HttpOrigin;
use fhirlake::registry::Registry;

use super::{ControlArgs, Globals};

#[derive(clap::Args)]
pub(crate) struct DatastoreArgs {
    #[command(subcommand)]
    command: fhirlake::control::cli::DatastoreCommand,
    /// Print the operation's JSON response body instead of a table.
    #[arg(long, value_enum, default_value_t = fhirlake::control::cli::Output::Table, global = true)]
    output: fhirlake::control::cli::Output,
    #[command(flatten)]
    control: ControlArgs,
}

impl DatastoreArgs {
    pub(crate) async fn run(self, g: &Globals) -> anyhow::Result<ExitCode> {
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
