//! An in-memory cache of decompressed resource versions.
//!
//! A version, once written, never changes, so `(data store, type, id, version)` identifies
//! its content for ever and a cached copy can never be stale. Searches read the same hot
//! versions over and over (a page, its includes); serving them from memory skips a SQLite
//! round trip per row and a zstd decompression per resource.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::reads::StoredVersion;

/// Key of one version: data store, resource type, id, version.
type Key = (Arc<str>, Arc<str>, String, i64);

/// Bytes of JSON the cache holds at most; the oldest entries leave first.
const BUDGET_BYTES: usize = 256 << 20;

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Key, Arc<StoredVersion>>,
    /// Insertion order, for eviction.
    order: VecDeque<Key>,
    bytes: usize,
}

/// Cache shared by every clone of a [`super::Store`].
#[derive(Debug, Clone, Default)]
pub(crate) struct VersionCache {
    inner: Arc<Mutex<Inner>>,
}

fn size(v: &StoredVersion) -> usize {
    v.json.as_ref().map_or(0, String::len) + v.id.len() + 64
}

impl VersionCache {
    /// The cached versions among `keys`, by position in `keys`.
    pub(crate) fn get_many(
        &self,
        datastore_id: &str,
        resource_type: &str,
        keys: &[(String, i64)],
    ) -> Vec<Option<Arc<StoredVersion>>> {
        let inner = self.inner.lock().expect("version cache lock");
        if inner.map.is_empty() {
            return vec![None; keys.len()];
        }
        let ds: Arc<str> = datastore_id.into();
        let ty: Arc<str> = resource_type.into();
        keys.iter()
            .map(|(id, version)| {
                inner
                    .map
                    .get(&(ds.clone(), ty.clone(), id.clone(), *version))
                    .cloned()
            })
            .collect()
    }

    /// Forgets everything (a purged data store's ids may be reused by a new one).
    pub(crate) fn clear(&self) {
        let mut inner = self.inner.lock().expect("version cache lock");
        *inner = Inner::default();
    }

    /// Remembers `versions` (all of one data store and type).
    pub(crate) fn insert_many(&self, datastore_id: &str, versions: &[Arc<StoredVersion>]) {
        if versions.is_empty() {
            return;
        }
        let ds: Arc<str> = datastore_id.into();
        let mut types: HashMap<&str, Arc<str>> = HashMap::new();
        let mut inner = self.inner.lock().expect("version cache lock");
        for v in versions {
            let ty = types
                .entry(v.resource_type.as_str())
                .or_insert_with(|| v.resource_type.as_str().into())
                .clone();
            let key = (ds.clone(), ty, v.id.clone(), v.version);
            if inner.map.contains_key(&key) {
                continue;
            }
            inner.bytes += size(v);
            inner.order.push_back(key.clone());
            inner.map.insert(key, v.clone());
        }
        while inner.bytes > BUDGET_BYTES {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(v) = inner.map.remove(&old) {
                inner.bytes -= size(&v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(id: &str, version: i64, json: &str) -> Arc<StoredVersion> {
        Arc::new(StoredVersion {
            resource_type: "Patient".into(),
            id: id.into(),
            version,
            last_updated: "2026-01-01T00:00:00.000Z".into(),
            deleted: false,
            json: Some(json.into()),
            seq: version,
        })
    }

    #[test]
    fn finds_what_was_inserted_per_data_store_and_version() {
        let cache = VersionCache::default();
        cache.insert_many(
            "ds1",
            &[version("a", 1, "{}"), version("a", 2, "{\"x\":1}")],
        );
        let got = cache.get_many(
            "ds1",
            "Patient",
            &[("a".into(), 2), ("a".into(), 3), ("b".into(), 1)],
        );
        assert_eq!(got[0].as_ref().unwrap().json.as_deref(), Some("{\"x\":1}"));
        assert!(got[1].is_none() && got[2].is_none());
        assert!(cache.get_many("ds2", "Patient", &[("a".into(), 1)])[0].is_none());
        assert!(cache.get_many("ds1", "Observation", &[("a".into(), 1)])[0].is_none());
    }

    #[test]
    fn evicts_oldest_beyond_the_budget() {
        let cache = VersionCache::default();
        let big = "x".repeat(BUDGET_BYTES / 3);
        for i in 0..4 {
            cache.insert_many("ds", &[version(&format!("r{i}"), 1, &big)]);
        }
        let got = cache.get_many(
            "ds",
            "Patient",
            &(0..4).map(|i| (format!("r{i}"), 1)).collect::<Vec<_>>(),
        );
        assert!(got[0].is_none(), "the oldest entry is evicted");
        assert!(got[3].is_some(), "the newest entry stays");
        let inner = cache.inner.lock().unwrap();
        assert!(inner.bytes <= BUDGET_BYTES);
        assert_eq!(inner.map.len(), inner.order.len());
    }
}
