//! Writing Parquet data and position-delete files for a table, with their Iceberg metadata.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field as ArrowField, Schema as ArrowSchema};
use iceberg::spec::{DataContentType, DataFile, DataFileBuilder, DataFileFormat};
use iceberg::table::Table;
use iceberg::writer::file_writer::{
    FileWriter, FileWriterBuilder, ParquetWriter, ParquetWriterBuilder,
};
use parquet::arrow::ArrowSchemaConverter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{WriterProperties, WriterPropertiesBuilder};

use super::LakeError;
use fhirlake_schema::PARQUET_FIELD_ID_KEY;

/// Iceberg's reserved field ids of position-delete files.
const DELETE_FILE_PATH_ID: i32 = 2147483546;
const DELETE_POS_ID: i32 = 2147483545;

fn base_properties() -> WriterPropertiesBuilder {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid level"),
        ))
        .set_max_row_group_row_count(Some(64 * 1024))
}

/// Parquet settings of a data file whose top-level columns `null_columns` hold only nulls.
///
/// The leaves of those columns are written uncompressed: their pages are a few bytes of
/// run-length encoded levels that zstd cannot shrink, and the Parquet writer creates (and
/// zeroes) a fresh zstd context for every column chunk it compresses. With full-schema files
/// (hundreds of leaves, most of them null in a given batch) that context churn was about 13%
/// of the server's CPU under REST writes, and the reader paid the same to decompress them.
fn data_properties(arrow_schema: &ArrowSchema, null_columns: &HashSet<&str>) -> WriterProperties {
    let mut builder = base_properties();
    if !null_columns.is_empty()
        && let Ok(descr) = ArrowSchemaConverter::new().convert(arrow_schema)
    {
        for (i, column) in descr.columns().iter().enumerate() {
            if null_columns.contains(descr.get_column_root(i).name()) {
                builder = builder
                    .set_column_compression(column.path().clone(), Compression::UNCOMPRESSED);
            }
        }
    }
    builder.build()
}

/// Writes `batch` (whose fields carry Iceberg field ids) as one Parquet data file of `table`.
pub async fn write_data_file(table: &Table, batch: &RecordBatch) -> Result<DataFile, LakeError> {
    let mut writer = DataFileWriter::open(table, batch.schema_ref(), &HashSet::new()).await?;
    writer.write(batch).await?;
    writer.finish().await
}

/// Streams record batches of one schema into a new data file of a table, so a large commit or
/// compaction never holds more than one batch in memory.
pub struct DataFileWriter {
    inner: ParquetWriter,
    path: String,
    partition_spec_id: i32,
    rows: usize,
}

impl DataFileWriter {
    /// Starts a data file for batches of `schema` (fields carrying Iceberg field ids), in
    /// which the top-level columns `null_columns` will hold only nulls (a column named there
    /// that gets values is still written correctly, only uncompressed).
    pub async fn open(
        table: &Table,
        schema: &ArrowSchema,
        null_columns: &HashSet<&str>,
    ) -> Result<Self, LakeError> {
        let path = format!(
            "{}/data/{}.parquet",
            table.metadata().location().trim_end_matches('/'),
            uuid::Uuid::new_v4()
        );
        let iceberg_schema = Arc::new(iceberg::arrow::arrow_schema_to_schema(schema)?);
        let output = table.file_io().new_output(&path)?;
        // The leaf paths as the writer will name them: from the Arrow form of the Iceberg schema.
        let written = iceberg::arrow::schema_to_arrow_schema(&iceberg_schema)?;
        let properties = data_properties(&written, null_columns);
        let inner = ParquetWriterBuilder::new(properties, iceberg_schema)
            .build(output)
            .await?;
        Ok(Self {
            inner,
            path,
            partition_spec_id: table.metadata().default_partition_spec_id(),
            rows: 0,
        })
    }

    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), LakeError> {
        self.rows += batch.num_rows();
        Ok(self.inner.write(batch).await?)
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Closes the file and returns its Iceberg metadata.
    pub async fn finish(self) -> Result<DataFile, LakeError> {
        let builders = self.inner.close().await?;
        finish_data_file(
            builders,
            &self.path,
            self.partition_spec_id,
            DataContentType::Data,
            None,
        )
    }
}

/// Writes a position-delete file removing `positions` (data file path, row position).
pub async fn write_position_deletes(
    table: &Table,
    mut positions: Vec<(String, i64)>,
) -> Result<DataFile, LakeError> {
    // The spec requires position deletes sorted by file path, then position.
    positions.sort();
    let referenced = match positions.first() {
        Some((first, _)) if positions.iter().all(|(p, _)| p == first) => Some(first.clone()),
        _ => None,
    };
    let field = |name: &str, ty: DataType, id: i32| {
        ArrowField::new(name, ty, false).with_metadata(HashMap::from([(
            PARQUET_FIELD_ID_KEY.to_string(),
            id.to_string(),
        )]))
    };
    let schema = Arc::new(ArrowSchema::new(vec![
        field("file_path", DataType::Utf8, DELETE_FILE_PATH_ID),
        field("pos", DataType::Int64, DELETE_POS_ID),
    ]));
    let paths: ArrayRef = Arc::new(StringArray::from_iter_values(
        positions.iter().map(|(p, _)| p.as_str()),
    ));
    let pos: ArrayRef = Arc::new(Int64Array::from_iter_values(
        positions.iter().map(|(_, p)| *p),
    ));
    let batch = RecordBatch::try_new(schema, vec![paths, pos])?;
    let path = format!(
        "{}/data/{}-deletes.parquet",
        table.metadata().location().trim_end_matches('/'),
        uuid::Uuid::new_v4()
    );
    write_file(
        table,
        &batch,
        path,
        DataContentType::PositionDeletes,
        referenced,
    )
    .await
}

async fn write_file(
    table: &Table,
    batch: &RecordBatch,
    path: String,
    content: DataContentType,
    referenced_data_file: Option<String>,
) -> Result<DataFile, LakeError> {
    let schema = Arc::new(iceberg::arrow::arrow_schema_to_schema(batch.schema_ref())?);
    let output = table.file_io().new_output(&path)?;
    let mut writer = ParquetWriterBuilder::new(base_properties().build(), schema)
        .build(output)
        .await?;
    writer.write(batch).await?;
    let builders = writer.close().await?;
    finish_data_file(
        builders,
        &path,
        table.metadata().default_partition_spec_id(),
        content,
        referenced_data_file,
    )
}

fn finish_data_file(
    mut builders: Vec<DataFileBuilder>,
    path: &str,
    partition_spec_id: i32,
    content: DataContentType,
    referenced_data_file: Option<String>,
) -> Result<DataFile, LakeError> {
    let mut builder = builders.pop().ok_or_else(|| {
        iceberg::Error::new(
            iceberg::ErrorKind::Unexpected,
            format!("parquet writer produced no file for {path}"),
        )
    })?;
    builder
        .content(content)
        .file_format(DataFileFormat::Parquet)
        .partition_spec_id(partition_spec_id);
    if content == DataContentType::PositionDeletes {
        builder.referenced_data_file(referenced_data_file);
    }
    builder.build().map_err(|e| {
        LakeError::Iceberg(iceberg::Error::new(
            iceberg::ErrorKind::Unexpected,
            format!("building data file metadata for {path}: {e}"),
        ))
    })
}

#[cfg(test)]
mod null_column_tests {
    use super::*;
    use fhirlake_schema::Registry;

    /// Leaves under a column named null are written uncompressed; every other leaf keeps zstd.
    #[test]
    fn null_columns_are_written_uncompressed() {
        let schema = Registry::global().get("Patient").unwrap();
        let iceberg = iceberg::arrow::arrow_schema_to_schema(&schema.arrow_schema()).unwrap();
        let written = iceberg::arrow::schema_to_arrow_schema(&iceberg).unwrap();
        let props = data_properties(&written, &HashSet::from(["name", "photo"]));
        let descr = ArrowSchemaConverter::new().convert(&written).unwrap();
        let (mut plain, mut zstd) = (0, 0);
        for (i, column) in descr.columns().iter().enumerate() {
            let root = descr.get_column_root(i).name();
            match props.compression(column.path()) {
                Compression::UNCOMPRESSED => {
                    assert!(root == "name" || root == "photo", "{}", column.path());
                    plain += 1;
                }
                Compression::ZSTD(_) => {
                    assert!(root != "name" && root != "photo", "{}", column.path());
                    zstd += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(
            plain > 5 && zstd > 20,
            "{plain} uncompressed, {zstd} zstd leaves"
        );
    }
}
