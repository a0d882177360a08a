//! Bulk export: a data store's current resources as NDJSON, from one point in time.
//!
//! The export pins the data store's change sequence when it starts and writes, for every
//! resource, the version that was current then ([`Store::resources_at`]), byte for byte as
//! stored, so writes during the export neither appear half-way nor get lost. One file per
//! resource type, rolled into `Type-2.ndjson`, ... at a size limit. The Patient and Group
//! levels of FHIR Bulk Data keep only resources in the Patient compartment (of the group's
//! member patients, for a Group); `_type` and `_since` narrow any level.
//!
//! Both the control plane's StartFHIRExportJob and the FHIR `$export` operation run this.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use tokio::io::AsyncWriteExt;

use fhirlake_schema::Registry;
use fhirlake_search::compartment::PatientCompartment;
use fhirlake_store::{Datastore, Store, StoreError};

/// Resources read from the store at a time.
const PAGE: i64 = 2_000;

/// Which resources an export covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportScope {
    /// Every resource (`[base]/$export`).
    System,
    /// Resources in any patient's compartment (`[base]/Patient/$export`).
    Patient,
    /// Resources in the compartments of a Group's member patients (`[base]/Group/{id}/$export`).
    Group(String),
}

/// What to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRequest {
    pub scope: ExportScope,
    /// Only these resource types (`_type`); all when `None`.
    pub types: Option<Vec<String>>,
    /// Only resources last updated at or after this instant (`_since`).
    pub since: Option<DateTime<Utc>>,
}

impl ExportRequest {
    /// Everything in the data store.
    pub fn system() -> Self {
        Self {
            scope: ExportScope::System,
            types: None,
            since: None,
        }
    }
}

/// Limits of one export.
#[derive(Debug, Clone, Copy)]
pub struct ExportLimits {
    /// A file is closed and the next one started before it would exceed this size.
    pub max_file_bytes: u64,
}

impl Default for ExportLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: 1 << 30,
        }
    }
}

/// Counters of a running export, for progress reports.
#[derive(Debug, Default)]
pub struct ExportProgress {
    pub resources: AtomicU64,
    pub bytes: AtomicU64,
    /// Resource types finished.
    pub types_done: AtomicU64,
    /// Resource types to export.
    pub types_total: AtomicU64,
}

/// One written file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExportedFile {
    #[serde(rename = "type")]
    pub resource_type: String,
    /// File name within the export directory (`Observation-2.ndjson`).
    pub name: String,
    pub count: u64,
    #[serde(default)]
    pub bytes: u64,
}

/// A finished export.
#[derive(Debug, Clone)]
pub struct ExportReport {
    /// The instant the export reflects (FHIR instant, UTC, milliseconds): every change up to
    /// it is included; later ones are not (a later `_since` export picks them up).
    pub transaction_time: String,
    pub files: Vec<ExportedFile>,
    /// How long the export took.
    pub seconds: f64,
}

impl ExportReport {
    pub fn resources(&self) -> u64 {
        self.files.iter().map(|f| f.count).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }

    /// Writes `manifest.json` into `dir`, next to the files it lists.
    pub async fn write_manifest(
        &self,
        dir: &Path,
        datastore_id: &str,
        job_id: Option<&str>,
    ) -> Result<(), ExportError> {
        let manifest = serde_json::json!({
            "transactionTime": self.transaction_time,
            "datastoreId": datastore_id,
            "jobId": job_id,
            "seconds": self.seconds,
            "numberOfResourcesExported": self.resources(),
            "bytesExported": self.bytes(),
            "output": self.files,
        });
        let path = dir.join("manifest.json");
        let text = serde_json::to_vec_pretty(&manifest).expect("JSON values serialize");
        tokio::fs::write(&path, text).await.map_err(io_error(&path))
    }
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("'{0}' is not an R4 resource type")]
    UnknownType(String),
    #[error("Group/{0} does not exist in this data store")]
    NoSuchGroup(String),
    #[error("the export was cancelled")]
    Cancelled,
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("stored Group/{id} is not valid JSON: {message}")]
    CorruptGroup { id: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The resource types an export writes, in name order: the requested (or all stored) types,
/// only those of the Patient compartment at the Patient and Group levels.
fn export_types(request: &ExportRequest, stored: Vec<String>) -> Result<Vec<String>, ExportError> {
    let wanted: Option<HashSet<String>> = match &request.types {
        None => None,
        Some(types) => Some(
            types
                .iter()
                .map(|t| {
                    Registry::global()
                        .canonical_name(t.trim())
                        .filter(|c| *c == t.trim())
                        .map(str::to_string)
                        .ok_or_else(|| ExportError::UnknownType(t.clone()))
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    let compartment = PatientCompartment::global();
    Ok(stored
        .into_iter()
        .filter(|t| wanted.as_ref().is_none_or(|w| w.contains(t)))
        .filter(|t| request.scope == ExportScope::System || compartment.has_type(t))
        .collect())
}

/// The member patients of Group `id` as it is now.
async fn group_members(
    store: &Store,
    ds: &Datastore,
    id: &str,
) -> Result<HashSet<String>, ExportError> {
    let group = match store.read_current(&ds.id, "Group", id).await? {
        Some(v) if !v.deleted => v,
        _ => return Err(ExportError::NoSuchGroup(id.to_string())),
    };
    let json: serde_json::Value = serde_json::from_str(group.json.as_deref().unwrap_or("{}"))
        .map_err(|e| ExportError::CorruptGroup {
            id: id.to_string(),
            message: e.to_string(),
        })?;
    Ok(json["member"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["inactive"] != true)
        .filter_map(|m| m["entity"]["reference"].as_str())
        .filter_map(fhirlake_search::compartment::patient_id)
        .map(str::to_string)
        .collect())
}

/// NDJSON files of one resource type, rolled at the size limit.
struct TypeWriter<'a> {
    dir: &'a Path,
    resource_type: &'a str,
    max_bytes: u64,
    current: Option<(tokio::io::BufWriter<tokio::fs::File>, ExportedFile)>,
    done: Vec<ExportedFile>,
}

impl<'a> TypeWriter<'a> {
    async fn write(&mut self, json: &str) -> Result<(), ExportError> {
        let len = json.len() as u64 + 1;
        if let Some((_, file)) = &self.current
            && file.bytes > 0
            && file.bytes + len > self.max_bytes
        {
            self.finish_file().await?;
        }
        if self.current.is_none() {
            let name = format!("{}-{}.ndjson", self.resource_type, self.done.len() + 1);
            let path = self.dir.join(&name);
            let f = tokio::fs::File::create(&path)
                .await
                .map_err(io_error(&path))?;
            self.current = Some((
                tokio::io::BufWriter::with_capacity(1 << 20, f),
                ExportedFile {
                    resource_type: self.resource_type.to_string(),
                    name,
                    count: 0,
                    bytes: 0,
                },
            ));
        }
        let (w, file) = self.current.as_mut().expect("opened above");
        let path = self.dir.join(&file.name);
        w.write_all(json.as_bytes())
            .await
            .map_err(io_error(&path))?;
        w.write_all(b"\n").await.map_err(io_error(&path))?;
        file.count += 1;
        file.bytes += len;
        Ok(())
    }

    async fn finish_file(&mut self) -> Result<(), ExportError> {
        if let Some((mut w, file)) = self.current.take() {
            let path = self.dir.join(&file.name);
            w.flush().await.map_err(io_error(&path))?;
            w.into_inner().sync_all().await.map_err(io_error(&path))?;
            self.done.push(file);
        }
        Ok(())
    }
}

/// Exports `ds` into `dir` (created if needed). Stops with [`ExportError::Cancelled`] soon
/// after `cancel` is set; files written so far stay.
pub async fn export(
    store: &Store,
    ds: &Datastore,
    request: &ExportRequest,
    dir: &Path,
    limits: &ExportLimits,
    progress: &ExportProgress,
    cancel: &AtomicBool,
) -> Result<ExportReport, ExportError> {
    // The time first, then the sequence: a write between the two is included (and exported
    // again by a `_since` export from this time), never lost.
    let started = std::time::Instant::now();
    let transaction_time = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let at_seq = store.latest_seq(&ds.id).await?;
    let types = export_types(request, store.resource_types(&ds.id).await?)?;
    let members = match &request.scope {
        ExportScope::Group(id) => Some(group_members(store, ds, id).await?),
        _ => None,
    };
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(io_error(dir))?;
    progress
        .types_total
        .store(types.len() as u64, Ordering::Relaxed);
    let compartment = PatientCompartment::global();
    let mut files = Vec::new();
    for resource_type in &types {
        let mut writer = TypeWriter {
            dir,
            resource_type,
            max_bytes: limits.max_file_bytes,
            current: None,
            done: Vec::new(),
        };
        let mut after = String::new();
        loop {
            if cancel.load(Ordering::Relaxed) {
                writer.finish_file().await?;
                return Err(ExportError::Cancelled);
            }
            let page = store
                .resources_at(&ds.id, resource_type, at_seq, &after, PAGE)
                .await?;
            let Some(last) = page.last() else { break };
            after = last.id.clone();
            for resource in &page {
                if let Some(since) = request.since
                    && DateTime::parse_from_rfc3339(&resource.last_updated)
                        .is_ok_and(|t| t.with_timezone(&Utc) < since)
                {
                    continue;
                }
                if request.scope != ExportScope::System {
                    let json: serde_json::Value =
                        serde_json::from_str(&resource.json).map_err(|e| {
                            StoreError::CorruptJson {
                                resource_type: resource_type.clone(),
                                id: resource.id.clone(),
                                source: e,
                            }
                        })?;
                    let patients = compartment.patients(resource_type, &json);
                    let keep = match &members {
                        None => !patients.is_empty(),
                        Some(members) => patients.iter().any(|p| members.contains(p)),
                    };
                    if !keep {
                        continue;
                    }
                }
                writer.write(&resource.json).await?;
                progress.resources.fetch_add(1, Ordering::Relaxed);
                progress
                    .bytes
                    .fetch_add(resource.json.len() as u64 + 1, Ordering::Relaxed);
            }
            if (page.len() as i64) < PAGE {
                break;
            }
        }
        writer.finish_file().await?;
        files.extend(writer.done);
        progress.types_done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(ExportReport {
        transaction_time,
        files,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_checked_and_narrowed() {
        let stored = vec![
            "Observation".to_string(),
            "Organization".to_string(),
            "Patient".to_string(),
        ];
        let all = export_types(&ExportRequest::system(), stored.clone()).unwrap();
        assert_eq!(all, stored);
        let patient_level = ExportRequest {
            scope: ExportScope::Patient,
            ..ExportRequest::system()
        };
        assert_eq!(
            export_types(&patient_level, stored.clone()).unwrap(),
            ["Observation", "Patient"]
        );
        let typed = ExportRequest {
            types: Some(vec!["Patient".into()]),
            ..ExportRequest::system()
        };
        assert_eq!(export_types(&typed, stored.clone()).unwrap(), ["Patient"]);
        let bad = ExportRequest {
            types: Some(vec!["Patients".into()]),
            ..ExportRequest::system()
        };
        assert!(matches!(
            export_types(&bad, stored),
            Err(ExportError::UnknownType(t)) if t == "Patients"
        ));
    }
}
