//! The SQL scan of one lake table snapshot: DataFusion partitions over the row groups of the
//! snapshot's files, each decoding only the Parquet leaves the query uses.
//!
//! FHIR columns are deep (`code` is a CodeableConcept of Codings with extensions at every
//! level); a query that reads `code.coding[1].code` should not decode the rest. The provider
//! ([`super::provider::LakeTable`]) narrows each column to the dotted paths a query touches, and
//! this plan reads exactly the leaves under them, as the search scanner does. Work is split
//! into row-group ranges of about equal row counts, one per partition, so every core decodes;
//! rows removed by position deletes are skipped with row selections. Each partition reads on a
//! blocking thread and hands batches over through a small channel, which bounds memory and
//! stops reading as soon as the query no longer wants rows.

use std::any::Any;
use std::fmt;
use std::fs::File;
use std::sync::Arc;

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::stats::Precision;
use datafusion::common::{DataFusionError, Result as DFResult, Statistics};
use datafusion::datasource::physical_plan::parquet::{
    ParquetAccessPlan, ParquetFileMetrics, RowGroupAccessPlanFilter,
};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_optimizer::pruning::PruningPredicate;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReaderBuilder, RowSelection, RowSelector};
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};

use super::LakeError;
use super::relabel::relabel_array;
use super::scan::{Footer, LeafScanner, ScanFile, SnapshotFiles, lake_err};

/// Rows per batch a partition emits.
const BATCH_ROWS: usize = 8192;

/// A contiguous run of row groups of one file.
#[derive(Debug, Clone)]
struct ReadUnit {
    file: usize,
    row_groups: Vec<usize>,
    /// Live rows (deleted ones not counted).
    rows: usize,
}

/// Reads the columns of `schema` (each narrowed to `prefixes`) from a snapshot's files.
pub struct LakeScanExec {
    files: Arc<SnapshotFiles>,
    scanner: LeafScanner,
    partitions: Vec<Vec<ReadUnit>>,
    schema: SchemaRef,
    /// Per column of `schema`: the dotted FHIR paths whose leaves are read.
    prefixes: Arc<Vec<Vec<String>>>,
    limit: Option<usize>,
    leaves: usize,
    /// Whether a predicate chose the row groups (then `rows` counts candidates, not matches).
    pruned: bool,
    metrics: ExecutionPlanMetricsSet,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for LakeScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LakeScanExec")
            .field("snapshot", &self.files.snapshot_id)
            .field("partitions", &self.partitions.len())
            .finish_non_exhaustive()
    }
}

/// Whether the leaf at dotted `path` lies under one of `prefixes`.
pub fn covered(path: &str, prefixes: &[String]) -> bool {
    prefixes.iter().any(|p| {
        path == p || (path.starts_with(p.as_str()) && path.as_bytes().get(p.len()) == Some(&b'.'))
    })
}

/// Live rows of `row_groups` (with their `offsets` into the file) after `deleted`.
fn live_rows(deleted: &[i64], offsets: &[(i64, i64)], row_groups: &[usize]) -> usize {
    row_groups
        .iter()
        .map(|&rg| {
            let (start, end) = offsets[rg];
            let gone =
                deleted.partition_point(|&d| d < end) - deleted.partition_point(|&d| d < start);
            (end - start) as usize - gone
        })
        .sum()
}

/// The `(first row, end row)` of each row group of a file.
fn row_group_offsets(footer: &Footer) -> Vec<(i64, i64)> {
    let mut start = 0;
    footer
        .metadata
        .metadata()
        .row_groups()
        .iter()
        .map(|rg| {
            let range = (start, start + rg.num_rows());
            start = range.1;
            range
        })
        .collect()
}

/// Which row groups of a file may hold rows `predicate` accepts, by their statistics.
fn candidate_row_groups(
    file: &ScanFile,
    footer: &Footer,
    predicate: Option<&PruningPredicate>,
    metrics: &ExecutionPlanMetricsSet,
) -> Vec<bool> {
    let groups = footer.metadata.metadata().row_groups();
    let Some(predicate) = predicate else {
        return vec![true; groups.len()];
    };
    let mut filter = RowGroupAccessPlanFilter::new(ParquetAccessPlan::new_all(groups.len()));
    filter.prune_by_statistics(
        footer.metadata.schema(),
        footer.metadata.metadata().file_metadata().schema_descr(),
        groups,
        predicate,
        &ParquetFileMetrics::new(0, &file.path, metrics),
    );
    let plan = filter.build();
    (0..groups.len()).map(|i| plan.should_scan(i)).collect()
}

/// Splits the row groups of `files` that may match `predicate` into at most `n` partitions
/// of about equal live rows.
fn split(
    files: &SnapshotFiles,
    footers: &[Footer],
    n: usize,
    predicate: Option<&PruningPredicate>,
    metrics: &ExecutionPlanMetricsSet,
) -> Vec<Vec<ReadUnit>> {
    let mut groups: Vec<(usize, usize, usize)> = Vec::new(); // (file, row group, live rows)
    for (i, (file, footer)) in files.files.iter().zip(footers).enumerate() {
        let offsets = row_group_offsets(footer);
        let candidates = candidate_row_groups(file, footer, predicate, metrics);
        for (rg, candidate) in candidates.into_iter().enumerate() {
            let rows = live_rows(&file.deleted, &offsets, &[rg]);
            if rows > 0 && candidate {
                groups.push((i, rg, rows));
            }
        }
    }
    let total: usize = groups.iter().map(|g| g.2).sum();
    let per = total.div_ceil(n.max(1)).max(1);
    let mut partitions: Vec<Vec<ReadUnit>> = vec![Vec::new()];
    let mut filled = 0;
    for (file, rg, rows) in groups {
        if filled >= per {
            partitions.push(Vec::new());
            filled = 0;
        }
        filled += rows;
        let part = partitions.last_mut().expect("one partition at least");
        match part.last_mut() {
            Some(u) if u.file == file => {
                u.row_groups.push(rg);
                u.rows += rows;
            }
            _ => part.push(ReadUnit {
                file,
                row_groups: vec![rg],
                rows,
            }),
        }
    }
    partitions.retain(|p| !p.is_empty());
    partitions
}

impl LakeScanExec {
    /// Plans the scan: reads (or takes from the cache) every file's footer to split the work,
    /// skipping row groups whose statistics rule out `predicate` (over the table's columns).
    pub async fn try_new(
        files: Arc<SnapshotFiles>,
        scanner: LeafScanner,
        schema: SchemaRef,
        prefixes: Vec<Vec<String>>,
        target_partitions: usize,
        limit: Option<usize>,
        predicate: Option<Arc<PruningPredicate>>,
    ) -> Result<Self, LakeError> {
        let (footers, files, scanner) = tokio::task::spawn_blocking(move || {
            let footers = files
                .files
                .iter()
                .map(|f| scanner.footer(&files, f))
                .collect::<Result<Vec<_>, _>>();
            (footers, files, scanner)
        })
        .await
        .map_err(|e| lake_err("scan planning", e))?;
        let footers = footers?;
        let leaves = footers.first().map_or(0, |f| {
            f.leaf_paths
                .iter()
                .filter(|p| prefixes.iter().any(|c| covered(p, c)))
                .count()
        });
        let metrics = ExecutionPlanMetricsSet::new();
        let partitions = split(
            &files,
            &footers,
            target_partitions,
            predicate.as_deref(),
            &metrics,
        );
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(partitions.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Self {
            files,
            scanner,
            partitions,
            schema,
            prefixes: Arc::new(prefixes),
            limit,
            leaves,
            pruned: predicate.is_some(),
            metrics,
            properties,
        })
    }

    fn rows(&self, partition: Option<usize>) -> usize {
        match partition {
            Some(i) => self.partitions.get(i).map_or(0, |p| unit_rows(p)),
            None => self.partitions.iter().map(|p| unit_rows(p)).sum(),
        }
    }
}

fn unit_rows(units: &[ReadUnit]) -> usize {
    units.iter().map(|u| u.rows).sum()
}

impl DisplayAs for LakeScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "LakeScanExec: snapshot={}, files={}, partitions={}, leaves={}, rows={}",
            self.files.snapshot_id,
            self.files.files.len(),
            self.partitions.len(),
            self.leaves,
            self.rows(None)
        )?;
        if let Some(limit) = self.limit {
            write!(f, ", limit={limit}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for LakeScanExec {
    fn name(&self) -> &str {
        "LakeScanExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "LakeScanExec has no children".into(),
            ))
        }
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let units = self.partitions.get(partition).cloned().unwrap_or_default();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let job = ReadJob {
            files: self.files.clone(),
            scanner: self.scanner.clone(),
            schema: self.schema.clone(),
            prefixes: self.prefixes.clone(),
            limit: self.limit,
        };
        self.files.runtime.spawn_blocking(move || {
            if let Err(e) = job.run(&units, &tx) {
                let _ = tx.blocking_send(Err(DataFusionError::External(Box::new(e))));
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|batch| (batch, rx))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream.boxed(),
        )))
    }

    fn partition_statistics(&self, partition: Option<usize>) -> DFResult<Statistics> {
        let rows = self.rows(partition);
        let rows = self.limit.map_or(rows, |l| rows.min(l));
        let rows = if self.pruned {
            Precision::Inexact(rows)
        } else {
            Precision::Exact(rows)
        };
        Ok(Statistics::new_unknown(&self.schema).with_num_rows(rows))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// What one partition reads.
struct ReadJob {
    files: Arc<SnapshotFiles>,
    scanner: LeafScanner,
    schema: SchemaRef,
    prefixes: Arc<Vec<Vec<String>>>,
    limit: Option<usize>,
}

type Sender = tokio::sync::mpsc::Sender<DFResult<RecordBatch>>;

impl ReadJob {
    /// Reads `units` in order, sending each batch; stops early when the receiver is gone or
    /// the limit is reached.
    fn run(&self, units: &[ReadUnit], tx: &Sender) -> Result<(), LakeError> {
        let mut remaining = self.limit.unwrap_or(usize::MAX);
        for unit in units {
            let file = &self.files.files[unit.file];
            let footer = self.scanner.footer(&self.files, file)?;
            let mut emit = |batch: RecordBatch| -> Result<bool, LakeError> {
                let batch = self.conform(&file.path, batch)?;
                let batch = if batch.num_rows() > remaining {
                    batch.slice(0, remaining)
                } else {
                    batch
                };
                remaining -= batch.num_rows();
                Ok(tx.blocking_send(Ok(batch)).is_ok() && remaining > 0)
            };
            if !self.read_unit(file, &footer, unit, &mut emit)? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Reads one unit, passing each batch to `emit`; false when `emit` wants no more.
    fn read_unit(
        &self,
        file: &ScanFile,
        footer: &Footer,
        unit: &ReadUnit,
        emit: &mut dyn FnMut(RecordBatch) -> Result<bool, LakeError>,
    ) -> Result<bool, LakeError> {
        let descr = footer.metadata.metadata().file_metadata().schema_descr();
        let leaves: Vec<usize> = footer
            .leaf_paths
            .iter()
            .enumerate()
            .filter(|(_, p)| self.prefixes.iter().any(|c| covered(p, c)))
            .map(|(i, _)| i)
            .collect();
        let mask = ProjectionMask::leaves(descr, leaves);
        let offsets = row_group_offsets(footer);
        let selection = unit_selection(&file.deleted, &offsets, &unit.row_groups);
        let err = |e: &dyn fmt::Display| lake_err(&file.path, e);
        if file.local {
            let handle = File::open(&file.path).map_err(|e| err(&e))?;
            let mut builder =
                ParquetRecordBatchReaderBuilder::new_with_metadata(handle, footer.metadata.clone())
                    .with_projection(mask)
                    .with_row_groups(unit.row_groups.clone())
                    .with_batch_size(BATCH_ROWS);
            if let Some(s) = selection {
                builder = builder.with_row_selection(s);
            }
            for batch in builder.build().map_err(|e| err(&e))? {
                if !emit(batch.map_err(|e| err(&e))?)? {
                    return Ok(false);
                }
            }
        } else {
            let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(
                self.files.remote(file)?,
                footer.metadata.clone(),
            )
            .with_projection(mask)
            .with_row_groups(unit.row_groups.clone())
            .with_batch_size(BATCH_ROWS);
            if let Some(s) = selection {
                builder = builder.with_row_selection(s);
            }
            let mut stream = builder.build().map_err(|e| err(&e))?;
            while let Some(batch) = self.files.runtime.block_on(stream.next()) {
                if !emit(batch.map_err(|e| err(&e))?)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// `batch` as the planned schema: columns by name, re-labelled to the planned types
    /// (Parquet's field metadata and list element names may differ).
    fn conform(&self, path: &str, batch: RecordBatch) -> Result<RecordBatch, LakeError> {
        let columns = self
            .schema
            .fields()
            .iter()
            .map(|field| {
                let column = batch.column_by_name(field.name()).ok_or_else(|| {
                    lake_err(path, format!("the file has no column {}", field.name()))
                })?;
                relabel_array(column, field.data_type()).map_err(|e| {
                    lake_err(
                        path,
                        format!(
                            "column {} does not have the table's type: {e}",
                            field.name()
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
        )
        .map_err(|e| lake_err(path, e))
    }
}

/// The selection skipping `deleted` rows within `row_groups` (read in order), or `None` when
/// none of them has a deleted row.
pub(crate) fn unit_selection(
    deleted: &[i64],
    offsets: &[(i64, i64)],
    row_groups: &[usize],
) -> Option<RowSelection> {
    let mut selectors = Vec::new();
    let mut any = false;
    for &rg in row_groups {
        let (start, end) = offsets[rg];
        let from = deleted.partition_point(|&d| d < start);
        let to = deleted.partition_point(|&d| d < end);
        let mut at = start;
        for &d in &deleted[from..to] {
            if d < at {
                continue;
            }
            if d > at {
                selectors.push(RowSelector::select((d - at) as usize));
            }
            selectors.push(RowSelector::skip(1));
            any = true;
            at = d + 1;
        }
        if at < end {
            selectors.push(RowSelector::select((end - at) as usize));
        }
    }
    any.then(|| RowSelection::from(selectors))
}

/// `data_type` of the field at dotted `path`, keeping only what lies on the way to or under
/// `prefixes` (lists are transparent: their element has the list's path); `None` when nothing
/// is kept. The result is the type Parquet produces for the leaves [`covered`] selects.
pub fn prune(data_type: &DataType, path: &str, prefixes: &[String]) -> Option<DataType> {
    if covered(path, prefixes) {
        return Some(data_type.clone());
    }
    let below = |p: &String| p.starts_with(path) && p.as_bytes().get(path.len()) == Some(&b'.');
    if !prefixes.iter().any(below) {
        return None;
    }
    match data_type {
        DataType::Struct(fields) => {
            let kept: Vec<_> = fields
                .iter()
                .filter_map(|f| {
                    let child = format!("{path}.{}", f.name());
                    prune(f.data_type(), &child, prefixes)
                        .map(|t| Arc::new(f.as_ref().clone().with_data_type(t)))
                })
                .collect();
            (!kept.is_empty()).then(|| DataType::Struct(kept.into()))
        }
        DataType::List(element) => prune(element.data_type(), path, prefixes)
            .map(|t| DataType::List(Arc::new(element.as_ref().clone().with_data_type(t)))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, Fields};

    fn coding() -> DataType {
        DataType::Struct(Fields::from(vec![
            Field::new("system", DataType::Utf8, true),
            Field::new("code", DataType::Utf8, true),
            Field::new("display", DataType::Utf8, true),
        ]))
    }

    #[test]
    fn pruning_keeps_the_paths_and_their_ancestors() {
        let concept = DataType::Struct(Fields::from(vec![
            Field::new(
                "coding",
                DataType::List(Arc::new(Field::new("element", coding(), true))),
                true,
            ),
            Field::new("text", DataType::Utf8, true),
        ]));
        let pruned = prune(&concept, "code", &["code.coding.code".into()]).unwrap();
        let DataType::Struct(fields) = &pruned else {
            panic!("{pruned}")
        };
        assert_eq!(fields.len(), 1);
        let DataType::List(element) = fields[0].data_type() else {
            panic!()
        };
        let DataType::Struct(leaves) = element.data_type() else {
            panic!()
        };
        assert_eq!(leaves.len(), 1);
        assert_eq!(leaves[0].name(), "code");
        assert_eq!(prune(&concept, "code", &["code".into()]).unwrap(), concept);
        assert_eq!(prune(&concept, "code", &["code.nothing".into()]), None);
        assert_eq!(prune(&concept, "code", &["codeX".into()]), None);
        assert!(covered("code.coding.code", &["code.coding".into()]));
        assert!(!covered("code.codingX", &["code.coding".into()]));
    }

    #[test]
    fn selections_skip_deleted_rows_of_the_chosen_row_groups() {
        let offsets = [(0, 10), (10, 20), (20, 30)];
        assert!(unit_selection(&[], &offsets, &[0, 1]).is_none());
        let s = unit_selection(&[3, 15, 25], &offsets, &[1, 2]).unwrap();
        assert_eq!((s.row_count(), s.skipped_row_count()), (18, 2));
        assert_eq!(live_rows(&[3, 15, 25], &offsets, &[1, 2]), 18);
    }
}
