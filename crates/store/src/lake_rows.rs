//! Where each current resource lives in the lake: its data file and row position.
//!
//! The committer turns a replacement or a delete into an Iceberg position delete for the old
//! row, so it must know that row's file and position without scanning the table.

use std::collections::HashMap;

use sqlx::{QueryBuilder, Row, Sqlite};

use super::{Store, StoreError, begin_immediate};

const ROWS_PER_STATEMENT: usize = 400;
/// Most index rows one writer job of a rebuild deletes or inserts.
const RESET_ROWS_PER_JOB: usize = 4_000;

/// A live data file of a table, as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakeFile {
    pub file_id: i64,
    pub path: String,
    pub record_count: i64,
    /// Rows not yet removed by a later version or a delete.
    pub live_count: i64,
}

/// The lake position of one resource's current row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakeRow {
    pub file_id: i64,
    pub path: String,
    pub pos: i64,
}

/// A data file added by a lake commit, with the id at each row position.
#[derive(Debug, Clone)]
pub struct AddedFile {
    pub path: String,
    pub ids: Vec<String>,
}

impl AddedFile {
    /// (position, id) of each live row; an empty id marks a deleted position.
    fn live_rows(&self) -> Vec<(i64, String)> {
        self.ids
            .iter()
            .enumerate()
            .filter(|(_, id)| !id.is_empty())
            .map(|(pos, id)| (pos as i64, id.clone()))
            .collect()
    }
}

/// Everything one lake commit changed, recorded in the store after Iceberg accepted it.
#[derive(Debug, Clone, Default)]
pub struct LakeCommitRecord {
    /// Highest change sequence the commit applied.
    pub applied_seq: i64,
    /// The Iceberg snapshot the commit created.
    pub snapshot_id: i64,
    pub added_files: Vec<AddedFile>,
    /// Ids whose previous row was position-deleted (replaced or deleted).
    pub removed_ids: Vec<String>,
    /// Files dropped from the table entirely (compaction).
    pub dropped_files: Vec<i64>,
}

impl Store {
    /// Lake positions of the given ids that currently have a row in the lake.
    pub async fn lake_rows(
        &self,
        datastore_id: &str,
        resource_type: &str,
        ids: &[&str],
    ) -> Result<HashMap<String, LakeRow>, StoreError> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "SELECT r.id, r.file_id, f.path, r.pos FROM lake_rows r JOIN lake_files f ON f.file_id = r.file_id \
                 WHERE r.datastore_id = ",
            );
            q.push_bind(datastore_id)
                .push(" AND r.resource_type = ")
                .push_bind(resource_type)
                .push(" AND r.id IN (");
            let mut sep = q.separated(", ");
            for id in chunk {
                sep.push_bind(*id);
            }
            sep.push_unseparated(")");
            for row in q.build().fetch_all(self.pool()).await? {
                out.insert(
                    row.get::<String, _>(0),
                    LakeRow {
                        file_id: row.get(1),
                        path: row.get(2),
                        pos: row.get(3),
                    },
                );
            }
        }
        Ok(out)
    }

    /// Live data files of a table.
    pub async fn lake_files(
        &self,
        datastore_id: &str,
        resource_type: &str,
    ) -> Result<Vec<LakeFile>, StoreError> {
        let rows = sqlx::query(
            "SELECT file_id, path, record_count, live_count FROM lake_files \
             WHERE datastore_id = ? AND resource_type = ? ORDER BY file_id",
        )
        .bind(datastore_id)
        .bind(resource_type)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| LakeFile {
                file_id: r.get(0),
                path: r.get(1),
                record_count: r.get(2),
                live_count: r.get(3),
            })
            .collect())
    }

    /// The Iceberg snapshot the store's row index of a table describes, if any. When the
    /// table's current snapshot differs, a crash separated a lake commit from its record here.
    pub async fn lake_snapshot_id(
        &self,
        datastore_id: &str,
        resource_type: &str,
    ) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT snapshot_id FROM lake_state WHERE datastore_id = ? AND resource_type = ?",
        )
        .bind(datastore_id)
        .bind(resource_type)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Records a lake commit: new files and row positions, removed rows, dropped files and
    /// the new watermark, in one transaction.
    pub async fn record_lake_commit(
        &self,
        datastore_id: &str,
        resource_type: &str,
        record: LakeCommitRecord,
    ) -> Result<(), StoreError> {
        let table = TableKey::new(datastore_id, resource_type);
        self.exclusive(move |conn| {
            Box::pin(async move {
                let mut tx = begin_immediate(conn).await?;
                table.forget_rows(&mut tx, &record.removed_ids).await?;
                for file_id in &record.dropped_files {
                    sqlx::query("DELETE FROM lake_rows WHERE file_id = ?")
                        .bind(file_id)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("DELETE FROM lake_files WHERE file_id = ?")
                        .bind(file_id)
                        .execute(&mut *tx)
                        .await?;
                }
                for file in &record.added_files {
                    table.insert_file(&mut tx, file).await?;
                }
                table
                    .set_state(&mut tx, record.applied_seq, record.snapshot_id)
                    .await?;
                tx.commit().await?;
                Ok(())
            })
        })
        .await
    }
}

impl Store {
    /// Replaces a table's whole row index (after a crash left it behind the lake).
    /// Empty ids in `files` mark deleted positions.
    pub async fn reset_lake_index(
        &self,
        datastore_id: &str,
        resource_type: &str,
        applied_seq: i64,
        snapshot_id: i64,
        files: Vec<AddedFile>,
    ) -> Result<(), StoreError> {
        let table = TableKey::new(datastore_id, resource_type);
        // The state goes first: until it is written again below, the index is known
        // incomplete and gets rebuilt after a crash.
        let clear = table.clone();
        self.exclusive(move |conn| {
            Box::pin(async move {
                let mut tx = begin_immediate(conn).await?;
                for name in ["lake_state", "lake_files"] {
                    sqlx::query(&format!(
                        "DELETE FROM {name} WHERE datastore_id = ? AND resource_type = ?"
                    ))
                    .bind(&clear.datastore_id)
                    .bind(&clear.resource_type)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            })
        })
        .await?;
        // Everything else in writer jobs of at most RESET_ROWS_PER_JOB rows, so resource
        // writes interleave with a rebuild of any size (one job for a compacted table of
        // 60,000 rows held every write back for a third of a second).
        loop {
            let clear = table.clone();
            let deleted = self
                .exclusive(move |conn| Box::pin(async move { Ok(clear.clear_rows(conn).await?) }))
                .await?;
            if deleted == 0 {
                break;
            }
        }
        for file in files {
            let live = file.live_rows();
            let (key, path, records, lives) =
                (table.clone(), file.path, file.ids.len(), live.len());
            let file_id = self
                .exclusive(move |conn| {
                    Box::pin(async move {
                        Ok(key.insert_file_record(conn, &path, records, lives).await?)
                    })
                })
                .await?;
            for chunk in live.chunks(RESET_ROWS_PER_JOB) {
                let (key, chunk) = (table.clone(), chunk.to_vec());
                self.exclusive(move |conn| {
                    Box::pin(async move {
                        let mut tx = begin_immediate(conn).await?;
                        key.insert_rows(&mut tx, file_id, &chunk).await?;
                        tx.commit().await?;
                        Ok(())
                    })
                })
                .await?;
            }
        }
        // Written last: until it is, the index is known incomplete and gets rebuilt again.
        self.exclusive(move |conn| {
            Box::pin(async move { Ok(table.set_state(conn, applied_seq, snapshot_id).await?) })
        })
        .await
    }
}

/// One table's rows of the lake bookkeeping, owned so it can move into a writer job.
#[derive(Debug, Clone)]
struct TableKey {
    datastore_id: String,
    resource_type: String,
}

impl TableKey {
    fn new(datastore_id: &str, resource_type: &str) -> Self {
        Self {
            datastore_id: datastore_id.to_string(),
            resource_type: resource_type.to_string(),
        }
    }

    /// Forgets the rows of `ids` and decrements the live counts of the files that held them.
    async fn forget_rows(
        &self,
        conn: &mut sqlx::SqliteConnection,
        ids: &[String],
    ) -> Result<(), sqlx::Error> {
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "UPDATE lake_files SET live_count = live_count - (SELECT COUNT(*) FROM lake_rows r \
                 WHERE r.file_id = lake_files.file_id AND r.datastore_id = ",
            );
            q.push_bind(&self.datastore_id)
                .push(" AND r.resource_type = ")
                .push_bind(&self.resource_type)
                .push(" AND r.id IN (");
            let mut sep = q.separated(", ");
            for id in chunk {
                sep.push_bind(id);
            }
            sep.push_unseparated(")) WHERE datastore_id = ");
            q.push_bind(&self.datastore_id)
                .push(" AND resource_type = ")
                .push_bind(&self.resource_type);
            q.build().execute(&mut *conn).await?;

            let mut q = QueryBuilder::<Sqlite>::new("DELETE FROM lake_rows WHERE datastore_id = ");
            q.push_bind(&self.datastore_id)
                .push(" AND resource_type = ")
                .push_bind(&self.resource_type)
                .push(" AND id IN (");
            let mut sep = q.separated(", ");
            for id in chunk {
                sep.push_bind(id);
            }
            sep.push_unseparated(")");
            q.build().execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// Deletes up to [`RESET_ROWS_PER_JOB`] of the table's rows; returns how many.
    async fn clear_rows(&self, conn: &mut sqlx::SqliteConnection) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "DELETE FROM lake_rows WHERE datastore_id = ?1 AND resource_type = ?2 AND id IN \
             (SELECT id FROM lake_rows WHERE datastore_id = ?1 AND resource_type = ?2 LIMIT ?3)",
        )
        .bind(&self.datastore_id)
        .bind(&self.resource_type)
        .bind(RESET_ROWS_PER_JOB as i64)
        .execute(conn)
        .await?;
        Ok(done.rows_affected())
    }

    /// Records the watermark and the snapshot the row index describes.
    async fn set_state(
        &self,
        conn: &mut sqlx::SqliteConnection,
        applied_seq: i64,
        snapshot_id: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO lake_state (datastore_id, resource_type, applied_seq, snapshot_id) VALUES (?, ?, ?, ?) \
             ON CONFLICT (datastore_id, resource_type) DO UPDATE SET \
             applied_seq = excluded.applied_seq, snapshot_id = excluded.snapshot_id",
        )
        .bind(&self.datastore_id)
        .bind(&self.resource_type)
        .bind(applied_seq)
        .bind(snapshot_id)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Records a data file and the lake position of each of its live rows. An empty id marks
    /// a position whose row is deleted.
    async fn insert_file(
        &self,
        conn: &mut sqlx::SqliteConnection,
        file: &AddedFile,
    ) -> Result<(), sqlx::Error> {
        let live = file.live_rows();
        let file_id = self
            .insert_file_record(conn, &file.path, file.ids.len(), live.len())
            .await?;
        self.insert_rows(conn, file_id, &live).await
    }

    /// Records a data file with its row counts; returns its id.
    async fn insert_file_record(
        &self,
        conn: &mut sqlx::SqliteConnection,
        path: &str,
        records: usize,
        live: usize,
    ) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "INSERT INTO lake_files (datastore_id, resource_type, path, record_count, live_count) \
             VALUES (?, ?, ?, ?, ?) RETURNING file_id",
        )
        .bind(&self.datastore_id)
        .bind(&self.resource_type)
        .bind(path)
        .bind(records as i64)
        .bind(live as i64)
        .fetch_one(&mut *conn)
        .await
    }

    /// Records the lake position of rows (position, id) of the file `file_id`.
    async fn insert_rows(
        &self,
        conn: &mut sqlx::SqliteConnection,
        file_id: i64,
        rows: &[(i64, String)],
    ) -> Result<(), sqlx::Error> {
        let (datastore_id, resource_type) = (&self.datastore_id, &self.resource_type);
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO lake_rows (datastore_id, resource_type, id, file_id, pos) ",
            );
            q.push_values(chunk, |mut b, (pos, id)| {
                b.push_bind(datastore_id)
                    .push_bind(resource_type)
                    .push_bind(id)
                    .push_bind(file_id)
                    .push_bind(*pos);
            });
            q.push(
                " ON CONFLICT (datastore_id, resource_type, id) DO UPDATE SET \
             file_id = excluded.file_id, pos = excluded.pos",
            );
            q.build().execute(&mut *conn).await?;
        }
        Ok(())
    }
}
