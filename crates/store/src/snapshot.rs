//! Reads of a data store as it was at one change sequence number: what an export writes.
//!
//! Writes keep going while an export runs, so the export pins the data store's latest `seq`
//! when it starts and reads, for every resource, the version that was current then. Most
//! resources have not changed since, and their current version is read directly; a resource
//! changed after the pin falls back to its newest version at or below it (none if it was
//! created later, a deletion if it was deleted before).

use sqlx::Row;

use super::codec::decompress;
use super::{Store, StoreError};

/// One resource as it was at the pinned sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotResource {
    pub id: String,
    /// FHIR instant of that version.
    pub last_updated: String,
    /// The stored JSON, exactly as written (with `meta.versionId`/`meta.lastUpdated`).
    pub json: String,
}

impl Store {
    /// Up to `limit` live resources of one type with ids after `after_id` (in id order), each
    /// in the version that was current at change sequence `at_seq`.
    pub async fn resources_at(
        &self,
        datastore_id: &str,
        resource_type: &str,
        at_seq: i64,
        after_id: &str,
        limit: i64,
    ) -> Result<Vec<SnapshotResource>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.id, v.last_updated, v.json_zstd FROM resources_current c \
             JOIN resource_versions v ON v.datastore_id = c.datastore_id \
               AND v.resource_type = c.resource_type AND v.id = c.id \
               AND v.version = CASE WHEN c.seq <= ?3 THEN c.version ELSE ( \
                 SELECT MAX(w.version) FROM resource_versions w \
                 WHERE w.datastore_id = c.datastore_id AND w.resource_type = c.resource_type \
                   AND w.id = c.id AND w.seq <= ?3) END \
             WHERE c.datastore_id = ?1 AND c.resource_type = ?2 AND c.id > ?4 \
             ORDER BY c.id LIMIT ?5",
        )
        .bind(datastore_id)
        .bind(resource_type)
        .bind(at_seq)
        .bind(after_id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.get(0);
            // A deletion at the pinned point: the resource did not exist then.
            let Some(blob) = row.get::<Option<Vec<u8>>, _>(2) else {
                continue;
            };
            let json = decompress(&blob).map_err(|message| StoreError::CorruptBlob {
                resource_type: resource_type.to_string(),
                id: id.clone(),
                message,
            })?;
            out.push(SnapshotResource {
                id,
                last_updated: row.get(1),
                json,
            });
        }
        Ok(out)
    }

    /// Resource types that have (or had, deleted since) resources in the data store, sorted.
    pub async fn resource_types(&self, datastore_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT resource_type FROM resources_current WHERE datastore_id = ? \
             ORDER BY resource_type",
        )
        .bind(datastore_id)
        .fetch_all(self.pool())
        .await?)
    }
}
