//! The control plane: data stores and their jobs, with HealthLake's operations and shapes.
//!
//! [`ControlPlane`] implements the operations (CreateFHIRDatastore, DescribeFHIRDatastore,
//! ListFHIRDatastores, DeleteFHIRDatastore, TagResource, UntagResource, ListTagsForResource,
//! and the import jobs in [`jobs`]) on the resource store, the lake and the running REST API.
//! [`wire`] serves them over the AWS JSON 1.0 protocol (`POST /`, `X-Amz-Target:
//! HealthLake.<Operation>`), so AWS SDKs and the AWS CLI work with an endpoint override; the
//! CLI calls the same operations in-process.
//!
//! Each operation takes a typed request ([`requests`]) and returns a typed response
//! ([`responses`]) in the shapes of the AWS API model; JSON is parsed and written only at the
//! AWS JSON 1.0 edge ([`wire`]) and by the CLI's `--output json`. What the control plane
//! records about data stores and jobs is typed too ([`records`]).

pub mod bulk;
pub mod cli;
pub mod error;
pub mod export_jobs;
pub mod jobs;
pub mod location;
pub mod operation;
pub mod records;
pub mod requests;
pub mod responses;
mod shapes;
pub mod staging;
pub mod wire;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use error::ControlError;

use crate::installation::Installation;
use crate::origin::HttpOrigin;
use crate::registry::Registry;
use fhirlake_lake::background::BackgroundSync;
use fhirlake_lake::sync::BatchLimits;
use fhirlake_store::{Datastore, DatastoreStatus};
use records::{DatastoreRecord, DatastoreState, ErrorCause, PreloadDataConfig, PreloadDataType};
use requests::{
    CreateDatastoreRequest, DatastoreIdRequest, ListDatastoresRequest, Request, ResourceArnRequest,
    TagResourceRequest, UntagResourceRequest,
};
use responses::{
    DatastoreProperties, DatastoreSummary, DescribeDatastoreResponse, Empty, EpochSeconds,
    ListDatastoresResponse, ListTagsResponse, Response,
};

/// How long a deleted data store stays describable (HealthLake: seven days).
pub const DELETED_RETENTION: chrono::Duration = chrono::Duration::days(7);

/// Settings of the control plane.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Region in ARNs.
    pub region: String,
    /// Account id in ARNs (12 digits).
    pub account: String,
    /// Most data stores that are CREATING or ACTIVE at once (HealthLake: 10).
    pub max_datastores: usize,
    /// The Synthea sample loaded by `PreloadDataConfig: {PreloadDataType: SYNTHEA}`.
    pub preload_dir: PathBuf,
    /// Local directories and S3 prefixes import jobs may read from and export jobs may
    /// write to; anything else is refused.
    pub allowed_roots: Vec<location::Root>,
    /// Minimum time between two CreateFHIRDatastore (and between two DeleteFHIRDatastore)
    /// calls; HealthLake allows one per minute. `None` disables the limit.
    pub create_delete_interval: Option<Duration>,
    /// The key pair requests must be signed with (SigV4); `None` accepts unsigned requests
    /// and does not check signatures.
    pub access_key: Option<crate::auth::sigv4::AccessKey>,
    /// Whether unsigned requests are allowed when no key is configured: true when the server
    /// listens on loopback only.
    pub open: bool,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            region: "us-east-1".into(),
            account: "000000000000".into(),
            max_datastores: 10,
            preload_dir: PathBuf::from("data"),
            allowed_roots: Vec::new(),
            create_delete_interval: Some(Duration::from_secs(60)),
            access_key: None,
            open: true,
        }
    }
}

/// The control plane of one installation, over the registry of live data stores that the
/// other front ends share.
#[derive(Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    /// Where the HTTP listener is, for the endpoints operations return.
    origin: HttpOrigin,
    config: ControlConfig,
    /// When each rate-limited operation last ran.
    last_call: Mutex<BTreeMap<&'static str, Instant>>,
    /// The cancel switch of each export job running in this process.
    cancels: Mutex<BTreeMap<String, Arc<std::sync::atomic::AtomicBool>>>,
}

/// Today's time as HealthLake stores it (RFC 3339, milliseconds).
fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A data store's SQL schema (and Iceberg namespace) name derived from its DatastoreName:
/// lower case, `_` for anything that is not a letter or digit, starting with a letter.
fn sql_name(display: &str) -> String {
    let mut name: String = display
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name.insert_str(0, "ds_");
    }
    name.truncate(60);
    if name == "database" {
        name.push_str("_ds");
    }
    name
}

impl ControlPlane {
    pub fn new(registry: Registry, origin: HttpOrigin, config: ControlConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry,
                origin,
                config,
                last_call: Mutex::default(),
                cancels: Mutex::default(),
            }),
        }
    }

    pub fn config(&self) -> &ControlConfig {
        &self.inner.config
    }

    pub fn installation(&self) -> &Installation {
        self.inner.registry.installation()
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn origin(&self) -> &HttpOrigin {
        &self.inner.origin
    }

    fn register_cancel(&self, job_id: &str, flag: Arc<std::sync::atomic::AtomicBool>) {
        let mut cancels = self.inner.cancels.lock().unwrap_or_else(|e| e.into_inner());
        cancels.insert(job_id.to_string(), flag);
    }

    fn unregister_cancel(&self, job_id: &str) {
        let mut cancels = self.inner.cancels.lock().unwrap_or_else(|e| e.into_inner());
        cancels.remove(job_id);
    }

    fn cancel_flag(&self, job_id: &str) -> Option<Arc<std::sync::atomic::AtomicBool>> {
        let cancels = self.inner.cancels.lock().unwrap_or_else(|e| e.into_inner());
        cancels.get(job_id).cloned()
    }

    /// HealthLake's ARN of data store `id`.
    pub fn arn(&self, id: &str) -> String {
        format!(
            "arn:aws:healthlake:{}:{}:datastore/fhir/{id}",
            self.inner.config.region, self.inner.config.account
        )
    }

    /// Refuses a second call of `operation` within the configured interval.
    fn rate_limit(&self, operation: &'static str) -> Result<(), ControlError> {
        let Some(interval) = self.inner.config.create_delete_interval else {
            return Ok(());
        };
        let mut last = self
            .inner
            .last_call
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some(previous) = last.get(operation)
            && now.duration_since(*previous) < interval
        {
            return Err(ControlError::Throttling(format!(
                "Rate exceeded: {operation} is limited to one call per {} seconds",
                interval.as_secs()
            )));
        }
        last.insert(operation, now);
        Ok(())
    }

    /// The data store `id` as the control plane shows it; deleted ones past retention are
    /// gone.
    async fn visible_datastore(
        &self,
        id: &str,
    ) -> Result<(Datastore, DatastoreRecord), ControlError> {
        let not_found = || ControlError::ResourceNotFound(format!("Datastore {id} not found"));
        shapes::check_id("DatastoreId", id)?;
        let ds = match self.installation().store.datastore(id).await {
            Ok(ds) if ds.id == id => ds,
            Ok(_)
            | Err(
                fhirlake_store::StoreError::NoSuchDatastore(_)
                | fhirlake_store::StoreError::AmbiguousDatastore { .. },
            ) => return Err(not_found()),
            Err(e) => return Err(e.into()),
        };
        let record = self.record(id).await?;
        if ds.status == DatastoreStatus::Deleted
            && let Some(deleted) = &record.deleted_at
            && let Ok(at) = chrono::DateTime::parse_from_rfc3339(deleted)
            && chrono::Utc::now() - at.with_timezone(&chrono::Utc) > DELETED_RETENTION
        {
            return Err(not_found());
        }
        Ok((ds, record))
    }

    async fn record(&self, id: &str) -> Result<DatastoreRecord, ControlError> {
        DatastoreRecord::from_stored(&self.installation().store.datastore_properties(id).await?)
    }

    async fn save_record(&self, id: &str, record: &DatastoreRecord) -> Result<(), ControlError> {
        let store = &self.installation().store;
        Ok(store
            .set_datastore_properties(id, &record.to_stored())
            .await?)
    }

    /// `DatastoreProperties` of one data store.
    fn properties(
        &self,
        ds: &Datastore,
        record: &DatastoreRecord,
        host: &str,
    ) -> DatastoreProperties {
        DatastoreProperties {
            datastore_id: ds.id.clone(),
            datastore_arn: self.arn(&ds.id),
            datastore_name: record
                .datastore_name
                .clone()
                .unwrap_or_else(|| ds.name.clone()),
            datastore_status: record.status.unwrap_or(ds.status.into()),
            created_at: EpochSeconds::parse(&ds.created_at),
            datastore_type_version: "R4",
            datastore_endpoint: format!("{}/", self.origin().fhir_base_on(host, &ds.id)),
            sse_configuration: record.sse_configuration.clone().unwrap_or_default(),
            preload_data_config: record.preload_data_config.clone(),
            identity_provider_configuration: record.identity_provider_configuration.clone(),
            error_cause: record.error_cause.clone(),
        }
    }

    /// Runs one operation.
    pub async fn call(&self, request: &Request, host: &str) -> Result<Response, ControlError> {
        Ok(match request {
            Request::CreateDatastore(r) => {
                Response::Datastore(self.create_datastore(r, host).await?)
            }
            Request::DescribeDatastore(r) => {
                Response::DescribeDatastore(self.describe_datastore(r, host).await?)
            }
            Request::ListDatastores(r) => {
                Response::ListDatastores(self.list_datastores(r, host).await?)
            }
            Request::DeleteDatastore(r) => {
                Response::Datastore(self.delete_datastore(r, host).await?)
            }
            Request::TagResource(r) => Response::Empty(self.tag_resource(r).await?),
            Request::UntagResource(r) => Response::Empty(self.untag_resource(r).await?),
            Request::ListTagsForResource(r) => Response::ListTags(self.list_tags(r).await?),
            Request::StartImportJob(r) => Response::Job(self.start_import(r).await?),
            Request::DescribeImportJob(r) => {
                Response::DescribeImportJob(self.describe_import(r).await?)
            }
            Request::ListImportJobs(r) => Response::ListImportJobs(self.list_imports(r).await?),
            Request::StartExportJob(r) => Response::Job(self.start_export(r).await?),
            Request::DescribeExportJob(r) => {
                Response::DescribeExportJob(self.describe_export(r).await?)
            }
            Request::ListExportJobs(r) => Response::ListExportJobs(self.list_exports(r).await?),
            Request::CancelExportJob(r) => Response::Job(self.cancel_export(r).await?),
        })
    }

    /// CreateFHIRDatastore.
    pub async fn create_datastore(
        &self,
        req: &CreateDatastoreRequest,
        host: &str,
    ) -> Result<DatastoreSummary, ControlError> {
        let store = &self.installation().store;
        if let Some(token) = &req.client_token
            && let Some(ds) = store.datastore_by_client_token(token).await?
        {
            let record = self.record(&ds.id).await?;
            return Ok((&self.properties(&ds, &record, host)).into());
        }
        let live = store
            .list_datastores()
            .await?
            .iter()
            .filter(|d| {
                matches!(
                    d.status,
                    DatastoreStatus::Active | DatastoreStatus::Creating
                )
            })
            .count();
        if live >= self.inner.config.max_datastores {
            return Err(ControlError::Validation(format!(
                "Data store quota exceeded: this installation allows {} active data stores \
                 (delete one, or raise the limit with --max-datastores)",
                self.inner.config.max_datastores
            )));
        }
        self.rate_limit("CreateFHIRDatastore")?;

        let base =
            req.name.as_deref().map(sql_name).unwrap_or_else(|| {
                format!("ds_{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
            });
        let existing: Vec<String> = store
            .list_datastores()
            .await?
            .into_iter()
            .map(|d| d.name)
            .collect();
        let mut name = base.clone();
        let mut n = 2;
        while existing.contains(&name) {
            name = format!("{base}_{n}");
            n += 1;
        }
        let record = DatastoreRecord {
            datastore_name: req.name.clone(),
            preload_data_config: req.preload_synthea.then_some(PreloadDataConfig {
                preload_data_type: PreloadDataType::Synthea,
            }),
            identity_provider_configuration: req.identity_provider.clone(),
            sse_configuration: req.sse.clone(),
            client_token: req.client_token.clone(),
            tags: req.tags.clone(),
            ..DatastoreRecord::default()
        };
        let ds = store
            .create_datastore_with(&name, DatastoreStatus::Creating, &record.to_stored())
            .await?;
        let response = (&self.properties(&ds, &record, host)).into();
        let this = self.clone();
        tokio::spawn(async move { this.finish_create(ds, record).await });
        Ok(response)
    }

    /// Loads the preload (if asked for), then makes the data store ACTIVE and serves it.
    async fn finish_create(&self, ds: Datastore, mut record: DatastoreRecord) {
        let result = match record.preload_data_config {
            None => Ok(()),
            Some(_) => self.preload(&ds).await,
        };
        match result {
            Ok(()) => self.go_live(ds).await,
            Err(message) => {
                tracing::error!(datastore = %ds.id, "data store creation failed: {message}");
                record.status = Some(DatastoreState::CreateFailed);
                record.error_cause = Some(ErrorCause {
                    error_message: message,
                    error_category: "NON_RETRYABLE_ERROR".into(),
                });
                let _ = self.save_record(&ds.id, &record).await;
                let _ = self
                    .installation()
                    .store
                    .set_datastore_status(&ds.id, DatastoreStatus::Deleted)
                    .await;
            }
        }
    }

    /// Imports the shipped Synthea sample into a new data store and commits it to the lake.
    async fn preload(&self, ds: &Datastore) -> Result<(), String> {
        let inst = &self.installation();
        let dir = &self.inner.config.preload_dir;
        if !dir.is_dir() {
            return Err(format!(
                "the Synthea preload directory {} does not exist (set --preload-dir)",
                dir.display()
            ));
        }
        let report_dir = inst
            .data_dir
            .join("imports")
            .join(format!("{}-PRELOAD", ds.id));
        let sync = BackgroundSync::spawn(
            inst.store.clone(),
            inst.lake.clone(),
            ds.clone(),
            Duration::from_secs(2),
            BatchLimits::default(),
        );
        let imported = crate::ingest::import(
            &inst.store,
            ds,
            dir,
            &crate::ingest::ImportOptions::new(report_dir),
            Arc::default(),
        )
        .await;
        let synced = sync.shutdown().await;
        imported.map_err(|e| format!("preload failed: {e}"))?;
        synced.map_err(|e| format!("preload could not be committed to the lake: {e}"))?;
        Ok(())
    }

    /// DescribeFHIRDatastore.
    pub async fn describe_datastore(
        &self,
        req: &DatastoreIdRequest,
        host: &str,
    ) -> Result<DescribeDatastoreResponse, ControlError> {
        let (ds, record) = self.visible_datastore(&req.datastore_id).await?;
        Ok(DescribeDatastoreResponse {
            datastore_properties: self.properties(&ds, &record, host),
        })
    }

    /// ListFHIRDatastores.
    pub async fn list_datastores(
        &self,
        req: &ListDatastoresRequest,
        host: &str,
    ) -> Result<ListDatastoresResponse, ControlError> {
        let name = req.name.as_deref();
        let (status, before, after) = (req.status, req.created_before, req.created_after);
        let mut all = Vec::new();
        for ds in self.installation().store.list_datastores().await? {
            let Ok((ds, record)) = self.visible_datastore(&ds.id).await else {
                continue;
            };
            let p = self.properties(&ds, &record, host);
            let created = p.created_at.0;
            if name.is_some_and(|n| p.datastore_name != n)
                || status.is_some_and(|s| p.datastore_status != s)
                || before.is_some_and(|b| created >= b)
                || after.is_some_and(|a| created <= a)
            {
                continue;
            }
            all.push(p);
        }
        let (list, next_token) = responses::page(all, req.page.offset, req.page.max);
        Ok(ListDatastoresResponse {
            datastore_properties_list: list,
            next_token,
        })
    }

    /// DeleteFHIRDatastore: DELETING now; the data is removed in the background, then DELETED.
    pub async fn delete_datastore(
        &self,
        req: &DatastoreIdRequest,
        host: &str,
    ) -> Result<DatastoreSummary, ControlError> {
        let id = req.datastore_id.as_str();
        let (ds, mut record) = self.visible_datastore(id).await?;
        match ds.status {
            DatastoreStatus::Active => {}
            DatastoreStatus::Creating => {
                return Err(ControlError::Conflict(format!(
                    "Datastore {id} is being created; delete it once it is ACTIVE"
                )));
            }
            DatastoreStatus::Deleting | DatastoreStatus::Deleted => {
                return Err(ControlError::Conflict(format!(
                    "Datastore {id} is already {}",
                    ds.status.as_str()
                )));
            }
        }
        if ds.is_default {
            return Err(ControlError::Conflict(format!(
                "Datastore {id} ('{}') is this installation's default data store, which the \
                 command line uses; it cannot be deleted",
                ds.name
            )));
        }
        let store = &self.installation().store;
        if let Some(job) = store
            .list_jobs(id, fhirlake_store::JobKind::Import)
            .await?
            .into_iter()
            .chain(store.list_jobs(id, fhirlake_store::JobKind::Export).await?)
            .find(|j| j.is_running())
        {
            return Err(ControlError::Conflict(format!(
                "Datastore {id} has a running job ({}); wait for it to finish",
                job.job_id
            )));
        }
        self.rate_limit("DeleteFHIRDatastore")?;
        store
            .set_datastore_status(id, DatastoreStatus::Deleting)
            .await?;
        let ds = Datastore {
            status: DatastoreStatus::Deleting,
            ..ds
        };
        let response = (&self.properties(&ds, &record, host)).into();
        let this = self.clone();
        tokio::spawn(async move {
            match this.purge(&ds).await {
                Ok(()) => {
                    record.deleted_at = Some(now());
                    let _ = this.save_record(&ds.id, &record).await;
                    let _ = this
                        .installation()
                        .store
                        .set_datastore_status(&ds.id, DatastoreStatus::Deleted)
                        .await;
                    tracing::info!(datastore = %ds.id, "data store DELETED");
                }
                Err(e) => tracing::error!(datastore = %ds.id, "deleting data store failed: {e}"),
            }
        });
        Ok(response)
    }

    /// Serves a created data store, then records it ACTIVE: once a client sees ACTIVE, every
    /// front end answers for it.
    async fn go_live(&self, ds: Datastore) {
        let ds = Datastore {
            status: DatastoreStatus::Active,
            ..ds
        };
        if let Err(e) = self.inner.registry.activate(ds.clone()).await {
            tracing::error!(datastore = %ds.id, "cannot serve the data store: {e}");
            return;
        }
        let recorded = self
            .installation()
            .store
            .set_datastore_status(&ds.id, DatastoreStatus::Active)
            .await;
        if let Err(e) = recorded {
            tracing::error!(datastore = %ds.id, "cannot activate data store: {e}");
            let _ = self.inner.registry.deactivate(&ds.id).await;
            return;
        }
        tracing::info!(datastore = %ds.id, name = %ds.name, "data store ACTIVE");
    }

    /// Stops serving a data store, drops its Iceberg tables (and their files) and removes its
    /// resources from the store.
    async fn purge(&self, ds: &Datastore) -> Result<(), String> {
        let inst = &self.installation();
        self.inner
            .registry
            .deactivate(&ds.id)
            .await
            .map_err(|e| e.to_string())?;
        inst.lake
            .drop_datastore(&ds.name)
            .await
            .map_err(|e| e.to_string())?;
        inst.store
            .purge_datastore(&ds.id)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The data store an ARN names.
    async fn datastore_of_arn(
        &self,
        arn: &str,
    ) -> Result<(Datastore, DatastoreRecord), ControlError> {
        let id = arn
            .strip_prefix(&format!(
                "arn:aws:healthlake:{}:{}:datastore/fhir/",
                self.inner.config.region, self.inner.config.account
            ))
            .ok_or_else(|| {
                ControlError::Validation(format!(
                    "'{arn}' is not a data store ARN of this server ({})",
                    self.arn("<id>")
                ))
            })?;
        self.visible_datastore(id).await
    }

    /// TagResource.
    pub async fn tag_resource(&self, req: &TagResourceRequest) -> Result<Empty, ControlError> {
        self.edit_tags(&req.resource_arn, |tags| {
            tags.extend(req.tags.clone());
            if tags.len() > shapes::MAX_TAGS {
                return Err(ControlError::Validation(format!(
                    "A resource can have at most {} tags; this would make {}",
                    shapes::MAX_TAGS,
                    tags.len()
                )));
            }
            Ok(())
        })
        .await
    }

    /// UntagResource.
    pub async fn untag_resource(&self, req: &UntagResourceRequest) -> Result<Empty, ControlError> {
        self.edit_tags(&req.resource_arn, |tags| {
            for key in &req.tag_keys {
                tags.remove(key);
            }
            Ok(())
        })
        .await
    }

    /// Applies `edit` to the tags of the data store `arn` names and records them; an error
    /// from `edit` records nothing.
    async fn edit_tags(
        &self,
        arn: &str,
        edit: impl FnOnce(&mut BTreeMap<String, String>) -> Result<(), ControlError>,
    ) -> Result<Empty, ControlError> {
        let (ds, mut record) = self.datastore_of_arn(arn).await?;
        edit(&mut record.tags)?;
        self.save_record(&ds.id, &record).await?;
        Ok(Empty {})
    }

    /// ListTagsForResource.
    pub async fn list_tags(
        &self,
        req: &ResourceArnRequest,
    ) -> Result<ListTagsResponse, ControlError> {
        let (_, record) = self.datastore_of_arn(&req.resource_arn).await?;
        Ok(ListTagsResponse::new(&record.tags))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_names_are_identifiers() {
        assert_eq!(sql_name("Test_Data_Store"), "test_data_store");
        assert_eq!(
            sql_name("test-datastore-delete-me-2"),
            "test_datastore_delete_me_2"
        );
        assert_eq!(sql_name("2024 cohort"), "ds_2024_cohort");
        assert_eq!(sql_name("database"), "database_ds");
        assert!(fhirlake_store::validate_datastore_name(&sql_name(&"é".repeat(300))).is_ok());
    }
}
