//! Versioned resource writes and the change feed the lake committer reads.

use serde_json::value::RawValue;
use sqlx::Row;

use super::codec::decompress;
use super::writes::{ConditionalWrite, ConditionalWriteError, WriteRequest};
use super::{Store, StoreError};

/// One write to apply: a resource body (already validated) or a deletion.
#[derive(Debug, Clone)]
pub struct NewResource {
    pub resource_type: String,
    pub id: String,
    /// The resource JSON text; `None` deletes the resource.
    pub json: Option<String>,
}

/// What a write produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenVersion {
    pub resource_type: String,
    pub id: String,
    pub version: i64,
    /// FHIR instant, e.g. `2026-11-27T23:10:00.123Z`.
    pub last_updated: String,
    /// Change sequence number of this version.
    pub seq: i64,
}

/// One entry of the change feed.
#[derive(Debug, Clone)]
pub struct Change {
    pub seq: i64,
    pub id: String,
    pub version: i64,
    pub last_updated: String,
    /// Stored JSON (with `meta.versionId`/`meta.lastUpdated` set), `None` for a deletion.
    pub json: Option<String>,
}

impl Store {
    /// Applies `items` atomically: each becomes a new version (1 for a new id, previous + 1
    /// otherwise) with `meta.versionId` and `meta.lastUpdated` stamped into the stored JSON.
    /// Items are applied in order, so the same id twice yields two versions; deleting what
    /// is absent or already deleted writes nothing.
    pub async fn put_resources(
        &self,
        datastore_id: &str,
        items: Vec<NewResource>,
    ) -> Result<Vec<WrittenVersion>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let writes = items
            .into_iter()
            .map(|resource| ConditionalWrite {
                resource,
                expected_version: None,
            })
            .collect();
        let applied = self
            .write(WriteRequest {
                datastore_id: datastore_id.to_string(),
                writes,
            })
            .await
            .map_err(|e| match e {
                ConditionalWriteError::Store(e) => e,
                ConditionalWriteError::Conflict(_) => unreachable!("no write had a condition"),
            })?;
        Ok(applied.into_iter().filter_map(|a| a.written).collect())
    }

    /// Changes of one resource type after `after_seq`, oldest first, at most `limit`.
    pub async fn changes(
        &self,
        datastore_id: &str,
        resource_type: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<Change>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, id, version, last_updated, json_zstd FROM resource_versions \
             WHERE datastore_id = ? AND resource_type = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(datastore_id)
        .bind(resource_type)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|row| {
                let id: String = row.get(1);
                let json = match row.get::<Option<Vec<u8>>, _>(4) {
                    Some(blob) => Some(decompress(&blob).map_err(|e| StoreError::CorruptBlob {
                        resource_type: resource_type.to_string(),
                        id: id.clone(),
                        message: e.to_string(),
                    })?),
                    None => None,
                };
                Ok(Change {
                    seq: row.get(0),
                    id,
                    version: row.get(2),
                    last_updated: row.get(3),
                    json,
                })
            })
            .collect()
    }

    /// Resource types with changes after the per-type lake watermark, with their latest seq.
    pub async fn pending_types(
        &self,
        datastore_id: &str,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        // Skip-scan the (datastore_id, resource_type, seq) index: one seek per type instead
        // of a scan over every version (the background sync calls this every interval).
        let rows = sqlx::query(
            "WITH RECURSIVE types(t) AS ( \
               SELECT MIN(resource_type) FROM resource_versions WHERE datastore_id = ?1 \
               UNION ALL \
               SELECT (SELECT MIN(resource_type) FROM resource_versions \
                       WHERE datastore_id = ?1 AND resource_type > t) FROM types WHERE t IS NOT NULL) \
             SELECT t, \
               (SELECT MAX(seq) FROM resource_versions WHERE datastore_id = ?1 AND resource_type = t), \
               COALESCE((SELECT applied_seq FROM lake_state WHERE datastore_id = ?1 AND resource_type = t), 0) \
             FROM types WHERE t IS NOT NULL",
        )
        .bind(datastore_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    r.get::<String, _>(0),
                    r.get::<i64, _>(1),
                    r.get::<i64, _>(2),
                )
            })
            .filter(|(_, latest, applied)| latest > applied)
            .map(|(t, latest, _)| (t, latest))
            .collect())
    }

    /// Current version count per resource type (deleted resources excluded).
    pub async fn current_counts(
        &self,
        datastore_id: &str,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT resource_type, COUNT(*) FROM resources_current \
             WHERE datastore_id = ? AND deleted = 0 GROUP BY resource_type ORDER BY resource_type",
        )
        .bind(datastore_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
            .collect())
    }
}

/// Sets `meta.versionId` and `meta.lastUpdated` in a resource's JSON text.
///
/// Only `meta` is re-serialized; every other top-level value is copied byte for byte, so
/// decimals keep their exact text (`1.50` stays `1.50`).
pub(crate) fn stamp_meta(
    json: &str,
    version: i64,
    last_updated: &str,
) -> Result<String, serde_json::Error> {
    let top: Vec<(String, &RawValue)> = parse_top_level(json)?;
    let mut out = String::with_capacity(json.len() + 64);
    out.push('{');
    let mut wrote_meta = false;
    let mut first = true;
    let push_meta =
        |out: &mut String, existing: Option<&RawValue>| -> Result<(), serde_json::Error> {
            let mut meta: serde_json::Map<String, serde_json::Value> = match existing {
                Some(raw) => serde_json::from_str(raw.get())?,
                None => serde_json::Map::new(),
            };
            meta.insert("versionId".into(), version.to_string().into());
            meta.insert("lastUpdated".into(), last_updated.into());
            out.push_str("\"meta\":");
            out.push_str(&serde_json::to_string(&meta)?);
            Ok(())
        };
    for (key, value) in &top {
        if !first {
            out.push(',');
        }
        first = false;
        if key == "meta" {
            push_meta(&mut out, Some(value))?;
            wrote_meta = true;
        } else {
            out.push_str(&serde_json::to_string(key)?);
            out.push(':');
            out.push_str(value.get());
            // FHIR JSON puts meta right after id; keep that order when adding it.
            if key == "id" && !top.iter().any(|(k, _)| k == "meta") {
                out.push(',');
                push_meta(&mut out, None)?;
                wrote_meta = true;
            }
        }
    }
    if !wrote_meta {
        if !first {
            out.push(',');
        }
        push_meta(&mut out, None)?;
    }
    out.push('}');
    Ok(out)
}

/// The top-level members of a JSON object, values unparsed, in document order.
fn parse_top_level(json: &str) -> Result<Vec<(String, &RawValue)>, serde_json::Error> {
    use serde::de::{Deserializer, MapAccess, Visitor};
    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = Vec<(String, &'de RawValue)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((k, v)) = map.next_entry::<String, &'de RawValue>()? {
                out.push((k, v));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(json);
    let members = (&mut de).deserialize_map(Members)?;
    de.end()?;
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_keeps_decimals_and_order() {
        let out = stamp_meta(
            r#"{"resourceType":"Observation","id":"o1","valueQuantity":{"value":1.50}}"#,
            3,
            "2026-01-01T00:00:00.000Z",
        )
        .unwrap();
        assert_eq!(
            out,
            r#"{"resourceType":"Observation","id":"o1","meta":{"versionId":"3","lastUpdated":"2026-01-01T00:00:00.000Z"},"valueQuantity":{"value":1.50}}"#
        );
    }

    #[test]
    fn stamp_replaces_existing_meta_fields() {
        let out = stamp_meta(
            r#"{"resourceType":"Patient","meta":{"versionId":"9","profile":["p"]},"id":"x"}"#,
            1,
            "t",
        )
        .unwrap();
        assert_eq!(
            out,
            r#"{"resourceType":"Patient","meta":{"versionId":"1","profile":["p"],"lastUpdated":"t"},"id":"x"}"#
        );
    }

    #[tokio::test]
    async fn versions_increase_and_feed_is_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).await.unwrap();
        let ds = store.create_datastore("t").await.unwrap();
        let put = |id: &str, body: Option<&str>| NewResource {
            resource_type: "Patient".into(),
            id: id.into(),
            json: body.map(String::from),
        };
        let w = store
            .put_resources(
                &ds.id,
                vec![
                    put("a", Some(r#"{"resourceType":"Patient","id":"a"}"#)),
                    put(
                        "a",
                        Some(r#"{"resourceType":"Patient","id":"a","gender":"male"}"#),
                    ),
                ],
            )
            .await
            .unwrap();
        assert_eq!(w.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 2]);
        let w = store
            .put_resources(&ds.id, vec![put("a", None)])
            .await
            .unwrap();
        assert_eq!(w[0].version, 3);
        let changes = store.changes(&ds.id, "Patient", 0, 100).await.unwrap();
        assert_eq!(changes.len(), 3);
        assert!(changes.windows(2).all(|p| p[0].seq < p[1].seq));
        assert!(changes[2].json.is_none());
        assert!(
            changes[1]
                .json
                .as_deref()
                .unwrap()
                .contains(r#""versionId":"2""#)
        );
        assert!(store.current_counts(&ds.id).await.unwrap().is_empty());
    }
}
