//! Running a parsed search against one Iceberg snapshot of the lake.
//!
//! The lake answers *which* resources match (and in which order): the filters are evaluated
//! on batches holding only the Parquet leaves they read, plus `id` and `_version_id`
//! ([`LeafScanner`], which caches each snapshot's file list and each file's footer). The resources themselves come from the store by `(id, version)`, so a page
//! shows exactly the versions that matched in that snapshot. The paging cursor names the
//! snapshot, so later pages do not shift under concurrent writes.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use serde_json::Value;

use super::catalog::{ParamType, Path, SearchParam, Step};
use super::compartment::PatientCompartment;
use super::eval::{Criterion, KeyColumn, SortKeySpec, SortKind, Test, flatten};
use super::query::{
    Filter, Include, MAX_CHAIN_MATCHES, SearchError, SearchRequest, Summary, Total,
};
use super::value;
use fhirlake_lake::Lake;
use fhirlake_lake::scan::{LeafScanner, Probe, SnapshotFiles};
use fhirlake_schema::{ID_COLUMN, VERSION_COLUMN};
use fhirlake_store::reads::StoredVersion;
use fhirlake_store::{Store, StoreError};

/// Failures while running a search.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Search(#[from] SearchError),
    #[error("lake: {0}")]
    Lake(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<datafusion::error::DataFusionError> for ExecError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        ExecError::Lake(e.to_string())
    }
}

impl From<fhirlake_lake::LakeError> for ExecError {
    fn from(e: fhirlake_lake::LakeError) -> Self {
        ExecError::Lake(e.to_string())
    }
}

/// How included resources are limited per page.
pub const MAX_INCLUDES: usize = 1000;

/// A searchset page.
#[derive(Debug, Clone)]
pub struct SearchPage {
    pub matches: Vec<StoredVersion>,
    pub included: Vec<StoredVersion>,
    pub total: Option<usize>,
    /// Cursor of this page, the next one and the previous one.
    pub this_cursor: String,
    pub next_cursor: Option<String>,
    pub previous_cursor: Option<String>,
}

/// Searches one data store.
#[derive(Clone)]
pub struct Searcher {
    store: Store,
    lake: Lake,
    datastore_id: String,
    datastore_name: String,
    scanner: LeafScanner,
    indexes: Arc<Mutex<IndexCache>>,
    lists: Arc<Mutex<MatchLists>>,
}

/// The sorted match lists of recent searches, keyed by type, snapshot and filters+sort.
///
/// A snapshot never changes, so a list stays valid for as long as its snapshot exists: the
/// pages of one search (and repeats of it) are cut from one evaluation instead of re-scanning
/// and re-sorting every match for every page, which made deep pages cost as much as the
/// whole result.
#[derive(Default)]
struct MatchLists {
    /// Most recently used last.
    entries: Vec<(String, MatchList)>,
    ids: usize,
}

/// One search's matches in result order: (resource id, sort position).
type MatchList = Arc<Vec<(String, i64)>>;

/// How many lists, and how many ids in all, the cache keeps.
const MAX_LISTS: usize = 64;
const MAX_LISTED_IDS: usize = 2_000_000;

impl MatchLists {
    fn get(&mut self, key: &str) -> Option<MatchList> {
        let at = self.entries.iter().position(|(k, _)| k == key)?;
        let entry = self.entries.remove(at);
        let list = entry.1.clone();
        self.entries.push(entry);
        Some(list)
    }

    fn insert(&mut self, key: String, list: MatchList) {
        if list.len() > MAX_LISTED_IDS / 4 {
            return;
        }
        self.ids += list.len();
        self.entries.push((key, list));
        while self.entries.len() > MAX_LISTS || self.ids > MAX_LISTED_IDS {
            let (_, old) = self.entries.remove(0);
            self.ids -= old.len();
        }
    }
}

/// Value -> `(batch, row)` positions of one leaf in one file (with its deletes).
type ValueIndex = HashMap<String, Vec<(u32, u32)>>;
type IndexCache = HashMap<String, Arc<ValueIndex>>;

/// Most cached value indexes (one per file and indexed path); cleared when full.
const MAX_INDEXES: usize = 8192;

/// An equality lookup that narrows a scan to candidate rows: the values of one leaf path
/// (normalized) that a criterion needs. The criterion itself is still evaluated on the
/// candidates, so the lookup only has to find a superset of the matches.
struct ProbeSpec {
    column: String,
    steps: Vec<Step>,
    references: bool,
    keys: Vec<String>,
}

impl ProbeSpec {
    fn id(&self) -> String {
        format!("{}{:?}{}", self.column, self.steps, self.references)
    }

    /// The first filter that is an equality lookup on one path.
    fn choose(ready: &[Ready]) -> Option<ProbeSpec> {
        for r in ready {
            if let Ready::Ids(ids) = r {
                return Some(ProbeSpec {
                    column: ID_COLUMN.to_string(),
                    steps: Vec::new(),
                    references: false,
                    keys: ids.iter().cloned().collect(),
                });
            }
        }
        ready.iter().find_map(|r| {
            let Ready::Criterion(Criterion::Paths {
                paths,
                test,
                negate: false,
            }) = r
            else {
                return None;
            };
            let [path] = paths.as_slice() else {
                return None;
            };
            let column = path.column.clone()?;
            let mut steps = path.steps.clone();
            let field = |name: &str| Step::Field(name.to_string());
            match test {
                Test::Reference(keys) if path.fhir == "Reference" => {
                    let keys: Option<Vec<String>> = keys
                        .iter()
                        .map(|(t, id)| t.as_ref().map(|t| format!("{t}/{id}")))
                        .collect();
                    steps.push(field("reference"));
                    Some(ProbeSpec {
                        column,
                        steps,
                        references: true,
                        keys: keys?,
                    })
                }
                Test::Token(tokens) => {
                    let keys: Option<Vec<String>> = tokens.iter().map(|t| t.code.clone()).collect();
                    match path.fhir.as_str() {
                        "CodeableConcept" => steps.extend([field("coding"), field("code")]),
                        "Coding" => steps.push(field("code")),
                        "Identifier" => steps.push(field("value")),
                        "code" | "string" | "id" | "uri" => {}
                        _ => return None,
                    }
                    Some(ProbeSpec {
                        column,
                        steps,
                        references: false,
                        keys: keys?,
                    })
                }
                _ => None,
            }
        })
    }

    /// Builds the value index of one file's probe column.
    fn index(&self, batches: &[RecordBatch]) -> Result<ValueIndex, ExecError> {
        let mut index: ValueIndex = HashMap::new();
        for (b, batch) in batches.iter().enumerate() {
            let column = batch.column(0);
            let (leaf, owners) = flatten(column, &self.steps, (0..batch.num_rows()).collect());
            let Ok(strings) = arrow::compute::cast(&leaf, &arrow::datatypes::DataType::Utf8) else {
                continue;
            };
            let strings = strings.as_string::<i32>();
            for (i, owner) in owners.iter().enumerate() {
                if *owner == usize::MAX || !strings.is_valid(i) {
                    continue;
                }
                let value = strings.value(i);
                let key = if self.references {
                    match value::reference_key(value) {
                        Some((t, id)) => format!("{t}/{id}"),
                        None => continue,
                    }
                } else {
                    value.to_string()
                };
                let rows = index.entry(key).or_default();
                let at = (b as u32, *owner as u32);
                if rows.last() != Some(&at) {
                    rows.push(at);
                }
            }
        }
        Ok(index)
    }
}

/// A filter ready to evaluate on a batch (chains and `_has` already resolved).
enum Ready {
    Criterion(Criterion),
    Ids(HashSet<String>),
}

/// A matching row.
struct Matched {
    id: String,
    version: i64,
    keys: Vec<(SortValue, bool)>,
}

#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum SortValue {
    Int(i64),
    Float(f64),
    Text(String),
    Null,
}

impl Searcher {
    pub fn new(store: Store, lake: Lake, datastore_id: &str, datastore_name: &str) -> Self {
        Self {
            store,
            lake,
            datastore_id: datastore_id.to_string(),
            datastore_name: datastore_name.to_string(),
            scanner: LeafScanner::default(),
            indexes: Default::default(),
            lists: Default::default(),
        }
    }

    /// Runs `req` and returns one page.
    pub async fn search(&self, req: &SearchRequest) -> Result<SearchPage, ExecError> {
        let confined;
        let req = match &req.patients {
            None => req,
            Some(_) => {
                confined = SearchRequest {
                    filters: confined_filters(req),
                    ..req.clone()
                };
                &confined
            }
        };
        let (snapshot, offset) = match &req.cursor {
            Some(c) => parse_cursor(c)?,
            None => (None, 0),
        };
        let sort: Vec<SortKeySpec> = req
            .sort
            .iter()
            .map(|k| sort_spec(&k.param, k.descending))
            .collect();
        let Some((table, snapshot)) = self.snapshot(req.resource_type, snapshot).await? else {
            return Ok(SearchPage {
                matches: Vec::new(),
                included: Vec::new(),
                total: (req.total == Total::Accurate || req.summary == Summary::Count).then_some(0),
                this_cursor: cursor(0, 0),
                next_cursor: None,
                previous_cursor: None,
            });
        };
        // Chains and `_has` read other types at their current snapshots, which the key does
        // not pin, so only self-contained searches are cached.
        let cacheable = req
            .filters
            .iter()
            .all(|f| matches!(f, Filter::Criterion(_) | Filter::Ids(_)));
        let key = format!("{}@{snapshot}{:?}{sort:?}", req.resource_type, req.filters);
        let cached = if cacheable {
            self.lists.lock().expect("match list lock").get(&key)
        } else {
            None
        };
        let matched = match cached {
            Some(list) => list,
            None => {
                let list: MatchList = Arc::new(
                    self.run_at(&table, snapshot, req.resource_type, &req.filters, &sort)
                        .await?
                        .into_iter()
                        .map(|m| (m.id, m.version))
                        .collect(),
                );
                if cacheable {
                    self.lists
                        .lock()
                        .expect("match list lock")
                        .insert(key, list.clone());
                }
                list
            }
        };
        let total = (req.total == Total::Accurate || req.summary == Summary::Count)
            .then_some(matched.len());
        if req.summary == Summary::Count {
            return Ok(SearchPage {
                matches: Vec::new(),
                included: Vec::new(),
                total,
                this_cursor: cursor(snapshot, 0),
                next_cursor: None,
                previous_cursor: None,
            });
        }
        let end = (offset + req.count).min(matched.len());
        let keys: Vec<(String, i64)> = matched.get(offset..end).unwrap_or_default().to_vec();
        let more = matched.len() > offset + req.count;
        let matches = self.load(req.resource_type, &keys).await?;
        let included = self.includes(req, &matches).await?;
        Ok(SearchPage {
            matches,
            included,
            total,
            this_cursor: cursor(snapshot, offset),
            next_cursor: more.then(|| cursor(snapshot, offset + req.count)),
            previous_cursor: (offset > 0)
                .then(|| cursor(snapshot, offset.saturating_sub(req.count))),
        })
    }

    /// The ids and versions matching `filters` in the current snapshot, at most `limit`.
    pub async fn matching_ids(
        &self,
        resource_type: &str,
        filters: &[Filter],
        limit: usize,
    ) -> Result<Vec<(String, i64)>, ExecError> {
        let Some((matched, _)) = self.run(resource_type, None, filters, &[]).await? else {
            return Ok(Vec::new());
        };
        Ok(matched
            .into_iter()
            .take(limit)
            .map(|m| (m.id, m.version))
            .collect())
    }

    /// Every row of the snapshot matching `filters`, sorted by `sort` then id; `None` before
    /// the type has data.
    async fn run(
        &self,
        resource_type: &str,
        snapshot: Option<i64>,
        filters: &[Filter],
        sort: &[SortKeySpec],
    ) -> Result<Option<(Vec<Matched>, i64)>, ExecError> {
        let Some((table, snapshot)) = self.snapshot(resource_type, snapshot).await? else {
            return Ok(None);
        };
        let matched = self
            .run_at(&table, snapshot, resource_type, filters, sort)
            .await?;
        Ok(Some((matched, snapshot)))
    }

    /// The table of `resource_type` and the snapshot to search: `requested` (from a cursor),
    /// which must still exist, or the current one. `None` before the type has data.
    async fn snapshot(
        &self,
        resource_type: &str,
        requested: Option<i64>,
    ) -> Result<Option<(iceberg::table::Table, i64)>, ExecError> {
        let Some(table) = self.lake.table(&self.datastore_name, resource_type).await? else {
            return Ok(None);
        };
        let snapshot = match requested {
            Some(s) if table.metadata().snapshot_by_id(s).is_none() => {
                return Err(SearchError::invalid(
                    "the paging cursor refers to a lake snapshot that no longer exists; \
                     run the search again",
                )
                .into());
            }
            Some(s) => s,
            None => match table.metadata().current_snapshot() {
                Some(s) => s.snapshot_id(),
                None => return Ok(None),
            },
        };
        Ok(Some((table, snapshot)))
    }

    /// Every row of `snapshot` matching `filters`, sorted by `sort` then id.
    async fn run_at(
        &self,
        table: &iceberg::table::Table,
        snapshot: i64,
        resource_type: &str,
        filters: &[Filter],
        sort: &[SortKeySpec],
    ) -> Result<Vec<Matched>, ExecError> {
        let files = self.scanner.files(table, snapshot).await?;
        let mut ready = Vec::with_capacity(filters.len());
        for f in filters {
            match Box::pin(self.ready(resource_type, f)).await? {
                Some(r) => ready.push(r),
                // A filter that can match nothing: no need to scan.
                None => return Ok(Vec::new()),
            }
        }
        let scanner = self.scanner.clone();
        let indexes = self.indexes.clone();
        let sort = sort.to_vec();
        let mut matched =
            tokio::task::spawn_blocking(move || scan(&scanner, &indexes, &files, &ready, &sort))
                .await
                .map_err(|e| ExecError::Lake(format!("search task failed: {e}")))??;
        matched.sort_by(|a, b| {
            for (x, y) in a.keys.iter().zip(&b.keys) {
                let o = compare_keys(x, y);
                if o != Ordering::Equal {
                    return o;
                }
            }
            a.id.cmp(&b.id)
        });
        Ok(matched)
    }

    /// Resolves a filter to one that evaluates on a batch; `None` when it matches nothing.
    async fn ready(
        &self,
        resource_type: &str,
        filter: &Filter,
    ) -> Result<Option<Ready>, ExecError> {
        Ok(Some(match filter {
            Filter::Criterion(c) => Ready::Criterion(c.clone()),
            Filter::Ids(ids) => Ready::Ids(ids.iter().cloned().collect()),
            Filter::Chain {
                param,
                target,
                inner,
            } => {
                let found = self
                    .matching_ids(target, inner, MAX_CHAIN_MATCHES + 1)
                    .await?;
                guard_chain(found.len(), &format!("{}:{target}", param.code))?;
                if found.is_empty() {
                    return Ok(None);
                }
                Ready::Criterion(Criterion::Paths {
                    paths: param.paths.clone(),
                    test: Test::Reference(
                        found
                            .into_iter()
                            .map(|(id, _)| (Some(target.to_string()), id))
                            .collect(),
                    ),
                    negate: false,
                })
            }
            Filter::Has {
                source,
                param,
                inner,
            } => {
                let found = self
                    .matching_ids(source, inner, MAX_CHAIN_MATCHES + 1)
                    .await?;
                guard_chain(found.len(), &format!("_has:{source}:{}", param.code))?;
                let versions = self.load(source, &found).await?;
                let mut ids = HashSet::new();
                for v in &versions {
                    for (ty, id) in references_of(v, &param.paths) {
                        if ty == resource_type {
                            ids.insert(id);
                        }
                    }
                }
                if ids.is_empty() {
                    return Ok(None);
                }
                Ready::Ids(ids)
            }
        }))
    }

    /// The stored versions of `keys`, in order.
    pub async fn load(
        &self,
        resource_type: &str,
        keys: &[(String, i64)],
    ) -> Result<Vec<StoredVersion>, ExecError> {
        Ok(self
            .store
            .read_versions(&self.datastore_id, resource_type, keys)
            .await?)
    }

    /// `_include` and `_revinclude` of a page (with `:iterate` over what they add).
    async fn includes(
        &self,
        req: &SearchRequest,
        matches: &[StoredVersion],
    ) -> Result<Vec<StoredVersion>, ExecError> {
        if req.includes.is_empty() && req.revincludes.is_empty() {
            return Ok(Vec::new());
        }
        let mut seen: HashSet<(String, String)> = matches
            .iter()
            .map(|m| (m.resource_type.clone(), m.id.clone()))
            .collect();
        let mut out: Vec<StoredVersion> = Vec::new();
        let mut frontier: Vec<StoredVersion> = matches.to_vec();
        let mut first = true;
        while !frontier.is_empty() && out.len() < MAX_INCLUDES {
            let mut added = Vec::new();
            for inc in req.includes.iter().filter(|i| first || i.iterate) {
                for v in self.forward(inc, &frontier).await? {
                    if seen.insert((v.resource_type.clone(), v.id.clone())) {
                        added.push(v);
                    }
                }
            }
            for inc in req.revincludes.iter().filter(|i| first || i.iterate) {
                for v in self.reverse(inc, &frontier).await? {
                    if seen.insert((v.resource_type.clone(), v.id.clone())) {
                        added.push(v);
                    }
                }
            }
            first = false;
            out.extend(added.iter().cloned());
            frontier = added;
        }
        if let Some(patients) = &req.patients {
            out.retain(|v| in_compartment(v, patients));
        }
        out.truncate(MAX_INCLUDES);
        Ok(out)
    }

    async fn forward(
        &self,
        inc: &Include,
        from: &[StoredVersion],
    ) -> Result<Vec<StoredVersion>, ExecError> {
        let mut targets: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for v in from.iter().filter(|v| v.resource_type == inc.source) {
            for (ty, id) in references_of(v, &inc.param.paths) {
                if inc.target.is_none_or(|t| t == ty) {
                    let ids = targets.entry(ty).or_default();
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
            }
        }
        let mut out = Vec::new();
        for (ty, ids) in targets {
            if fhirlake_schema::Registry::global()
                .canonical_name(&ty)
                .is_none()
            {
                continue;
            }
            let current = self
                .store
                .read_current_many(&self.datastore_id, &ty, &ids)
                .await?;
            out.extend(current.into_iter().filter(|v| !v.deleted));
        }
        Ok(out)
    }

    async fn reverse(
        &self,
        inc: &Include,
        from: &[StoredVersion],
    ) -> Result<Vec<StoredVersion>, ExecError> {
        let keys: Vec<(Option<String>, String)> = from
            .iter()
            .filter(|v| inc.target.is_none_or(|t| t == v.resource_type))
            .map(|v| (Some(v.resource_type.clone()), v.id.clone()))
            .collect();
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let filter = Filter::Criterion(Criterion::Paths {
            paths: inc.param.paths.clone(),
            test: Test::Reference(keys),
            negate: false,
        });
        let found = self
            .matching_ids(inc.source, &[filter], MAX_INCLUDES)
            .await?;
        self.load(inc.source, &found).await
    }
}

/// The filters of `req` with its patient confinement applied ([`PatientCompartment::confine`]):
/// what every search and every conditional match must evaluate.
pub fn confined_filters(req: &SearchRequest) -> Vec<Filter> {
    match &req.patients {
        None => req.filters.clone(),
        Some(p) => PatientCompartment::global().confine(req.resource_type, &req.filters, p),
    }
}

/// Whether a stored version belongs to one of `patients`' compartments.
fn in_compartment(v: &StoredVersion, patients: &BTreeSet<String>) -> bool {
    v.json
        .as_deref()
        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        .is_some_and(|json| {
            PatientCompartment::global().contains(&v.resource_type, &json, patients)
        })
}

fn guard_chain(found: usize, what: &str) -> Result<(), SearchError> {
    if found > MAX_CHAIN_MATCHES {
        return Err(SearchError::too_costly(format!(
            "the chained search {what} matches more than {MAX_CHAIN_MATCHES} resources; narrow it down"
        )));
    }
    Ok(())
}

fn sort_spec(param: &SearchParam, descending: bool) -> SortKeySpec {
    let kind = match param.param_type {
        ParamType::Date => SortKind::Date,
        ParamType::Number | ParamType::Quantity => SortKind::Number,
        _ => SortKind::Text,
    };
    SortKeySpec {
        paths: param.paths.clone(),
        kind,
        descending,
    }
}

/// Orders sort keys, missing values last in either direction (descending keys were already
/// chosen as each row's largest value; the direction is applied by the caller's spec).
fn compare_keys(a: &(SortValue, bool), b: &(SortValue, bool)) -> Ordering {
    let (x, descending) = a;
    let (y, _) = b;
    match (x, y) {
        (SortValue::Null, SortValue::Null) => Ordering::Equal,
        (SortValue::Null, _) => Ordering::Greater,
        (_, SortValue::Null) => Ordering::Less,
        _ => {
            let o = x.partial_cmp(y).unwrap_or(Ordering::Equal);
            if *descending { o.reverse() } else { o }
        }
    }
}

/// The dotted leaf paths a path reads: where it ends (its subtree) and the elements its
/// filters test.
fn prefixes(path: &Path, base: Option<&str>, out: &mut Vec<String>) {
    let mut p = match (&path.column, base) {
        (Some(c), _) => c.clone(),
        (None, Some(b)) => b.to_string(),
        (None, None) => return,
    };
    for step in &path.steps {
        match step {
            Step::Field(name) => {
                p.push('.');
                p.push_str(name);
            }
            Step::Where { element, .. } => out.push(format!("{p}.{element}")),
            Step::Resolves(_) => {
                out.push(format!("{p}.reference"));
                out.push(format!("{p}.type"));
            }
        }
    }
    out.push(p);
}

fn criterion_prefixes(c: &Criterion, out: &mut Vec<String>) {
    match c {
        Criterion::Paths { paths, .. } => paths.iter().for_each(|p| prefixes(p, None, out)),
        Criterion::Composite { base, components } => {
            let mut base_prefix = Vec::new();
            if let Some(b) = base {
                prefixes(b, None, &mut base_prefix);
            }
            for (paths, _) in components {
                for p in paths {
                    match base_prefix.last() {
                        Some(b) => prefixes(p, Some(b), out),
                        None => prefixes(p, None, out),
                    }
                }
            }
        }
        Criterion::Any(all) => all.iter().for_each(|c| criterion_prefixes(c, out)),
    }
}

/// Whether a leaf below one of `prefixes` is needed: extensions, primitive extension
/// siblings (`_x`) and element ids never take part in search.
fn wanted(prefixes: &[String], leaf: &str) -> bool {
    prefixes.iter().any(|p| {
        leaf == p
            || leaf
                .strip_prefix(p.as_str())
                .and_then(|r| r.strip_prefix('.'))
                .is_some_and(|rest| {
                    rest.split('.').all(|seg| {
                        !(seg.starts_with('_')
                            || seg == "extension"
                            || seg == "modifierExtension"
                            || seg == "id")
                    })
                })
    })
}

/// Scans a snapshot and keeps the rows every filter accepts, with their sort keys.
fn scan(
    scanner: &LeafScanner,
    indexes: &Mutex<IndexCache>,
    files: &SnapshotFiles,
    ready: &[Ready],
    sort: &[SortKeySpec],
) -> Result<Vec<Matched>, ExecError> {
    let mut pre = vec![ID_COLUMN.to_string(), VERSION_COLUMN.to_string()];
    for r in ready {
        if let Ready::Criterion(c) = r {
            criterion_prefixes(c, &mut pre);
        }
    }
    for s in sort {
        for p in &s.paths {
            prefixes(p, None, &mut pre);
        }
    }
    pre.sort();
    pre.dedup();
    let spec = ProbeSpec::choose(ready);
    let candidates = |key: &str, batches: &[RecordBatch]| {
        let spec = spec.as_ref().expect("a probe has a spec");
        let cached = indexes.lock().expect("index cache").get(key).cloned();
        let index = match cached {
            Some(i) => i,
            None => {
                let built = Arc::new(
                    spec.index(batches)
                        .map_err(|e| fhirlake_lake::LakeError::Background(e.to_string()))?,
                );
                let mut cache = indexes.lock().expect("index cache");
                if cache.len() >= MAX_INDEXES {
                    cache.clear();
                }
                cache.insert(key.to_string(), built.clone());
                built
            }
        };
        let mut rows: Vec<(u32, u32)> = spec
            .keys
            .iter()
            .filter_map(|k| index.get(k))
            .flatten()
            .copied()
            .collect();
        rows.sort_unstable();
        rows.dedup();
        Ok(rows)
    };
    let probe = spec.as_ref().map(|s| Probe {
        column: &s.column,
        id: s.id(),
        candidates: &candidates,
    });
    let mut out = Vec::new();
    let mut failure = None;
    scanner
        .scan_probed(
            files,
            &|leaf| wanted(&pre, leaf),
            probe.as_ref(),
            &mut |batch: RecordBatch| match keep(&batch, ready, sort, &mut out) {
                Ok(()) => Ok(()),
                Err(e) => {
                    failure = Some(e);
                    Err(fhirlake_lake::LakeError::Background(
                        "search evaluation failed".into(),
                    ))
                }
            },
        )
        .map_err(|e| failure.take().unwrap_or_else(|| e.into()))?;
    Ok(out)
}

fn keep(
    batch: &RecordBatch,
    ready: &[Ready],
    sort: &[SortKeySpec],
    out: &mut Vec<Matched>,
) -> Result<(), ExecError> {
    let rows = batch.num_rows();
    let columns: Vec<(String, ArrayRef)> = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, a)| (f.name().clone(), a.clone()))
        .collect();
    let ids = arrow::compute::cast(
        batch
            .column_by_name(ID_COLUMN)
            .ok_or_else(|| ExecError::Lake("a data file has no id column".into()))?,
        &arrow::datatypes::DataType::Utf8,
    )
    .map_err(|e| ExecError::Lake(e.to_string()))?;
    let ids = ids.as_string::<i32>();
    let versions = batch
        .column_by_name(VERSION_COLUMN)
        .ok_or_else(|| ExecError::Lake("a data file has no _version_id column".into()))?
        .as_primitive::<Int64Type>();
    let mut mask = vec![true; rows];
    for r in ready {
        match r {
            Ready::Criterion(c) => {
                let hit = c.evaluate(&columns, rows)?;
                mask.iter_mut().zip(hit).for_each(|(m, h)| *m &= h);
            }
            Ready::Ids(set) => mask
                .iter_mut()
                .enumerate()
                .for_each(|(i, m)| *m &= ids.is_valid(i) && set.contains(ids.value(i))),
        }
    }
    if !mask.iter().any(|m| *m) {
        return Ok(());
    }
    let keys: Vec<KeyColumn> = sort
        .iter()
        .map(|s| s.keys(&columns, rows))
        .collect::<Result<_, _>>()?;
    for (i, keep) in mask.into_iter().enumerate() {
        if !keep || !ids.is_valid(i) {
            continue;
        }
        let row_keys = keys
            .iter()
            .zip(sort)
            .map(|(k, s)| {
                let v = match k {
                    KeyColumn::Date(v) => v[i].map_or(SortValue::Null, SortValue::Int),
                    KeyColumn::Number(v) => v[i].map_or(SortValue::Null, SortValue::Float),
                    KeyColumn::Text(v) => v[i].clone().map_or(SortValue::Null, SortValue::Text),
                };
                (v, s.descending)
            })
            .collect();
        out.push(Matched {
            id: ids.value(i).to_string(),
            version: versions.value(i),
            keys: row_keys,
        });
    }
    Ok(())
}

fn cursor(snapshot: i64, offset: usize) -> String {
    format!("{snapshot}_{offset}")
}

fn parse_cursor(c: &str) -> Result<(Option<i64>, usize), SearchError> {
    let bad = || SearchError::invalid(format!("invalid paging cursor '{c}'"));
    let (s, o) = c.split_once('_').ok_or_else(bad)?;
    let snapshot: i64 = s.parse().map_err(|_| bad())?;
    let offset: usize = o.parse().map_err(|_| bad())?;
    Ok(((snapshot != 0).then_some(snapshot), offset))
}

/// The `(type, id)` of every reference the parameter's paths reach in a stored resource.
pub fn references_of(v: &StoredVersion, paths: &[Path]) -> Vec<(String, String)> {
    let Some(json) = v.json.as_deref() else {
        return Vec::new();
    };
    let Ok(doc) = serde_json::from_str::<Value>(json) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for path in paths {
        let Some(col) = &path.column else { continue };
        let mut values: Vec<&Value> = Vec::new();
        push_flat(&doc[col.as_str()], &mut values);
        for step in &path.steps {
            let mut next = Vec::new();
            for v in values {
                match step {
                    Step::Field(name) => push_flat(&v[name.as_str()], &mut next),
                    Step::Resolves(t) => {
                        let ty = v["type"].as_str().map(String::from).or_else(|| {
                            v["reference"]
                                .as_str()
                                .and_then(value::reference_key)
                                .map(|(t, _)| t.to_string())
                        });
                        if ty.as_deref() == Some(t.as_str()) {
                            next.push(v);
                        }
                    }
                    Step::Where { element, value } => {
                        if v[element.as_str()].as_str() == Some(value.as_str()) {
                            next.push(v);
                        }
                    }
                }
            }
            values = next;
        }
        for v in values {
            let text = if path.fhir == "Reference" {
                v["reference"].as_str()
            } else {
                v.as_str()
            };
            if let Some((ty, id)) = text.and_then(value::reference_key) {
                out.push((ty.to_string(), id.to_string()));
            }
        }
    }
    out
}

fn push_flat<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Null => {}
        Value::Array(items) => out.extend(items.iter().filter(|i| !i.is_null())),
        other => out.push(other),
    }
}
