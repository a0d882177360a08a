//! Who may read which tables over Flight SQL, so one SMART identity works for SQL too.
//!
//! A call authenticates with the endpoint's own credentials (the operator's token or user,
//! see [`super::auth`]), with nothing where the endpoint is open (loopback), or with a SMART
//! access token of the call's data store (its `x-fhirlake-datastore` header, `USE`, or the
//! default), verified exactly as the FHIR API verifies it. What a statement reads is checked
//! on its plan before it runs: a SMART caller may read only its own data store's resource
//! tables, each needing a `system/` or `user/` read scope for the type (SQL cannot be confined
//! to a patient's compartment, so patient-level and fine-grained grants are refused); an open
//! endpoint's anonymous callers never read a SMART data store's tables; the operator reads
//! everything.

use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::LogicalPlan;
use tonic::Status;

use crate::auth::scopes::Action;
use crate::auth::{Grant, Principal};
use crate::origin::HttpOrigin;
use crate::registry::{Live, Registry};

/// The identity of a Flight SQL call.
#[derive(Debug, Clone)]
pub enum FlightCaller {
    /// The endpoint's configured credentials: reads everything.
    Operator,
    /// No credentials on an open (loopback) endpoint.
    Open,
    /// A SMART access token of one data store.
    Smart {
        datastore_id: String,
        principal: Arc<Principal>,
    },
}

impl FlightCaller {
    /// A short name for the audit log.
    pub fn name(&self) -> Option<String> {
        match self {
            FlightCaller::Smart { principal, .. } => principal
                .subject
                .clone()
                .or_else(|| principal.client_id.clone()),
            _ => None,
        }
    }
}

/// Verifies `authorization` as a SMART access token of `live` (a SMART data store).
pub async fn smart_caller(
    live: &Live,
    origin: Option<&HttpOrigin>,
    authorization: &str,
) -> Result<FlightCaller, Status> {
    let Some(origin) = origin else {
        return Err(Status::unauthenticated(
            "this Flight SQL endpoint does not accept SMART tokens (it serves no FHIR API)",
        ));
    };
    let base = origin.default_fhir_base(&live.ds.id);
    let audiences = [format!("{base}/"), base];
    let principal = crate::auth::http::principal(live, Some(authorization), &audiences)
        .await
        .map_err(|e| Status::unauthenticated(e.to_string()))?;
    Ok(FlightCaller::Smart {
        datastore_id: live.ds.id.clone(),
        principal,
    })
}

/// Refuses a plan that reads a table `caller` may not read; `current` is the data store
/// unqualified table names mean.
pub fn check_plan(
    registry: &Registry,
    plan: &LogicalPlan,
    current: &str,
    caller: &FlightCaller,
) -> Result<(), Status> {
    if matches!(caller, FlightCaller::Operator) {
        return Ok(());
    }
    let mut refused = None;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let schema = scan.table_name.schema().unwrap_or(current);
            let table = scan.table_name.table();
            if let Err(e) = check_table(registry, schema, table, caller) {
                refused = Some(e);
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    refused.map_or(Ok(()), Err)
}

fn check_table(
    registry: &Registry,
    schema: &str,
    table: &str,
    caller: &FlightCaller,
) -> Result<(), Status> {
    let live = registry.resolve(schema);
    let smart_store = live
        .as_ref()
        .is_some_and(|l| l.auth.smart_metadata().is_some());
    match caller {
        FlightCaller::Operator => Ok(()),
        FlightCaller::Open if smart_store => Err(Status::permission_denied(format!(
            "{schema}.{table} belongs to a SMART on FHIR data store: send its access token"
        ))),
        FlightCaller::Open => Ok(()),
        FlightCaller::Smart {
            datastore_id,
            principal,
        } => {
            let same = live.as_ref().is_some_and(|l| &l.ds.id == datastore_id);
            let resource_type = fhirlake_schema::Registry::global().canonical_name(table);
            let (true, Some(resource_type)) = (same, resource_type) else {
                return Err(Status::permission_denied(format!(
                    "the access token reaches only its own data store's resource tables, not \
                     {schema}.{table}"
                )));
            };
            match crate::auth::Caller::Smart(principal.clone()).grant(resource_type, Action::Read) {
                Ok(Grant::All) => Ok(()),
                Ok(Grant::Patients(_)) => Err(Status::permission_denied(format!(
                    "SQL cannot be confined to a patient's compartment: reading {table} needs a \
                     system/ or user/ read scope"
                ))),
                Err(e) => Err(Status::permission_denied(e.to_string())),
            }
        }
    }
}
