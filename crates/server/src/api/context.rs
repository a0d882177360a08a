//! The context every FHIR interaction runs in.

use std::sync::Arc;

use super::ApiState;
use crate::registry::Live;
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
}

impl Ctx {
    pub fn store(&self) -> &Store {
        &self.state.installation().store
    }
}
