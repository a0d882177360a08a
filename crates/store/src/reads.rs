//! Reads for the REST API (current version, a given version, history pages) and conditional
//! writes that check a resource's current version inside the write transaction.
//!
//! The REST API needs optimistic locking (`If-Match`) without a lost update: the version check
//! runs in the writer task under SQLite's write lock, in the same transaction as the insert
//! (see `writes.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::codec::decompress;
use super::writes::{AppliedWrite, ConditionalWrite, ConditionalWriteError, WriteRequest};
use super::{NewResource, Store, StoreError};

/// One stored version of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVersion {
    pub resource_type: String,
    pub id: String,
    pub version: i64,
    /// FHIR instant in UTC with milliseconds, e.g. `2026-11-27T23:10:00.123Z`.
    pub last_updated: String,
    /// True when this version is a deletion.
    pub deleted: bool,
    /// The stored JSON (with `meta.versionId`/`meta.lastUpdated`), `None` for a deletion.
    pub json: Option<String>,
    /// Change sequence number of this version (global across data stores).
    pub seq: i64,
}

/// Which versions a history page covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Restrict to one resource type (type and instance level history).
    pub resource_type: Option<String>,
    /// Restrict to one resource (instance level history; needs `resource_type`).
    pub id: Option<String>,
    /// Only versions with `last_updated >= since`; same format as [`StoredVersion::last_updated`].
    pub since: Option<String>,
    /// Page size.
    pub count: i64,
    /// Continue below this sequence number (the `next_cursor` of the previous page).
    pub before_seq: Option<i64>,
}

/// One page of history, newest version first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    pub versions: Vec<StoredVersion>,
    /// Set when more versions follow: pass it as [`HistoryQuery::before_seq`].
    pub next_cursor: Option<i64>,
}

/// A type's changes not yet in the lake, for the lake-lag report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingType {
    pub resource_type: String,
    /// Latest change sequence of the type in the store.
    pub store_seq: i64,
    /// Last sequence the store has recorded as applied to the lake.
    pub applied_seq: i64,
    /// Number of versions waiting for the lake.
    pub pending: i64,
    /// `last_updated` of the oldest waiting version.
    pub oldest_pending: String,
}

/// The columns of a [`StoredVersion`], in the order every version reader decodes them.
pub(super) const VERSION_COLUMNS: &str =
    "v.seq, v.resource_type, v.id, v.version, v.last_updated, v.deleted, v.json_zstd";

fn version_from_row(row: &SqliteRow) -> Result<StoredVersion, StoreError> {
    let resource_type: String = row.get(1);
    let id: String = row.get(2);
    let json = match row.get::<Option<Vec<u8>>, _>(6) {
        Some(blob) => Some(
            decompress(&blob).map_err(|message| StoreError::CorruptBlob {
                resource_type: resource_type.clone(),
                id: id.clone(),
                message,
            })?,
        ),
        None => None,
    };
    Ok(StoredVersion {
        seq: row.get(0),
        resource_type,
        id,
        version: row.get(3),
        last_updated: row.get(4),
        deleted: row.get::<i64, _>(5) != 0,
        json,
    })
}

impl Store {
    /// The current version of a resource (possibly a deletion), `None` if it never existed.
    pub async fn read_current(
        &self,
        datastore_id: &str,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<StoredVersion>, StoreError> {
        self.point.current(datastore_id, resource_type, id)
    }

    /// One version of a resource, `None` if that version does not exist.
    pub async fn read_version(
        &self,
        datastore_id: &str,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> Result<Option<StoredVersion>, StoreError> {
        self.point.version(datastore_id, resource_type, id, version)
    }

    /// Several versions of one type in one query, in the order of `keys`; missing ones are
    /// left out. Search pages and includes load their resources this way.
    pub async fn read_versions(
        &self,
        datastore_id: &str,
        resource_type: &str,
        keys: &[(String, i64)],
    ) -> Result<Vec<StoredVersion>, StoreError> {
        let cached = self.versions.get_many(datastore_id, resource_type, keys);
        let missing: Vec<(String, i64)> = keys
            .iter()
            .zip(&cached)
            .filter(|(_, c)| c.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        let mut found: HashMap<(String, i64), StoredVersion> =
            HashMap::with_capacity(missing.len());
        // Two bound values per key; SQLite allows 32,766 per statement.
        for chunk in missing.chunks(5_000) {
            let mut q = QueryBuilder::<Sqlite>::new(format!(
                "SELECT {VERSION_COLUMNS} FROM resource_versions v WHERE v.datastore_id = "
            ));
            q.push_bind(datastore_id)
                .push(" AND v.resource_type = ")
                .push_bind(resource_type)
                .push(" AND (v.id, v.version) IN (VALUES ");
            let mut values = q.separated(", ");
            for (id, version) in chunk {
                values
                    .push("(")
                    .push_bind_unseparated(id.as_str())
                    .push_unseparated(", ")
                    .push_bind_unseparated(*version)
                    .push_unseparated(")");
            }
            q.push(")");
            for row in q.build().fetch_all(self.pool()).await? {
                let v = version_from_row(&row)?;
                found.insert((v.id.clone(), v.version), v);
            }
        }
        let fresh: Vec<Arc<StoredVersion>> = found.values().cloned().map(Arc::new).collect();
        self.versions.insert_many(datastore_id, &fresh);
        Ok(keys
            .iter()
            .zip(cached)
            .filter_map(|(k, c)| match c {
                Some(v) => Some(StoredVersion::clone(&v)),
                None => found.remove(&(k.0.clone(), k.1)),
            })
            .collect())
    }

    /// The current versions of several resources of one type (deletions included), in the
    /// order of `ids`; ids that never existed are left out.
    pub async fn read_current_many(
        &self,
        datastore_id: &str,
        resource_type: &str,
        ids: &[String],
    ) -> Result<Vec<StoredVersion>, StoreError> {
        // The current version numbers come back as one aggregated row (ids hold no spaces),
        // because the SQLite driver hands every result row to the async side separately; the
        // versions themselves then mostly come from the version cache.
        let mut current: HashMap<String, i64> = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(10_000) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "SELECT group_concat(c.id || ' ' || c.version, ' ') FROM resources_current c \
                 WHERE c.datastore_id = ",
            );
            q.push_bind(datastore_id)
                .push(" AND c.resource_type = ")
                .push_bind(resource_type)
                .push(" AND c.id IN (");
            let mut values = q.separated(", ");
            for id in chunk {
                values.push_bind(id.as_str());
            }
            q.push(")");
            let listed: Option<String> = q.build_query_scalar().fetch_one(self.pool()).await?;
            let listed = listed.unwrap_or_default();
            let mut words = listed.split(' ').filter(|w| !w.is_empty());
            while let (Some(id), Some(version)) = (words.next(), words.next()) {
                let version = version.parse().map_err(|_| StoreError::CorruptBlob {
                    resource_type: resource_type.to_string(),
                    id: id.to_string(),
                    message: format!("current version '{version}' is not a number"),
                })?;
                current.insert(id.to_string(), version);
            }
        }
        let keys: Vec<(String, i64)> = ids
            .iter()
            .filter_map(|id| current.get(id).map(|v| (id.clone(), *v)))
            .collect();
        self.read_versions(datastore_id, resource_type, &keys).await
    }

    /// A page of versions, newest first (by change sequence), system-, type- or instance-wide.
    ///
    /// Paging is by sequence cursor rather than offset, so writes that land between two page
    /// requests neither repeat nor skip entries.
    pub async fn history(
        &self,
        datastore_id: &str,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, StoreError> {
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {VERSION_COLUMNS} FROM resource_versions v WHERE v.datastore_id = "
        ));
        q.push_bind(datastore_id);
        if let Some(ty) = &query.resource_type {
            q.push(" AND v.resource_type = ").push_bind(ty.as_str());
            if let Some(id) = &query.id {
                q.push(" AND v.id = ").push_bind(id.as_str());
            }
        }
        if let Some(since) = &query.since {
            q.push(" AND v.last_updated >= ").push_bind(since.as_str());
        }
        if let Some(before) = query.before_seq {
            q.push(" AND v.seq < ").push_bind(before);
        }
        let count = query.count.max(1);
        q.push(" ORDER BY v.seq DESC LIMIT ").push_bind(count + 1);
        let rows = q.build().fetch_all(self.pool()).await?;
        let mut versions = rows
            .iter()
            .map(version_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if versions.len() as i64 > count {
            versions.truncate(count as usize);
            versions.last().map(|v| v.seq)
        } else {
            None
        };
        Ok(HistoryPage {
            versions,
            next_cursor,
        })
    }

    /// Latest change sequence of a data store (0 when it has none).
    ///
    /// A skip-scan over the (datastore, type, seq) index: one seek per resource type instead
    /// of reading every version of the data store.
    pub async fn latest_seq(&self, datastore_id: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "WITH RECURSIVE types(rt) AS ( \
               SELECT MIN(resource_type) FROM resource_versions WHERE datastore_id = ?1 \
               UNION ALL \
               SELECT (SELECT MIN(resource_type) FROM resource_versions \
                       WHERE datastore_id = ?1 AND resource_type > types.rt) \
               FROM types WHERE types.rt IS NOT NULL) \
             SELECT COALESCE(MAX((SELECT MAX(seq) FROM resource_versions \
                                  WHERE datastore_id = ?1 AND resource_type = types.rt)), 0) \
             FROM types WHERE rt IS NOT NULL",
        )
        .bind(datastore_id)
        .fetch_one(self.pool())
        .await?)
    }

    /// Types with versions not yet applied to the lake, with how many and since when.
    pub async fn pending_lake_changes(
        &self,
        datastore_id: &str,
    ) -> Result<Vec<PendingType>, StoreError> {
        let mut out = Vec::new();
        for (resource_type, store_seq) in self.pending_types(datastore_id).await? {
            let row = sqlx::query(
                "SELECT COALESCE((SELECT applied_seq FROM lake_state \
                   WHERE datastore_id = ?1 AND resource_type = ?2), 0)",
            )
            .bind(datastore_id)
            .bind(&resource_type)
            .fetch_one(self.pool())
            .await?;
            let applied_seq: i64 = row.get(0);
            let row = sqlx::query(
                "SELECT COUNT(*), MIN(last_updated) FROM resource_versions \
                 WHERE datastore_id = ? AND resource_type = ? AND seq > ?",
            )
            .bind(datastore_id)
            .bind(&resource_type)
            .bind(applied_seq)
            .fetch_one(self.pool())
            .await?;
            let pending: i64 = row.get(0);
            // The sync may have caught up between the two queries.
            if pending > 0 {
                out.push(PendingType {
                    resource_type,
                    store_seq,
                    applied_seq,
                    pending,
                    oldest_pending: row.get::<Option<String>, _>(1).unwrap_or_default(),
                });
            }
        }
        Ok(out)
    }

    /// Writes `resource` only if its current version is `expected_version` (see
    /// [`ConditionalWrite::expected_version`]); the check and the write are one transaction.
    pub async fn put_if_version(
        &self,
        datastore_id: &str,
        resource: NewResource,
        expected_version: Option<i64>,
    ) -> Result<AppliedWrite, ConditionalWriteError> {
        let mut applied = self
            .put_checked(
                datastore_id,
                vec![ConditionalWrite {
                    resource,
                    expected_version,
                }],
            )
            .await?;
        Ok(applied.remove(0))
    }

    /// Applies `writes` atomically, in order, after checking every expected version; a single
    /// mismatch writes nothing. Versions are assigned as in [`Store::put_resources`], and
    /// deleting a resource that is absent or already deleted writes nothing (FHIR: deleting
    /// twice does not create a version), reported as `written: None`.
    pub async fn put_checked(
        &self,
        datastore_id: &str,
        writes: Vec<ConditionalWrite>,
    ) -> Result<Vec<AppliedWrite>, ConditionalWriteError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        self.write(WriteRequest {
            datastore_id: datastore_id.to_string(),
            writes,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PreviousVersion, VersionConflict};

    fn patient(id: &str, gender: &str) -> NewResource {
        NewResource {
            resource_type: "Patient".into(),
            id: id.into(),
            json: Some(format!(
                r#"{{"resourceType":"Patient","id":"{id}","gender":"{gender}"}}"#
            )),
        }
    }

    fn deletion(id: &str) -> NewResource {
        NewResource {
            resource_type: "Patient".into(),
            id: id.into(),
            json: None,
        }
    }

    async fn store() -> (tempfile::TempDir, Store, String) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).await.unwrap();
        let ds = store.create_datastore("t").await.unwrap();
        (dir, store, ds.id)
    }

    #[tokio::test]
    async fn reads_see_current_versions_and_deletions() {
        let (_dir, store, ds) = store().await;
        assert!(
            store
                .read_current(&ds, "Patient", "a")
                .await
                .unwrap()
                .is_none()
        );
        store
            .put_resources(&ds, vec![patient("a", "male"), patient("a", "female")])
            .await
            .unwrap();
        let cur = store
            .read_current(&ds, "Patient", "a")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((cur.version, cur.deleted), (2, false));
        assert!(cur.json.unwrap().contains(r#""gender":"female""#));
        let v1 = store
            .read_version(&ds, "Patient", "a", 1)
            .await
            .unwrap()
            .unwrap();
        assert!(v1.json.unwrap().contains(r#""versionId":"1""#));
        assert!(
            store
                .read_version(&ds, "Patient", "a", 3)
                .await
                .unwrap()
                .is_none()
        );

        store.put_resources(&ds, vec![deletion("a")]).await.unwrap();
        let cur = store
            .read_current(&ds, "Patient", "a")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((cur.version, cur.deleted, cur.json), (3, true, None));
        // Another data store does not see it.
        let other = store.create_datastore("u").await.unwrap();
        assert!(
            store
                .read_current(&other.id, "Patient", "a")
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn history_pages_newest_first_with_cursor_and_since() {
        let (_dir, store, ds) = store().await;
        for i in 0..5 {
            store
                .put_resources(
                    &ds,
                    vec![patient("a", if i % 2 == 0 { "male" } else { "female" })],
                )
                .await
                .unwrap();
        }
        store
            .put_resources(&ds, vec![patient("b", "male")])
            .await
            .unwrap();
        let mut q = HistoryQuery {
            resource_type: Some("Patient".into()),
            id: Some("a".into()),
            count: 2,
            ..Default::default()
        };
        let mut seen = Vec::new();
        loop {
            let page = store.history(&ds, &q).await.unwrap();
            assert!(page.versions.len() <= 2);
            seen.extend(page.versions.iter().map(|v| v.version));
            match page.next_cursor {
                Some(c) => q.before_seq = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, [5, 4, 3, 2, 1]);

        let all = store
            .history(
                &ds,
                &HistoryQuery {
                    count: 100,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(all.versions.len(), 6);
        assert_eq!(all.versions[0].id, "b");
        assert_eq!(store.latest_seq(&ds).await.unwrap(), all.versions[0].seq);
        let other = store.create_datastore("u").await.unwrap();
        assert_eq!(store.latest_seq(&other.id).await.unwrap(), 0);
        assert!(all.next_cursor.is_none());

        let since = all.versions[0].last_updated.clone();
        let recent = store
            .history(
                &ds,
                &HistoryQuery {
                    since: Some(since.clone()),
                    count: 100,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(recent.versions.iter().all(|v| v.last_updated >= since));
        assert!(recent.versions.iter().any(|v| v.id == "b"));
        let future = HistoryQuery {
            since: Some("2999-01-01T00:00:00.000Z".into()),
            count: 10,
            ..Default::default()
        };
        assert!(
            store
                .history(&ds, &future)
                .await
                .unwrap()
                .versions
                .is_empty()
        );
    }

    #[tokio::test]
    async fn conditional_writes_check_versions_atomically() {
        let (_dir, store, ds) = store().await;
        // Create only if absent: expected version 0.
        let w = store
            .put_if_version(&ds, patient("a", "male"), Some(0))
            .await
            .unwrap();
        assert!(w.created());
        assert_eq!(w.written.as_ref().unwrap().version, 1);
        assert!(w.json.as_deref().unwrap().contains(r#""versionId":"1""#));
        let err = store
            .put_if_version(&ds, patient("a", "male"), Some(0))
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            ConditionalWriteError::Conflict(VersionConflict {
                expected: 0,
                current: Some(1),
                ..
            })
        ));
        // A failing item rolls back the whole group.
        let err = store
            .put_checked(
                &ds,
                vec![
                    ConditionalWrite {
                        resource: patient("b", "male"),
                        expected_version: None,
                    },
                    ConditionalWrite {
                        resource: patient("a", "female"),
                        expected_version: Some(7),
                    },
                ],
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ConditionalWriteError::Conflict(_)));
        assert!(
            store
                .read_current(&ds, "Patient", "b")
                .await
                .unwrap()
                .is_none()
        );

        let w = store
            .put_if_version(&ds, patient("a", "female"), Some(1))
            .await
            .unwrap();
        assert!(!w.created());
        assert_eq!(
            w.previous,
            Some(PreviousVersion {
                version: 1,
                deleted: false
            })
        );
        // Deleting: once writes a version, twice writes nothing.
        let d = store
            .put_if_version(&ds, deletion("a"), None)
            .await
            .unwrap();
        assert_eq!(d.written.unwrap().version, 3);
        let d = store
            .put_if_version(&ds, deletion("a"), None)
            .await
            .unwrap();
        assert!(d.written.is_none());
        let d = store
            .put_if_version(&ds, deletion("never"), None)
            .await
            .unwrap();
        assert!(d.written.is_none() && d.previous.is_none());
        assert!(
            store
                .read_current(&ds, "Patient", "never")
                .await
                .unwrap()
                .is_none()
        );
        // Re-creating a deleted resource counts as a create.
        let w = store
            .put_if_version(&ds, patient("a", "male"), Some(3))
            .await
            .unwrap();
        assert!(w.created());
        assert_eq!(w.written.unwrap().version, 4);
    }

    #[tokio::test]
    async fn concurrent_updates_with_the_same_expected_version_have_one_winner() {
        let (_dir, store, ds) = store().await;
        store
            .put_resources(&ds, vec![patient("a", "male")])
            .await
            .unwrap();
        let attempt = |store: Store, ds: String, n: usize, expected: i64| async move {
            store
                .put_if_version(
                    &ds,
                    patient(
                        "a",
                        if n.is_multiple_of(2) {
                            "male"
                        } else {
                            "female"
                        },
                    ),
                    Some(expected),
                )
                .await
        };
        let tasks: Vec<_> = (0..50)
            .map(|n| tokio::spawn(attempt(store.clone(), ds.clone(), n, 1)))
            .collect();
        let mut wins = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(w) => {
                    wins += 1;
                    assert_eq!(w.written.unwrap().version, 2);
                }
                Err(ConditionalWriteError::Conflict(c)) => assert_eq!(c.current, Some(2)),
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert_eq!(wins, 1);

        // Retrying writers: every success gets its own version, none is lost.
        let tasks: Vec<_> = (0..50)
            .map(|n| {
                let (store, ds) = (store.clone(), ds.clone());
                tokio::spawn(async move {
                    loop {
                        let cur = store
                            .read_current(&ds, "Patient", "a")
                            .await
                            .unwrap()
                            .unwrap();
                        match attempt(store.clone(), ds.clone(), n, cur.version).await {
                            Ok(w) => return w.written.unwrap().version,
                            Err(ConditionalWriteError::Conflict(_)) => continue,
                            Err(e) => panic!("unexpected error: {e}"),
                        }
                    }
                })
            })
            .collect();
        let mut versions = Vec::new();
        for t in tasks {
            versions.push(t.await.unwrap());
        }
        versions.sort();
        assert_eq!(versions, (3..=52).collect::<Vec<_>>());
        let cur = store
            .read_current(&ds, "Patient", "a")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cur.version, 52);
    }
}
