//! Data stores: each is an isolated set of resources, an Iceberg namespace and a SQL schema.

use sqlx::Row;

use super::{Store, StoreError, begin_immediate};

/// Life-cycle status of a data store (HealthLake's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatastoreStatus {
    Creating,
    Active,
    Deleting,
    Deleted,
}

impl DatastoreStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "CREATING",
            Self::Active => "ACTIVE",
            Self::Deleting => "DELETING",
            Self::Deleted => "DELETED",
        }
    }

    /// True when the data store's FHIR endpoint and tables are in use.
    pub fn is_served(self) -> bool {
        self == Self::Active
    }

    /// The status named by `s` (HealthLake's spelling), if any.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "CREATING" => Some(Self::Creating),
            "ACTIVE" => Some(Self::Active),
            "DELETING" => Some(Self::Deleting),
            "DELETED" => Some(Self::Deleted),
            _ => None,
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "CREATING" => Self::Creating,
            "DELETING" => Self::Deleting,
            "DELETED" => Self::Deleted,
            _ => Self::Active,
        }
    }
}

/// One data store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datastore {
    /// 32 lower-case hex characters, as HealthLake's data store ids.
    pub id: String,
    /// Unique name; also the Iceberg namespace and the SQL schema.
    pub name: String,
    /// The name a control-plane user gave it (HealthLake's DatastoreName, e.g. `bar-store`),
    /// from which `name` was derived; `None` for data stores the CLI created by SQL name.
    pub display_name: Option<String>,
    pub status: DatastoreStatus,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// The data store commands use when none is named.
    pub is_default: bool,
}

/// Data store names double as SQL schema and Iceberg namespace names, so they are plain
/// lower-case identifiers. `database` is the SQL alias of the current data store and
/// `fhirlake_audit` the SQL schema of the server's audit log.
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let ok = (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !matches!(name, "database" | "fhirlake_audit");
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidDatastoreName(name.to_string()))
    }
}

/// Data store rows with their display names, for [`from_row`].
const SELECT_DATASTORES: &str = "SELECT d.*, json_extract(p.properties, '$.DatastoreName') \
     AS display_name FROM datastores d LEFT JOIN datastore_properties p ON p.id = d.id";

fn from_row(row: &sqlx::sqlite::SqliteRow) -> Datastore {
    Datastore {
        id: row.get("id"),
        name: row.get("name"),
        display_name: row.get("display_name"),
        status: DatastoreStatus::parse(row.get::<&str, _>("status")),
        created_at: row.get("created_at"),
        is_default: row.get::<i64, _>("is_default") != 0,
    }
}

impl Store {
    /// Creates an ACTIVE data store named `name`; the first one created becomes the default.
    pub async fn create_datastore(&self, name: &str) -> Result<Datastore, StoreError> {
        validate_name(name)?;
        let row = NewDatastore::new(name, DatastoreStatus::Active);
        let id = row.id.clone();
        self.exclusive(move |conn| {
            Box::pin(async move {
                let mut tx = begin_immediate(conn).await?;
                let has_default: Option<i64> =
                    sqlx::query_scalar("SELECT 1 FROM datastores WHERE is_default = 1")
                        .fetch_optional(&mut *tx)
                        .await?;
                row.insert(&mut tx, has_default.is_none()).await?;
                tx.commit().await?;
                Ok(())
            })
        })
        .await?;
        self.datastore(&id).await
    }

    /// Creates data store `name` with `status` and the control plane's `properties` in one
    /// transaction. Never the default (the CLI's first data store is).
    pub async fn create_datastore_with(
        &self,
        name: &str,
        status: DatastoreStatus,
        properties: &serde_json::Value,
    ) -> Result<Datastore, StoreError> {
        validate_name(name)?;
        let row = NewDatastore::new(name, status);
        let id = row.id.clone();
        let properties = properties.to_string();
        self.exclusive(move |conn| {
            Box::pin(async move {
                let mut tx = begin_immediate(conn).await?;
                let taken: Option<i64> =
                    sqlx::query_scalar("SELECT 1 FROM datastores WHERE name = ?")
                        .bind(&row.name)
                        .fetch_optional(&mut *tx)
                        .await?;
                if taken.is_some() {
                    return Err(StoreError::DuplicateDatastore(row.name));
                }
                row.insert(&mut tx, false).await?;
                sqlx::query("INSERT INTO datastore_properties (id, properties) VALUES (?, ?)")
                    .bind(&row.id)
                    .bind(properties)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            })
        })
        .await?;
        self.datastore(&id).await
    }

    /// The control plane's properties of data store `id` (`{}` for data stores made by the
    /// CLI before the control plane existed).
    pub async fn datastore_properties(&self, id: &str) -> Result<serde_json::Value, StoreError> {
        let text: Option<String> =
            sqlx::query_scalar("SELECT properties FROM datastore_properties WHERE id = ?")
                .bind(id)
                .fetch_optional(self.pool())
                .await?;
        Ok(text
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| serde_json::json!({})))
    }

    pub async fn set_datastore_properties(
        &self,
        id: &str,
        properties: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let (id, properties) = (id.to_string(), properties.to_string());
        self.exclusive(move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO datastore_properties (id, properties) VALUES (?, ?) \
                     ON CONFLICT (id) DO UPDATE SET properties = excluded.properties",
                )
                .bind(id)
                .bind(properties)
                .execute(conn)
                .await?;
                Ok(())
            })
        })
        .await
    }

    pub async fn set_datastore_status(
        &self,
        id: &str,
        status: DatastoreStatus,
    ) -> Result<(), StoreError> {
        let id = id.to_string();
        self.exclusive(move |conn| {
            Box::pin(async move {
                sqlx::query("UPDATE datastores SET status = ? WHERE id = ?")
                    .bind(status.as_str())
                    .bind(id)
                    .execute(conn)
                    .await?;
                Ok(())
            })
        })
        .await
    }

    /// The data store created with this client token, if any (idempotent creates).
    pub async fn datastore_by_client_token(
        &self,
        token: &str,
    ) -> Result<Option<Datastore>, StoreError> {
        let id: Option<String> = sqlx::query_scalar(
            "SELECT id FROM datastore_properties WHERE json_extract(properties, '$.ClientToken') = ?",
        )
        .bind(token)
        .fetch_optional(self.pool())
        .await?;
        match id {
            Some(id) => Ok(Some(self.datastore(&id).await?)),
            None => Ok(None),
        }
    }

    /// Removes every resource version and lake bookkeeping row of data store `id`, in
    /// batches so other writers are not locked out for long. The data store row stays (a
    /// deleted data store remains describable).
    pub async fn purge_datastore(&self, id: &str) -> Result<u64, StoreError> {
        let mut removed = 0;
        // resource_versions is the big one: delete it in batches of rowids, each its own
        // writer job, so resource writes to other data stores interleave.
        loop {
            let done = self
                .delete_rows(
                    "DELETE FROM resource_versions WHERE seq IN \
                     (SELECT seq FROM resource_versions WHERE datastore_id = ? LIMIT 20000)",
                    id,
                )
                .await?;
            removed += done;
            if done < 20000 {
                break;
            }
        }
        for table in ["resources_current", "lake_rows", "lake_files", "lake_state"] {
            removed += self
                .delete_rows(&format!("DELETE FROM {table} WHERE datastore_id = ?"), id)
                .await?;
        }
        self.versions.clear();
        Ok(removed)
    }

    /// Runs one `DELETE` bound to a data store id on the writer; returns the rows removed.
    async fn delete_rows(&self, statement: &str, id: &str) -> Result<u64, StoreError> {
        let (statement, id) = (statement.to_string(), id.to_string());
        self.exclusive(move |conn| {
            Box::pin(async move {
                Ok(sqlx::query(&statement)
                    .bind(id)
                    .execute(conn)
                    .await?
                    .rows_affected())
            })
        })
        .await
    }

    /// The data store a user means by `reference`: its id, its SQL name, or the name it was
    /// created with (HealthLake's DatastoreName, e.g. `bar-store` for SQL name `bar_store`).
    /// The one resolver of data store references: every command and front end goes through
    /// it. A DatastoreName shared by several data stores is refused as ambiguous.
    pub async fn datastore(&self, reference: &str) -> Result<Datastore, StoreError> {
        let exact = sqlx::query(&format!(
            "{SELECT_DATASTORES} WHERE d.id = ?1 OR d.name = ?1"
        ))
        .bind(reference)
        .fetch_optional(self.pool())
        .await?;
        if let Some(row) = exact {
            return Ok(from_row(&row));
        }
        let rows = sqlx::query(&format!(
            "{SELECT_DATASTORES} WHERE json_extract(p.properties, '$.DatastoreName') = ? \
             AND d.status <> 'DELETED' ORDER BY d.created_at"
        ))
        .bind(reference)
        .fetch_all(self.pool())
        .await?;
        match rows.as_slice() {
            [] => Err(StoreError::NoSuchDatastore(reference.to_string())),
            [row] => Ok(from_row(row)),
            many => Err(StoreError::AmbiguousDatastore {
                name: reference.to_string(),
                ids: many.iter().map(|r| r.get("id")).collect(),
            }),
        }
    }

    /// The default data store, if any exists.
    pub async fn default_datastore(&self) -> Result<Option<Datastore>, StoreError> {
        let row = sqlx::query(&format!("{SELECT_DATASTORES} WHERE d.is_default = 1"))
            .fetch_optional(self.pool())
            .await?;
        Ok(row.as_ref().map(from_row))
    }

    /// All data stores, oldest first.
    pub async fn list_datastores(&self) -> Result<Vec<Datastore>, StoreError> {
        let rows = sqlx::query(&format!(
            "{SELECT_DATASTORES} ORDER BY d.created_at, d.name"
        ))
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(from_row).collect())
    }
}

/// A data store row about to be inserted.
struct NewDatastore {
    id: String,
    name: String,
    status: DatastoreStatus,
    created_at: String,
}

impl NewDatastore {
    fn new(name: &str, status: DatastoreStatus) -> Self {
        Self {
            id: uuid::Uuid::new_v4().simple().to_string(),
            name: name.to_string(),
            status,
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }

    async fn insert(
        &self,
        conn: &mut sqlx::SqliteConnection,
        is_default: bool,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO datastores (id, name, status, created_at, is_default) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&self.id)
        .bind(&self.name)
        .bind(self.status.as_str())
        .bind(&self.created_at)
        .bind(is_default as i64)
        .execute(conn)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sql_identifiers() {
        assert!(validate_name("fhir").is_ok());
        assert!(validate_name("store_2").is_ok());
        for bad in [
            "",
            "2x",
            "Fhir",
            "a-b",
            "database",
            "fhirlake_audit",
            &"a".repeat(64),
        ] {
            assert!(validate_name(bad).is_err(), "{bad} should be refused");
        }
    }
}
