//! The audit records of Flight SQL: one per statement the client fetches (DoGet), which is
//! when data is read. The statement's text may hold PHI (`WHERE name = 'Smith'`), so only its
//! SHA-256 is recorded; compare it with `sha256sum` of a suspected text.

use std::net::SocketAddr;

use arrow_flight::sql::TicketStatementQuery;
use tonic::Status;
use tonic::metadata::MetadataMap;

use super::auth::Authenticator;
use super::state::QueryTicket;
use crate::audit::{self, AuditRecord, Outcome};
use crate::registry::Registry;

/// The record of a DoGet before it runs: caller, peer, data store and the statement's hash.
pub(super) fn entry(
    registry: &Registry,
    auth: &Authenticator,
    ticket: &TicketStatementQuery,
    metadata: &MetadataMap,
    peer: Option<SocketAddr>,
) -> AuditRecord {
    let mut entry = AuditRecord::new("FlightSqlStatement", auth.principal(metadata));
    entry.source = peer.map(|p| p.to_string());
    if let Ok(ticket) = serde_json::from_slice::<QueryTicket>(&ticket.statement_handle) {
        entry.sql_sha256 = Some(audit::sha256_hex(&ticket.sql));
        entry.datastore_id = Some(
            registry
                .resolve(&ticket.datastore)
                .map_or(ticket.datastore, |live| live.ds.id.clone()),
        );
    }
    entry
}

/// Appends the record with how the call ended (a failure while streaming is not seen here:
/// the call had been accepted and its first batch planned).
pub(super) async fn finish(registry: &Registry, mut entry: AuditRecord, error: Option<&Status>) {
    entry.outcome = match error.map(Status::code) {
        None => Outcome::Success,
        Some(tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) => Outcome::Denied,
        Some(tonic::Code::Internal | tonic::Code::Unavailable | tonic::Code::Unknown) => {
            Outcome::ServerError
        }
        Some(_) => Outcome::ClientError,
    };
    audit::record(registry.audit(), entry).await;
}
