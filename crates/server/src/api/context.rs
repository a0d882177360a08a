//! The context every FHIR interaction runs in.

use std::sync::Arc;

use super::ApiState;
use super::error::ApiError;
use crate::auth::scopes::Action;
use crate::auth::{Caller, Denied, Grant};
use crate::registry::Live;
use fhirlake_search::SearchRequest;
use fhirlake_search::compartment::PatientCompartment;
use fhirlake_search::query::Filter;
use fhirlake_store::reads::StoredVersion;
use fhirlake_store::{Datastore, Store};

/// Everything an interaction needs: the server state, the data store and its base URL.
#[derive(Clone)]
pub struct Ctx {
    pub state: ApiState,
    pub ds: Arc<Datastore>,
    /// The data store's lake sync and searcher.
    pub live: Arc<Live>,
    /// Absolute base URL without a trailing slash, e.g. `http://127.0.0.1:8080/datastore/<id>/r4`.
    pub base: String,
    /// Who is asking (established by [`crate::auth::http`]).
    pub caller: Caller,
}

impl Ctx {
    pub fn store(&self) -> &Store {
        &self.state.installation().store
    }
}

impl Ctx {
    /// What the caller may do with `resource_type` for `action` (403 when nothing).
    pub fn grant(&self, resource_type: &str, action: Action) -> Result<Grant, ApiError> {
        Ok(self.caller.grant(resource_type, action)?)
    }

    /// A search confined as the caller's grant for `resource_type` says: only the granted
    /// patients' compartments, and no chain or `_has` through a type the caller may not
    /// search (its matches would reveal that type's content). Included resources are
    /// filtered by [`Ctx::may_read`] instead.
    pub fn confine_search(&self, req: &mut SearchRequest) -> Result<(), ApiError> {
        if let Grant::Patients(p) = self.grant(req.resource_type, Action::Search)? {
            req.patients = Some((*p).clone());
        }
        for other in referenced_types(&req.filters) {
            self.grant(other, Action::Search)?;
        }
        Ok(())
    }

    /// Whether the caller may see `v` under its read grant (included resources of other
    /// types are dropped rather than failing the search).
    pub fn may_read(&self, v: &StoredVersion) -> bool {
        match self.caller.grant(&v.resource_type, Action::Read) {
            Ok(grant) => in_grant(&grant, &v.resource_type, v.json.as_deref()),
            Err(_) => false,
        }
    }
}

/// Types a search's chains and `_has` read, at any depth.
fn referenced_types(filters: &[Filter]) -> Vec<&'static str> {
    let mut out = Vec::new();
    for f in filters {
        match f {
            Filter::Chain { target, inner, .. } => {
                out.push(*target);
                out.extend(referenced_types(inner));
            }
            Filter::Has { source, inner, .. } => {
                out.push(*source);
                out.extend(referenced_types(inner));
            }
            Filter::Criterion(_) | Filter::Ids(_) => {}
        }
    }
    out
}

/// Whether a resource (its JSON; `None` for a deletion) lies within `grant`. A deletion has
/// no content to place it in a compartment, so a confined grant does not reach it.
pub fn in_grant(grant: &Grant, resource_type: &str, json: Option<&str>) -> bool {
    match grant {
        Grant::All => true,
        Grant::Patients(patients) => json
            .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
            .is_some_and(|v| PatientCompartment::global().contains(resource_type, &v, patients)),
    }
}

/// 403 unless the resource lies within `grant`.
pub fn check_in_grant(
    grant: &Grant,
    resource_type: &str,
    json: Option<&str>,
) -> Result<(), ApiError> {
    if in_grant(grant, resource_type, json) {
        Ok(())
    } else {
        Err(Denied::OutsideCompartment.into())
    }
}
