//! Import and export jobs, as the control plane records them.
//!
//! A job row is written when the job is accepted and updated as it runs, so jobs survive a
//! restart: the control plane finds the unfinished ones at start and resumes or fails them.

use sqlx::Row;

use super::{Store, StoreError, begin_immediate};

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Import,
    Export,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Import => "IMPORT",
            JobKind::Export => "EXPORT",
        }
    }
}

/// A job's status, as HealthLake names it (`JobStatus` in its API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    Submitted,
    Queued,
    InProgress,
    CompletedWithErrors,
    Completed,
    Failed,
    CancelSubmitted,
    CancelInProgress,
    CancelCompleted,
    CancelFailed,
}

impl JobStatus {
    const ALL: [JobStatus; 10] = [
        Self::Submitted,
        Self::Queued,
        Self::InProgress,
        Self::CompletedWithErrors,
        Self::Completed,
        Self::Failed,
        Self::CancelSubmitted,
        Self::CancelInProgress,
        Self::CancelCompleted,
        Self::CancelFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submitted => "SUBMITTED",
            Self::Queued => "QUEUED",
            Self::InProgress => "IN_PROGRESS",
            Self::CompletedWithErrors => "COMPLETED_WITH_ERRORS",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::CancelSubmitted => "CANCEL_SUBMITTED",
            Self::CancelInProgress => "CANCEL_IN_PROGRESS",
            Self::CancelCompleted => "CANCEL_COMPLETED",
            Self::CancelFailed => "CANCEL_FAILED",
        }
    }

    /// The status named by `s` (HealthLake's spelling), if any.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// True while the job holds its data store's single job slot (it has not finished).
    pub fn is_running(self) -> bool {
        matches!(
            self,
            Self::Submitted
                | Self::Queued
                | Self::InProgress
                | Self::CancelSubmitted
                | Self::CancelInProgress
        )
    }
}

/// `'SUBMITTED', 'QUEUED', ...`: the running statuses as an SQL list.
fn running_names() -> String {
    let names: Vec<String> = JobStatus::ALL
        .into_iter()
        .filter(|s| s.is_running())
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    names.join(", ")
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// 32 lower-case hex characters.
    pub job_id: String,
    pub datastore_id: String,
    pub kind: JobKind,
    pub status: JobStatus,
    /// RFC 3339.
    pub submit_time: String,
    pub end_time: Option<String>,
    pub client_token: Option<String>,
    /// The request and progress, as the control plane defines them.
    pub properties: serde_json::Value,
}

impl Job {
    /// True while the job holds its data store's single job slot.
    pub fn is_running(&self) -> bool {
        self.status.is_running()
    }
}

fn from_row(row: &sqlx::sqlite::SqliteRow) -> Job {
    Job {
        job_id: row.get("job_id"),
        datastore_id: row.get("datastore_id"),
        kind: if row.get::<&str, _>("kind") == "EXPORT" {
            JobKind::Export
        } else {
            JobKind::Import
        },
        // Rows are only written from a JobStatus; an unknown name would be a foreign edit.
        status: JobStatus::from_name(row.get("status")).unwrap_or(JobStatus::Failed),
        submit_time: row.get("submit_time"),
        end_time: row.get("end_time"),
        client_token: row.get("client_token"),
        properties: serde_json::from_str(row.get::<&str, _>("properties"))
            .unwrap_or(serde_json::Value::Null),
    }
}

impl Store {
    /// Records a new job, unless the data store already has a running one (HealthLake runs
    /// one import or export at a time per data store): then returns that job as `Err`.
    pub async fn insert_job(&self, job: &Job) -> Result<Result<(), Job>, StoreError> {
        let job = job.clone();
        self.exclusive(move |conn| {
            Box::pin(async move {
                let mut tx = begin_immediate(conn).await?;
                let running = sqlx::query(&format!(
                    "SELECT * FROM jobs WHERE datastore_id = ? AND status IN ({}) LIMIT 1",
                    running_names()
                ))
                .bind(&job.datastore_id)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(row) = running {
                    return Ok(Err(from_row(&row)));
                }
                sqlx::query(
                    "INSERT INTO jobs (job_id, datastore_id, kind, status, submit_time, end_time, \
                     client_token, properties) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(&job.job_id)
                .bind(&job.datastore_id)
                .bind(job.kind.as_str())
                .bind(job.status.as_str())
                .bind(&job.submit_time)
                .bind(&job.end_time)
                .bind(&job.client_token)
                .bind(job.properties.to_string())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Ok(()))
            })
        })
        .await
    }

    /// Writes a job's status, end time and properties.
    pub async fn update_job(&self, job: &Job) -> Result<(), StoreError> {
        let (status, end_time, properties, job_id) = (
            job.status.as_str(),
            job.end_time.clone(),
            job.properties.to_string(),
            job.job_id.clone(),
        );
        self.exclusive(move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "UPDATE jobs SET status = ?, end_time = ?, properties = ? WHERE job_id = ?",
                )
                .bind(status)
                .bind(end_time)
                .bind(properties)
                .bind(job_id)
                .execute(conn)
                .await?;
                Ok(())
            })
        })
        .await
    }

    pub async fn job(&self, job_id: &str) -> Result<Job, StoreError> {
        sqlx::query("SELECT * FROM jobs WHERE job_id = ?")
            .bind(job_id)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(from_row)
            .ok_or_else(|| StoreError::NoSuchJob(job_id.to_string()))
    }

    /// The job of `kind` on `datastore_id` created with `client_token`, if any.
    pub async fn job_by_client_token(
        &self,
        datastore_id: &str,
        kind: JobKind,
        client_token: &str,
    ) -> Result<Option<Job>, StoreError> {
        Ok(sqlx::query(
            "SELECT * FROM jobs WHERE datastore_id = ? AND kind = ? AND client_token = ?",
        )
        .bind(datastore_id)
        .bind(kind.as_str())
        .bind(client_token)
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(from_row))
    }

    /// Jobs of `kind` on `datastore_id`, newest first.
    pub async fn list_jobs(
        &self,
        datastore_id: &str,
        kind: JobKind,
    ) -> Result<Vec<Job>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM jobs WHERE datastore_id = ? AND kind = ? \
             ORDER BY submit_time DESC, job_id",
        )
        .bind(datastore_id)
        .bind(kind.as_str())
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(from_row).collect())
    }

    /// Every job that has not finished (after a restart: the ones to resume or fail).
    pub async fn unfinished_jobs(&self) -> Result<Vec<Job>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT * FROM jobs WHERE status IN ({}) ORDER BY submit_time",
            running_names()
        ))
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(from_row).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NewResource;

    fn job(datastore_id: &str) -> Job {
        Job {
            job_id: uuid::Uuid::new_v4().simple().to_string(),
            datastore_id: datastore_id.into(),
            kind: JobKind::Export,
            status: JobStatus::Submitted,
            submit_time: "2026-01-01T00:00:00.000Z".into(),
            end_time: None,
            client_token: None,
            properties: serde_json::json!({}),
        }
    }

    #[test]
    fn job_statuses_use_healthlake_names_everywhere() {
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::from_name(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(JobStatus::from_name("completed"), None);
        assert_eq!(
            running_names(),
            "'SUBMITTED', 'QUEUED', 'IN_PROGRESS', 'CANCEL_SUBMITTED', 'CANCEL_IN_PROGRESS'"
        );
    }

    /// Job slots are taken while other connections write resources (an export kicked off
    /// during the server's background sync): the slot check and insert must queue for the
    /// write lock, never fail with "database is locked".
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn job_slots_are_taken_while_resources_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).await.unwrap();
        let ds = store.create_datastore("t").await.unwrap();
        let writer = {
            let (store, ds) = (store.clone(), ds.id.clone());
            tokio::spawn(async move {
                for i in 0..300 {
                    let id = format!("p{i}");
                    let json = format!(r#"{{"resourceType":"Patient","id":"{id}"}}"#);
                    store
                        .put_resources(
                            &ds,
                            vec![NewResource {
                                resource_type: "Patient".into(),
                                id,
                                json: Some(json),
                            }],
                        )
                        .await
                        .unwrap();
                }
            })
        };
        let takers: Vec<_> = (0..300)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    // One slot per data store: the first job takes it, a second is refused
                    // with the running job, and neither is an error.
                    let ds = format!("ds{}", i % 100);
                    store.insert_job(&job(&ds)).await
                })
            })
            .collect();
        let mut taken = 0;
        for t in takers {
            match t.await.unwrap() {
                Ok(Ok(())) => taken += 1,
                Ok(Err(running)) => assert!(running.is_running()),
                Err(e) => panic!("taking a job slot failed: {e}"),
            }
        }
        writer.await.unwrap();
        assert_eq!(taken, 100, "exactly one job per data store");
    }
}
