//! The one resource write path: versioned, optionally conditional, and committed in groups.
//!
//! Every resource write (a REST interaction, a Bundle, an import chunk) is a [`WriteRequest`]:
//! a list of [`ConditionalWrite`]s that apply all together or not at all. The writer task
//! (`writer.rs`) commits the requests that are waiting when it becomes free in one SQLite
//! transaction ([`commit_group`]): one lock acquisition and one commit for many requests,
//! while each request keeps its own outcome. Version checks run in memory against the state
//! read under the write lock, so a request whose expected version does not match is refused
//! without touching the others of its group.

use std::collections::{HashMap, HashSet};

use sqlx::{Connection, QueryBuilder, Row, Sqlite, SqliteConnection};

use super::codec::compress;
use super::resources::stamp_meta;
use super::{NewResource, StoreError, WrittenVersion};

/// Rows per multi-row statement: well under SQLite's bound-parameter limit.
const ROWS_PER_STATEMENT: usize = 400;

/// A write that only applies if the resource's current version is the expected one.
#[derive(Debug, Clone)]
pub struct ConditionalWrite {
    pub resource: NewResource,
    /// `None`: no condition. `Some(v)`: the current version must be `v`, where a resource that
    /// never existed has version 0 and a deleted one keeps the version of its deletion.
    pub expected_version: Option<i64>,
}

/// The state of a resource just before a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviousVersion {
    pub version: i64,
    pub deleted: bool,
}

/// What a conditional write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedWrite {
    pub resource_type: String,
    pub id: String,
    /// The version that was current before this write, `None` if the resource never existed.
    pub previous: Option<PreviousVersion>,
    /// The new version; `None` when a deletion found nothing live to delete (nothing written).
    pub written: Option<WrittenVersion>,
    /// The stored JSON of the new version (with meta stamped); `None` for deletions.
    pub json: Option<String>,
}

impl AppliedWrite {
    /// True when the write brought a resource into existence (it was absent or deleted).
    pub fn created(&self) -> bool {
        self.written.is_some() && self.json.is_some() && self.previous.is_none_or(|p| p.deleted)
    }
}

/// The current version of a resource is not the one the write expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "version conflict on {resource_type}/{id}: expected version {expected}, current version is {}",
    current.map_or_else(|| "none (the resource does not exist)".to_string(), |v| v.to_string())
)]
pub struct VersionConflict {
    pub resource_type: String,
    pub id: String,
    pub expected: i64,
    /// `None` when the resource never existed.
    pub current: Option<i64>,
}

/// Why a conditional write was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ConditionalWriteError {
    /// An expected version did not match; nothing was written.
    #[error(transparent)]
    Conflict(#[from] VersionConflict),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One all-or-nothing unit of resource writes in one data store.
#[derive(Debug, Clone)]
pub(crate) struct WriteRequest {
    pub datastore_id: String,
    pub writes: Vec<ConditionalWrite>,
}

/// What one request of a group came to.
pub(crate) type WriteOutcome = Result<Vec<AppliedWrite>, ConditionalWriteError>;

/// (data store, resource type, id)
type Key = (String, String, String);

/// A version row to insert.
struct VersionRow {
    seq: i64,
    key: Key,
    version: i64,
    /// zstd-compressed stored JSON; `None` for a deletion.
    blob: Option<Vec<u8>>,
}

/// Applies `requests` in order in one transaction and commits it. Each request gets its own
/// outcome (a version conflict or unstampable JSON refuses that request alone); an `Err` means
/// the transaction failed as a whole and nothing was written.
pub(super) async fn commit_group(
    conn: &mut SqliteConnection,
    requests: &[WriteRequest],
) -> Result<Vec<WriteOutcome>, sqlx::Error> {
    // IMMEDIATE takes the write lock up front: another process's writer (a CLI import next
    // to a server) queues on the busy timeout instead of failing a lock upgrade.
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    // Stamped under the write lock, so lastUpdated never decreases along the change sequence.
    let last_updated = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut state = read_state(&mut tx, requests).await?;
    let existed: HashSet<Key> = state.keys().cloned().collect();
    let mut next_seq: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) + 1 FROM resource_versions")
            .fetch_one(&mut *tx)
            .await?;
    let mut rows = Vec::new();
    let outcomes = requests
        .iter()
        .map(|request| {
            let planned = plan(request, &state, next_seq, &last_updated)?;
            next_seq += planned.rows.len() as i64;
            for row in &planned.rows {
                state.insert(
                    row.key.clone(),
                    PreviousVersion {
                        version: row.version,
                        deleted: row.blob.is_none(),
                    },
                );
            }
            rows.extend(planned.rows);
            Ok(planned.applied)
        })
        .collect();
    insert_versions(&mut tx, &rows, &existed, &last_updated).await?;
    tx.commit().await?;
    Ok(outcomes)
}

/// The current version of every resource the requests touch, read under the write lock.
async fn read_state(
    conn: &mut SqliteConnection,
    requests: &[WriteRequest],
) -> Result<HashMap<Key, PreviousVersion>, sqlx::Error> {
    let mut ids: HashMap<(&str, &str), Vec<&str>> = HashMap::new();
    for request in requests {
        for w in &request.writes {
            ids.entry((&request.datastore_id, &w.resource.resource_type))
                .or_default()
                .push(&w.resource.id);
        }
    }
    let mut state = HashMap::new();
    for ((datastore_id, resource_type), mut ids) in ids {
        ids.sort_unstable();
        ids.dedup();
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "SELECT id, version, deleted FROM resources_current WHERE datastore_id = ",
            );
            q.push_bind(datastore_id)
                .push(" AND resource_type = ")
                .push_bind(resource_type)
                .push(" AND id IN (");
            let mut sep = q.separated(", ");
            for id in chunk {
                sep.push_bind(*id);
            }
            sep.push_unseparated(")");
            for row in q.build().fetch_all(&mut *conn).await? {
                let key = (
                    datastore_id.to_string(),
                    resource_type.to_string(),
                    row.get::<String, _>(0),
                );
                let previous = PreviousVersion {
                    version: row.get(1),
                    deleted: row.get::<i64, _>(2) != 0,
                };
                state.insert(key, previous);
            }
        }
    }
    Ok(state)
}

/// A request's writes, checked and numbered, ready to insert.
struct Planned {
    applied: Vec<AppliedWrite>,
    rows: Vec<VersionRow>,
}

/// Checks `request` against `state` and assigns its versions and change sequence numbers
/// from `first_seq`. Pure: a refused request leaves nothing behind.
///
/// Deleting a resource that is absent or already deleted writes nothing (FHIR: deleting twice
/// does not create a version) and is reported as `written: None`.
fn plan(
    request: &WriteRequest,
    state: &HashMap<Key, PreviousVersion>,
    first_seq: i64,
    last_updated: &str,
) -> Result<Planned, ConditionalWriteError> {
    // Versions this request has assigned so far (the same id may appear twice).
    let mut local: HashMap<Key, PreviousVersion> = HashMap::new();
    let mut planned = Planned {
        applied: Vec::with_capacity(request.writes.len()),
        rows: Vec::with_capacity(request.writes.len()),
    };
    for w in &request.writes {
        let NewResource {
            resource_type,
            id,
            json,
        } = &w.resource;
        let key = (
            request.datastore_id.clone(),
            resource_type.clone(),
            id.clone(),
        );
        let previous = local.get(&key).or_else(|| state.get(&key)).copied();
        if let Some(expected) = w.expected_version {
            let actual = previous.map_or(0, |p| p.version);
            if actual != expected {
                return Err(VersionConflict {
                    resource_type: resource_type.clone(),
                    id: id.clone(),
                    expected,
                    current: previous.map(|p| p.version),
                }
                .into());
            }
        }
        if json.is_none() && previous.is_none_or(|p| p.deleted) {
            planned.applied.push(AppliedWrite {
                resource_type: resource_type.clone(),
                id: id.clone(),
                previous,
                written: None,
                json: None,
            });
            continue;
        }
        let version = previous.map_or(0, |p| p.version) + 1;
        let stored = json
            .as_deref()
            .map(|text| stamp_meta(text, version, last_updated))
            .transpose()
            .map_err(|source| StoreError::CorruptJson {
                resource_type: resource_type.clone(),
                id: id.clone(),
                source,
            })?;
        let seq = first_seq + planned.rows.len() as i64;
        local.insert(
            key.clone(),
            PreviousVersion {
                version,
                deleted: stored.is_none(),
            },
        );
        // Stored zstd-compressed: resource JSON shrinks about 4x, and the store is read back
        // mostly once, by the lake sync.
        planned.rows.push(VersionRow {
            seq,
            key,
            version,
            blob: stored.as_deref().map(compress),
        });
        planned.applied.push(AppliedWrite {
            resource_type: resource_type.clone(),
            id: id.clone(),
            previous,
            written: Some(WrittenVersion {
                resource_type: resource_type.clone(),
                id: id.clone(),
                version,
                last_updated: last_updated.to_string(),
                seq,
            }),
            json: stored,
        });
    }
    Ok(planned)
}

/// Inserts the version rows and moves each resource's current pointer to its newest row.
///
/// No statement here may need a statement journal (SQLite copies every page a statement
/// touches into one when the statement could fail halfway through a transaction and must undo
/// only itself; that was 14% of the writer thread in a create benchmark). So the inserts say
/// `OR FAIL` (a failing row stops the statement and keeps the rows before it, which is fine:
/// any error rolls the whole group back), and the pointers of resources that existed before
/// the group are moved by an `UPDATE` rather than an upsert, whose update half always runs as
/// `ABORT`.
async fn insert_versions(
    conn: &mut SqliteConnection,
    rows: &[VersionRow],
    existed: &HashSet<Key>,
    last_updated: &str,
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT OR FAIL INTO resource_versions \
             (seq, datastore_id, resource_type, id, version, last_updated, deleted, json_zstd) ",
        );
        q.push_values(chunk, |mut b, row| {
            let (datastore_id, resource_type, id) = &row.key;
            b.push_bind(row.seq)
                .push_bind(datastore_id)
                .push_bind(resource_type)
                .push_bind(id)
                .push_bind(row.version)
                .push_bind(last_updated)
                .push_bind(row.blob.is_none() as i64)
                .push_bind(row.blob.as_deref());
        });
        q.build().execute(&mut *conn).await?;
    }
    // Rows come in change-sequence order: the last one of a resource is its newest.
    let mut newest: HashMap<&Key, &VersionRow> = HashMap::new();
    for row in rows {
        newest.insert(&row.key, row);
    }
    let (moved, new): (Vec<&VersionRow>, Vec<&VersionRow>) = newest
        .into_values()
        .partition(|row| existed.contains(&row.key));
    for chunk in new.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT OR FAIL INTO resources_current \
             (datastore_id, resource_type, id, version, seq, deleted) ",
        );
        q.push_values(chunk, push_current);
        q.build().execute(&mut *conn).await?;
    }
    for chunk in moved.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "UPDATE OR FAIL resources_current \
             SET version = v.column4, seq = v.column5, deleted = v.column6 FROM (",
        );
        q.push_values(chunk, push_current);
        q.push(
            ") AS v WHERE resources_current.datastore_id = v.column1 \
             AND resources_current.resource_type = v.column2 AND resources_current.id = v.column3",
        );
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// A `resources_current` row: (datastore_id, resource_type, id, version, seq, deleted).
fn push_current<'a>(
    mut b: sqlx::query_builder::Separated<'_, 'a, Sqlite, &'static str>,
    row: &&'a VersionRow,
) {
    let (datastore_id, resource_type, id) = &row.key;
    b.push_bind(datastore_id.as_str())
        .push_bind(resource_type.as_str())
        .push_bind(id.as_str())
        .push_bind(row.version)
        .push_bind(row.seq)
        .push_bind(row.blob.is_none() as i64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(id: &str, json: Option<&str>, expected: Option<i64>) -> ConditionalWrite {
        ConditionalWrite {
            resource: NewResource {
                resource_type: "Patient".into(),
                id: id.into(),
                json: json.map(String::from),
            },
            expected_version: expected,
        }
    }

    fn request(writes: Vec<ConditionalWrite>) -> WriteRequest {
        WriteRequest {
            datastore_id: "ds".into(),
            writes,
        }
    }

    #[test]
    fn a_conflict_refuses_the_whole_request_and_nothing_else() {
        let body = r#"{"resourceType":"Patient","id":"a"}"#;
        let mut state = HashMap::new();
        state.insert(
            ("ds".into(), "Patient".into(), "a".into()),
            PreviousVersion {
                version: 3,
                deleted: false,
            },
        );
        let ok = plan(
            &request(vec![
                write("a", Some(body), Some(3)),
                write("a", None, None),
            ]),
            &state,
            10,
            "t",
        )
        .unwrap();
        let versions: Vec<_> = ok.rows.iter().map(|r| (r.seq, r.version)).collect();
        assert_eq!(versions, [(10, 4), (11, 5)]);
        assert!(ok.rows[1].blob.is_none());

        let refused = plan(
            &request(vec![
                write("b", Some(body), None),
                write("a", Some(body), Some(2)),
            ]),
            &state,
            10,
            "t",
        );
        assert!(matches!(
            refused,
            Err(ConditionalWriteError::Conflict(VersionConflict {
                expected: 2,
                current: Some(3),
                ..
            }))
        ));
    }

    #[test]
    fn deleting_what_is_not_there_writes_nothing() {
        let planned = plan(
            &request(vec![write("x", None, None)]),
            &HashMap::new(),
            1,
            "t",
        )
        .unwrap();
        assert!(planned.rows.is_empty());
        assert!(planned.applied[0].written.is_none());
    }
}
