//! Data stores: each is an isolated set of resources, an Iceberg namespace and a SQL schema.

use sqlx::Row;

use super::{Store, StoreError};

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
    pub status: DatastoreStatus,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// The data store commands use when none is named.
    pub is_default: bool,
}

/// Data store names double as SQL schema and Iceberg namespace names, so they are plain
/// lower-case identifiers.
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let ok = (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name != "database";
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidDatastoreName(name.to_string()))
    }
}

fn from_row(row: &sqlx::sqlite::SqliteRow) -> Datastore {
    Datastore {
        id: row.get("id"),
        name: row.get("name"),
        status: DatastoreStatus::parse(row.get::<&str, _>("status")),
        created_at: row.get("created_at"),
        is_default: row.get::<i64, _>("is_default") != 0,
    }
}

impl Store {
    /// Creates an ACTIVE data store named `name`; the first one created becomes the default.
    pub async fn create_datastore(&self, name: &str) -> Result<Datastore, StoreError> {
        validate_name(name)?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let created_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut tx = self.pool().begin().await?;
        let has_default: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM datastores WHERE is_default = 1")
                .fetch_optional(&mut *tx)
                .await?;
        sqlx::query(
            "INSERT INTO datastores (id, name, status, created_at, is_default) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(name)
        .bind(DatastoreStatus::Active.as_str())
        .bind(&created_at)
        .bind(has_default.is_none() as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.datastore(name).await
    }

    /// The data store whose name or id is `name_or_id`.
    pub async fn datastore(&self, name_or_id: &str) -> Result<Datastore, StoreError> {
        let row = sqlx::query("SELECT * FROM datastores WHERE name = ? OR id = ?")
            .bind(name_or_id)
            .bind(name_or_id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref()
            .map(from_row)
            .ok_or_else(|| StoreError::NoSuchDatastore(name_or_id.to_string()))
    }

    /// The default data store, if any exists.
    pub async fn default_datastore(&self) -> Result<Option<Datastore>, StoreError> {
        let row = sqlx::query("SELECT * FROM datastores WHERE is_default = 1")
            .fetch_optional(self.pool())
            .await?;
        Ok(row.as_ref().map(from_row))
    }

    /// All data stores, oldest first.
    pub async fn list_datastores(&self) -> Result<Vec<Datastore>, StoreError> {
        let rows = sqlx::query("SELECT * FROM datastores ORDER BY created_at, name")
            .fetch_all(self.pool())
            .await?;
        Ok(rows.iter().map(from_row).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sql_identifiers() {
        assert!(validate_name("fhir").is_ok());
        assert!(validate_name("store_2").is_ok());
        for bad in ["", "2x", "Fhir", "a-b", "database", &"a".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad} should be refused");
        }
    }
}
