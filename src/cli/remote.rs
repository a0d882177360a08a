//! The REPL backend for a remote server: SQL runs on a fhirlake Flight SQL endpoint
//! (`fhirlake sql --connect grpc://host:50051`).
//!
//! Each call opens a Flight SQL request on one shared gRPC channel; results stream back batch
//! by batch, and dropping a result stream (Ctrl-C in the REPL) cancels the call, which stops
//! the query on the server.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::error::DataFusionError;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::repl::{BackendError, QueryBackend, TableInfo};
use crate::flight::DATASTORE_HEADER;
use crate::schema::Registry;

/// How to reach and authenticate with a Flight SQL server.
#[derive(Debug, Clone, Default)]
pub struct RemoteOptions {
    /// `grpc://host:port` or `grpc+tls://host:port`.
    pub url: String,
    /// Data store for unqualified names (the server's default when `None`).
    pub datastore: Option<String>,
    /// Bearer token.
    pub token: Option<String>,
    /// User name and password, exchanged for a token by the handshake.
    pub basic: Option<(String, String)>,
    /// PEM file of the CA that signed the server's certificate (for `grpc+tls`; the
    /// system's web PKI roots otherwise).
    pub tls_ca: Option<std::path::PathBuf>,
}

/// SQL on a remote fhirlake server over Flight SQL.
pub struct RemoteBackend {
    channel: Channel,
    token: Option<String>,
    datastore: Option<String>,
}

/// The server's message for a failed call, without the transport's wrapping.
fn flight_error(e: FlightError) -> BackendError {
    match e {
        FlightError::Tonic(status) => {
            BackendError::other(format!("{} ({:?})", status.message(), status.code()))
        }
        other => BackendError::other(other.to_string()),
    }
}

impl RemoteBackend {
    /// Connects (and authenticates, when credentials are given).
    pub async fn connect(options: RemoteOptions) -> Result<Self, BackendError> {
        let (tls, address) = if let Some(rest) = options.url.strip_prefix("grpc+tls://") {
            (true, format!("https://{rest}"))
        } else if let Some(rest) = options.url.strip_prefix("grpc://") {
            (false, format!("http://{rest}"))
        } else {
            return Err(BackendError::other(format!(
                "cannot connect to '{}': the URL must start with grpc:// or grpc+tls://",
                options.url
            )));
        };
        let mut endpoint = Endpoint::from_shared(address.clone())
            .map_err(|e| BackendError::other(format!("invalid server URL {address}: {e}")))?;
        if tls {
            let mut config = ClientTlsConfig::new().with_webpki_roots();
            if let Some(ca) = &options.tls_ca {
                let pem = std::fs::read(ca).map_err(|e| {
                    BackendError::other(format!("cannot read {}: {e}", ca.display()))
                })?;
                config = config.ca_certificate(Certificate::from_pem(pem));
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| BackendError::other(format!("TLS: {e}")))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| BackendError::other(format!("cannot connect to {}: {e}", options.url)))?;
        let mut backend = Self {
            channel,
            token: options.token,
            datastore: options.datastore,
        };
        if let Some((user, password)) = &options.basic {
            let mut client = backend.client();
            client
                .handshake(user, password)
                .await
                .map_err(flight_error)?;
            backend.token = client.token().cloned();
        }
        // Fail now, not at the first statement, when the server refuses us.
        backend.schema_of("SELECT 1").await?;
        Ok(backend)
    }

    fn client(&self) -> FlightSqlServiceClient<Channel> {
        let mut client = FlightSqlServiceClient::new(self.channel.clone());
        if let Some(token) = &self.token {
            client.set_token(token.clone());
        }
        if let Some(ds) = &self.datastore {
            client.set_header(DATASTORE_HEADER, ds.clone());
        }
        client
    }

    /// The result schema of `sql`, planned on the server without running it.
    async fn schema_of(&self, sql: &str) -> Result<SchemaRef, BackendError> {
        let info = self
            .client()
            .execute(sql.to_string(), None)
            .await
            .map_err(flight_error)?;
        let schema = info
            .try_decode_schema()
            .map_err(|e| BackendError::other(e.to_string()))?;
        Ok(Arc::new(schema))
    }
}

impl QueryBackend for RemoteBackend {
    fn execute<'a>(
        &'a self,
        sql: &'a str,
    ) -> BoxFuture<'a, Result<SendableRecordBatchStream, BackendError>> {
        Box::pin(async move {
            let mut client = self.client();
            let info = client
                .execute(sql.to_string(), None)
                .await
                .map_err(flight_error)?;
            let schema = Arc::new(
                info.clone()
                    .try_decode_schema()
                    .map_err(|e| BackendError::other(e.to_string()))?,
            );
            // Endpoints are fetched one after the other, each as its batches arrive.
            let tickets: Vec<_> = info.endpoint.into_iter().filter_map(|e| e.ticket).collect();
            let this = Self {
                channel: self.channel.clone(),
                token: self.token.clone(),
                datastore: self.datastore.clone(),
            };
            let batches = futures::stream::iter(tickets)
                .then(move |ticket| {
                    let mut client = this.client();
                    async move { client.do_get(ticket).await }
                })
                .try_flatten()
                .map_err(|e| match flight_error(e) {
                    BackendError::Other(e) => DataFusionError::External(e),
                    BackendError::DataFusion(e) => e,
                });
            Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches))
                as SendableRecordBatchStream)
        })
    }

    fn tables(&self) -> BoxFuture<'_, Result<Vec<TableInfo>, BackendError>> {
        Box::pin(async move {
            // One query counts every type's rows; types without data count 0 cheaply.
            let types: Vec<String> = Registry::global()
                .resource_types()
                .map(|t| t.to_lowercase())
                .collect();
            let sql = types
                .iter()
                .map(|t| format!("SELECT '{t}' AS t, count(*) AS n FROM {t}"))
                .collect::<Vec<_>>()
                .join(" UNION ALL ");
            let stream = self.execute(&sql).await?;
            let batches: Vec<_> = stream.try_collect().await?;
            let mut out = Vec::new();
            for batch in batches {
                let names = arrow::array::cast::as_string_array(batch.column(0));
                let counts = batch
                    .column(1)
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .ok_or_else(|| BackendError::other("unexpected count type"))?;
                for i in 0..batch.num_rows() {
                    out.push(TableInfo {
                        name: names.value(i).to_string(),
                        rows: counts.value(i).max(0) as u64,
                    });
                }
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }

    fn describe<'a>(
        &'a self,
        table: &'a str,
    ) -> BoxFuture<'a, Result<Option<SchemaRef>, BackendError>> {
        Box::pin(async move {
            // Names are case-insensitive, as in the local backend; quoting keeps odd input
            // from being read as SQL.
            let quoted = table.to_lowercase().replace('"', "\"\"");
            match self
                .schema_of(&format!("SELECT * FROM \"{quoted}\" LIMIT 0"))
                .await
            {
                Ok(schema) => Ok(Some(schema)),
                Err(e) if e.to_string().contains("not found") => Ok(None),
                Err(e) => Err(e),
            }
        })
    }
}
