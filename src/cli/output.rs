//! Rendering of query results: aligned tables for people, CSV / JSON lines / Parquet for tools.
//!
//! Results arrive as a stream of Arrow batches and are written batch by batch, so exporting a
//! large table never holds it in memory. Only the table format looks ahead: it buffers the
//! first [`RenderOptions::width_sample_rows`] rows to size its columns, then streams the rest
//! with those widths, truncating wider cells with `…`.
//!
//! Nested values (FHIR's lists of structs) appear in the table format the way Athena's console
//! shows them, `[{use=official, family=Smith, given=[John]}]`, except that null struct fields are
//! left out, as FHIR JSON leaves out absent elements; otherwise a `HumanName` cell would be mostly
//! `=null`s. CSV and JSON carry nested values as JSON.

use std::fmt::{self, Write as _};
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, LargeListArray, LargeStringArray, ListArray,
    MapArray, RecordBatch, StringArray, StringViewArray, StructArray,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::json::writer::{EncoderOptions, LineDelimited, make_encoder};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::error::DataFusionError;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::StreamExt;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;

/// How results are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned text table with a row-count footer; wide cells are truncated with `…`.
    #[default]
    Table,
    /// RFC 4180 CSV with exactly one header line per result; nested values as JSON text,
    /// NULL as an empty field.
    Csv,
    /// JSON lines: one object per row. Null values are left out of the object (as FHIR JSON
    /// leaves out absent elements), so a missing key means NULL.
    Json,
    /// One Parquet file (zstd); needs an output file.
    Parquet,
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OutputFormat::Table => "table",
            OutputFormat::Csv => "csv",
            OutputFormat::Json => "json",
            OutputFormat::Parquet => "parquet",
        })
    }
}

/// Knobs of the human-readable renderings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderOptions {
    /// Widest table cell, in characters; longer values end in `…`. At least 4 is used.
    pub max_column_width: usize,
    /// Rows the table format buffers to size its columns before it starts printing.
    pub width_sample_rows: usize,
    /// Levels of nesting `\d TABLE` expands; deeper structs are summarised on one line.
    pub describe_depth: usize,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            max_column_width: 40,
            width_sample_rows: 1000,
            describe_depth: 2,
        }
    }
}

/// Failures while writing a result.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The result stream itself failed: the statement failed while running.
    #[error(transparent)]
    Query(#[from] DataFusionError),
    /// A value could not be encoded in the output format.
    #[error("cannot write the result as {format}: {source}")]
    Encode {
        /// The format being written.
        format: OutputFormat,
        /// The encoder's complaint.
        source: ArrowError,
    },
    /// The Parquet writer rejected the result.
    #[error("cannot write the result as parquet: {0}")]
    Parquet(#[source] ParquetError),
    /// The output (terminal, pipe or file) could not be written.
    #[error("cannot write output: {0}")]
    Io(#[from] io::Error),
}

impl OutputError {
    /// True for failures of the output itself rather than of the statement or its values.
    pub fn is_io(&self) -> bool {
        matches!(self, OutputError::Io(_))
    }

    /// True when the reader of a pipe went away.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, OutputError::Io(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// Writes a whole result stream in `format` and returns the number of rows written.
///
/// Batches are written as they arrive; a failing stream leaves what was already written in
/// place and returns [`OutputError::Query`].
pub async fn write_stream(
    mut stream: SendableRecordBatchStream,
    format: OutputFormat,
    sink: &mut (dyn Write + Send),
    options: &RenderOptions,
) -> Result<u64, OutputError> {
    let mut writer = ResultWriter::new(format, stream.schema(), sink, options)?;
    while let Some(batch) = stream.next().await {
        writer.write(&batch?)?;
    }
    writer.finish()
}

/// Incremental writer of one result set in one [`OutputFormat`].
pub struct ResultWriter<'a> {
    inner: Inner<'a>,
    rows: u64,
    failure: IoFailure,
}

enum Inner<'a> {
    Table(TableWriter<'a>),
    Csv(CsvWriter<'a>),
    Json(arrow::json::Writer<Tracked<'a>, LineDelimited>),
    Parquet(ArrowWriter<Tracked<'a>>),
}

impl<'a> ResultWriter<'a> {
    /// Starts a result with the given schema. Nothing is written until the first batch,
    /// except that Parquet validates the schema here.
    pub fn new(
        format: OutputFormat,
        schema: SchemaRef,
        sink: &'a mut (dyn Write + Send),
        options: &RenderOptions,
    ) -> Result<Self, OutputError> {
        let failure = IoFailure::default();
        let sink = Tracked {
            inner: sink,
            failure: failure.clone(),
        };
        let inner = match format {
            OutputFormat::Table => Inner::Table(TableWriter::new(sink, &schema, options)),
            OutputFormat::Csv => Inner::Csv(CsvWriter::new(sink, &schema)),
            OutputFormat::Json => Inner::Json(arrow::json::WriterBuilder::new().build(sink)),
            OutputFormat::Parquet => {
                let properties = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::default()))
                    .build();
                let writer = ArrowWriter::try_new(sink, schema, Some(properties))
                    .map_err(|e| failure.parquet(e))?;
                Inner::Parquet(writer)
            }
        };
        Ok(ResultWriter {
            inner,
            rows: 0,
            failure,
        })
    }

    /// Writes one batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), OutputError> {
        let failure = &self.failure;
        match &mut self.inner {
            Inner::Table(w) => w.write(batch).map_err(|e| failure.io(e))?,
            Inner::Csv(w) => w
                .write(batch)
                .map_err(|e| failure.arrow(OutputFormat::Csv, e))?,
            Inner::Json(w) => w
                .write(batch)
                .map_err(|e| failure.arrow(OutputFormat::Json, e))?,
            Inner::Parquet(w) => w.write(batch).map_err(|e| failure.parquet(e))?,
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Completes the result (table footer, CSV header of an empty result, Parquet footer),
    /// flushes the sink and returns the number of rows written.
    pub fn finish(self) -> Result<u64, OutputError> {
        let failure = self.failure;
        match self.inner {
            Inner::Table(w) => w.finish(self.rows).map_err(|e| failure.io(e))?,
            Inner::Csv(w) => w
                .finish()
                .map_err(|e| failure.arrow(OutputFormat::Csv, e))?,
            Inner::Json(mut w) => {
                w.finish()
                    .map_err(|e| failure.arrow(OutputFormat::Json, e))?;
                w.into_inner().flush().map_err(|e| failure.io(e))?;
            }
            Inner::Parquet(w) => {
                let mut sink = w.into_inner().map_err(|e| failure.parquet(e))?;
                sink.flush().map_err(|e| failure.io(e))?;
            }
        }
        Ok(self.rows)
    }
}

/// The first I/O error seen by a [`Tracked`] sink. The Arrow writers flatten I/O errors into
/// their own error strings; this keeps the original kind so a closed pipe or a full disk is
/// reported as an output failure, not as a problem with the data.
#[derive(Clone, Default)]
struct IoFailure(Arc<Mutex<Option<(io::ErrorKind, String)>>>);

impl IoFailure {
    fn record(&self, error: &io::Error) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some((error.kind(), error.to_string()));
        }
    }

    fn take(&self) -> Option<io::Error> {
        let slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref()
            .map(|(kind, message)| io::Error::new(*kind, message.clone()))
    }

    fn io(&self, error: io::Error) -> OutputError {
        OutputError::Io(self.take().unwrap_or(error))
    }

    fn arrow(&self, format: OutputFormat, source: ArrowError) -> OutputError {
        match self.take() {
            Some(io) => OutputError::Io(io),
            None => OutputError::Encode { format, source },
        }
    }

    fn parquet(&self, error: ParquetError) -> OutputError {
        match self.take() {
            Some(io) => OutputError::Io(io),
            None => OutputError::Parquet(error),
        }
    }
}

/// The caller's sink, remembering the first I/O error it returned.
struct Tracked<'a> {
    inner: &'a mut (dyn Write + Send),
    failure: IoFailure,
}

impl Write for Tracked<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner
            .write(buf)
            .inspect_err(|e| self.failure.record(e))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|e| self.failure.record(e))
    }
}

// ---------------------------------------------------------------------------------------------
// CSV

struct CsvWriter<'a> {
    writer: arrow::csv::Writer<Tracked<'a>>,
    /// Schema of the batches handed to the CSV writer: nested columns become Utf8 JSON text.
    text_schema: SchemaRef,
    started: bool,
}

impl<'a> CsvWriter<'a> {
    fn new(sink: Tracked<'a>, schema: &Schema) -> Self {
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .map(|f| {
                if f.data_type().is_nested() {
                    Field::new(f.name(), DataType::Utf8, true)
                } else {
                    f.as_ref().clone()
                }
            })
            .collect();
        CsvWriter {
            writer: arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(sink),
            text_schema: Arc::new(Schema::new(fields)),
            started: false,
        }
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<(), ArrowError> {
        let columns = batch
            .schema()
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(field, column)| {
                if field.data_type().is_nested() {
                    json_text_column(field, column.as_ref())
                } else {
                    Ok(column.clone())
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let text = RecordBatch::try_new(self.text_schema.clone(), columns)?;
        self.writer.write(&text)?;
        self.started = true;
        Ok(())
    }

    fn finish(mut self) -> Result<(), ArrowError> {
        if !self.started {
            // The CSV writer emits its header with the first batch; an empty result still
            // gets its one header line.
            self.writer
                .write(&RecordBatch::new_empty(self.text_schema.clone()))?;
        }
        self.writer.into_inner().flush()?;
        Ok(())
    }
}

/// Encodes every value of a nested column as compact JSON text (null stays null).
fn json_text_column(field: &FieldRef, column: &dyn Array) -> Result<ArrayRef, ArrowError> {
    let options = EncoderOptions::default();
    let mut encoder = make_encoder(field, column, &options)?;
    let mut buffer = Vec::new();
    let mut values = Vec::with_capacity(column.len());
    for row in 0..column.len() {
        if column.is_null(row) {
            values.push(None);
        } else {
            buffer.clear();
            encoder.encode(row, &mut buffer);
            values.push(Some(String::from_utf8(std::mem::take(&mut buffer))?));
        }
    }
    Ok(Arc::new(StringArray::from(values)))
}

// ---------------------------------------------------------------------------------------------
// Table

struct TableWriter<'a> {
    sink: Tracked<'a>,
    headers: Vec<String>,
    right_aligned: Vec<bool>,
    max_width: usize,
    sample_rows: usize,
    /// Rendered rows waiting for the column widths to be known.
    pending: Vec<Vec<String>>,
    widths: Option<Vec<usize>>,
}

impl<'a> TableWriter<'a> {
    fn new(sink: Tracked<'a>, schema: &Schema, options: &RenderOptions) -> Self {
        let max_width = options.max_column_width.max(4);
        TableWriter {
            sink,
            headers: schema
                .fields()
                .iter()
                .map(|f| fit(f.name(), max_width))
                .collect(),
            right_aligned: schema
                .fields()
                .iter()
                .map(|f| f.data_type().is_numeric())
                .collect(),
            max_width,
            sample_rows: options.width_sample_rows.max(1),
            pending: Vec::new(),
            widths: None,
        }
    }

    fn write(&mut self, batch: &RecordBatch) -> io::Result<()> {
        if self.headers.is_empty() {
            return Ok(());
        }
        let cells = CellRenderer::for_batch(batch, self.max_width)?;
        for row in 0..batch.num_rows() {
            let rendered: Vec<String> = cells.iter().map(|c| c.render(row)).collect();
            if self.widths.is_some() {
                self.write_row(&rendered)?;
            } else {
                self.pending.push(rendered);
                if self.pending.len() >= self.sample_rows {
                    self.flush_pending()?;
                }
            }
        }
        Ok(())
    }

    /// Fixes the column widths from the header and the buffered rows, then prints them.
    fn flush_pending(&mut self) -> io::Result<()> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.pending {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let header = self.format_line(&self.headers, &widths, false);
        let rule = widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+");
        let mut text = String::new();
        text.push_str(&header);
        text.push_str(&rule);
        text.push('\n');
        for row in std::mem::take(&mut self.pending) {
            text.push_str(&self.format_line(&row, &widths, true));
        }
        self.widths = Some(widths);
        self.sink.write_all(text.as_bytes())
    }

    fn write_row(&mut self, cells: &[String]) -> io::Result<()> {
        let widths = self.widths.as_deref().unwrap_or_default();
        let line = self.format_line(cells, widths, true);
        self.sink.write_all(line.as_bytes())
    }

    fn format_line(&self, cells: &[String], widths: &[usize], align: bool) -> String {
        let mut line = String::new();
        for (i, (cell, &width)) in cells.iter().zip(widths).enumerate() {
            line.push_str(if i == 0 { " " } else { " | " });
            let cell = fit(cell, width);
            let pad = width.saturating_sub(cell.chars().count());
            if align && self.right_aligned[i] {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(&cell);
            } else {
                line.push_str(&cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        let trimmed = line.trim_end().len();
        line.truncate(trimmed);
        line.push('\n');
        line
    }

    fn finish(mut self, rows: u64) -> io::Result<()> {
        if self.headers.is_empty() {
            self.sink.write_all(b"OK\n")?;
            return self.sink.flush();
        }
        if self.widths.is_none() {
            self.flush_pending()?;
        }
        let footer = if rows == 1 {
            "(1 row)\n".to_string()
        } else {
            format!("({rows} rows)\n")
        };
        self.sink.write_all(footer.as_bytes())?;
        self.sink.flush()
    }
}

/// Cuts `text` to at most `width` characters, ending in `…` when cut, after making control
/// characters visible (`\n`, `\t`, …) so one row stays on one line.
fn fit(text: &str, width: usize) -> String {
    let mut visible = String::with_capacity(text.len().min(width * 4 + 4));
    let mut count = 0;
    for c in text.chars() {
        if count > width {
            break;
        }
        match c {
            '\n' => visible.push_str("\\n"),
            '\r' => visible.push_str("\\r"),
            '\t' => visible.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(visible, "\\u{{{:x}}}", c as u32);
            }
            c => visible.push(c),
        }
        count = visible.chars().count();
    }
    if count <= width {
        return visible;
    }
    let mut cut: String = visible.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Renders the cells of one column, Athena-console style, stopping early once a value is
/// longer than the column can show.
struct CellRenderer<'a> {
    node: Node<'a>,
    max_width: usize,
}

impl<'a> CellRenderer<'a> {
    fn for_batch(batch: &'a RecordBatch, max_width: usize) -> io::Result<Vec<Self>> {
        batch
            .columns()
            .iter()
            .map(|c| {
                Ok(CellRenderer {
                    node: Node::new(c.as_ref()).map_err(io::Error::other)?,
                    max_width,
                })
            })
            .collect()
    }

    fn render(&self, row: usize) -> String {
        let mut out = String::new();
        // Every character takes at most 4 bytes, so this many bytes always hold more
        // characters than the widest cell shows: truncation still sees that the value is longer.
        let limit = (self.max_width + 1) * 4;
        self.node.write(row, &mut out, limit, false);
        fit(&out, self.max_width)
    }
}

struct Node<'a> {
    nulls: Option<NullBuffer>,
    kind: NodeKind<'a>,
}

enum NodeKind<'a> {
    Utf8(&'a StringArray),
    LargeUtf8(&'a LargeStringArray),
    Utf8View(&'a StringViewArray),
    Display(ArrayFormatter<'a>),
    List(&'a ListArray, Box<Node<'a>>),
    LargeList(&'a LargeListArray, Box<Node<'a>>),
    FixedList(&'a FixedSizeListArray, Box<Node<'a>>),
    Struct(Vec<(&'a str, Node<'a>)>),
    Map(&'a MapArray, Box<Node<'a>>, Box<Node<'a>>),
}

const DISPLAY_OPTIONS: FormatOptions<'static> = FormatOptions::new();

impl<'a> Node<'a> {
    fn new(array: &'a dyn Array) -> Result<Self, ArrowError> {
        let kind = match array.data_type() {
            DataType::Utf8 => NodeKind::Utf8(array.as_string::<i32>()),
            DataType::LargeUtf8 => NodeKind::LargeUtf8(array.as_string::<i64>()),
            DataType::Utf8View => NodeKind::Utf8View(array.as_string_view()),
            DataType::List(_) => {
                let list = array.as_list::<i32>();
                NodeKind::List(list, Box::new(Node::new(list.values().as_ref())?))
            }
            DataType::LargeList(_) => {
                let list = array.as_list::<i64>();
                NodeKind::LargeList(list, Box::new(Node::new(list.values().as_ref())?))
            }
            DataType::FixedSizeList(_, _) => {
                let list = array.as_fixed_size_list();
                NodeKind::FixedList(list, Box::new(Node::new(list.values().as_ref())?))
            }
            DataType::Struct(fields) => {
                let structs: &StructArray = array.as_struct();
                NodeKind::Struct(
                    fields
                        .iter()
                        .zip(structs.columns())
                        .map(|(f, c)| Ok((f.name().as_str(), Node::new(c.as_ref())?)))
                        .collect::<Result<_, ArrowError>>()?,
                )
            }
            DataType::Map(_, _) => {
                let map = array.as_map();
                NodeKind::Map(
                    map,
                    Box::new(Node::new(map.keys().as_ref())?),
                    Box::new(Node::new(map.values().as_ref())?),
                )
            }
            _ => NodeKind::Display(ArrayFormatter::try_new(array, &DISPLAY_OPTIONS)?),
        };
        Ok(Node {
            nulls: array.logical_nulls(),
            kind,
        })
    }

    fn is_null(&self, row: usize) -> bool {
        self.nulls.as_ref().is_some_and(|n| n.is_null(row))
    }

    /// Appends value `row` to `out`, giving up once `out` holds `limit` bytes.
    fn write(&self, row: usize, out: &mut String, limit: usize, nested: bool) {
        if out.len() >= limit {
            return;
        }
        if self.is_null(row) {
            out.push_str(if nested { "null" } else { "NULL" });
            return;
        }
        match &self.kind {
            NodeKind::Utf8(a) => push_bounded(out, a.value(row), limit),
            NodeKind::LargeUtf8(a) => push_bounded(out, a.value(row), limit),
            NodeKind::Utf8View(a) => push_bounded(out, a.value(row), limit),
            NodeKind::Display(f) => {
                let _ = write!(out, "{}", f.value(row));
            }
            NodeKind::List(list, child) => {
                let offsets = list.value_offsets();
                let range = offsets[row] as usize..offsets[row + 1] as usize;
                write_list(child, range, out, limit);
            }
            NodeKind::LargeList(list, child) => {
                let offsets = list.value_offsets();
                let range = offsets[row] as usize..offsets[row + 1] as usize;
                write_list(child, range, out, limit);
            }
            NodeKind::FixedList(list, child) => {
                let start = list.value_offset(row) as usize;
                let range = start..start + list.value_length() as usize;
                write_list(child, range, out, limit);
            }
            NodeKind::Struct(fields) => {
                out.push('{');
                let mut first = true;
                for (name, child) in fields {
                    if child.is_null(row) {
                        continue;
                    }
                    if out.len() >= limit {
                        break;
                    }
                    if !first {
                        out.push_str(", ");
                    }
                    first = false;
                    out.push_str(name);
                    out.push('=');
                    child.write(row, out, limit, true);
                }
                out.push('}');
            }
            NodeKind::Map(map, keys, values) => {
                let offsets = map.value_offsets();
                out.push('{');
                for (n, entry) in (offsets[row] as usize..offsets[row + 1] as usize).enumerate() {
                    if out.len() >= limit {
                        break;
                    }
                    if n > 0 {
                        out.push_str(", ");
                    }
                    keys.write(entry, out, limit, true);
                    out.push('=');
                    values.write(entry, out, limit, true);
                }
                out.push('}');
            }
        }
    }
}

fn write_list(child: &Node<'_>, range: std::ops::Range<usize>, out: &mut String, limit: usize) {
    out.push('[');
    for (n, element) in range.enumerate() {
        if out.len() >= limit {
            break;
        }
        if n > 0 {
            out.push_str(", ");
        }
        child.write(element, out, limit, true);
    }
    out.push(']');
}

/// Appends as much of `value` as fits below `limit` bytes, cutting at a character boundary.
fn push_bounded(out: &mut String, value: &str, limit: usize) {
    let room = limit.saturating_sub(out.len());
    if value.len() <= room {
        out.push_str(value);
    } else {
        out.push_str(&value[..value.floor_char_boundary(room)]);
    }
}

// ---------------------------------------------------------------------------------------------
// Schema description

/// Athena/Trino name of an Arrow type: `varchar`, `integer`, `array<varchar>`,
/// `struct<family varchar, given array<varchar>>`, …
pub fn sql_type_name(data_type: &DataType) -> String {
    match data_type {
        DataType::Null => "unknown".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Int8 => "tinyint".into(),
        DataType::Int16 | DataType::UInt8 => "smallint".into(),
        DataType::Int32 | DataType::UInt16 => "integer".into(),
        DataType::Int64 | DataType::UInt32 => "bigint".into(),
        DataType::UInt64 => "decimal(20,0)".into(),
        DataType::Float16 | DataType::Float32 => "real".into(),
        DataType::Float64 => "double".into(),
        DataType::Decimal32(p, s)
        | DataType::Decimal64(p, s)
        | DataType::Decimal128(p, s)
        | DataType::Decimal256(p, s) => format!("decimal({p},{s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "varchar".into(),
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => "varbinary".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Time32(_) | DataType::Time64(_) => "time".into(),
        DataType::Timestamp(_, _) => "timestamp".into(),
        DataType::Duration(_) | DataType::Interval(_) => "interval".into(),
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::FixedSizeList(f, _)
        | DataType::ListView(f)
        | DataType::LargeListView(f) => format!("array<{}>", sql_type_name(f.data_type())),
        DataType::Struct(fields) => format!(
            "struct<{}>",
            fields
                .iter()
                .map(|f| format!("{} {}", f.name(), sql_type_name(f.data_type())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => format!(
                "map<{}, {}>",
                sql_type_name(kv[0].data_type()),
                sql_type_name(kv[1].data_type())
            ),
            other => format!("map<{}>", sql_type_name(other)),
        },
        DataType::Dictionary(_, value) => sql_type_name(value),
        DataType::RunEndEncoded(_, value) => sql_type_name(value.data_type()),
        other => other.to_string().to_lowercase(),
    }
}

/// Longest inline `struct<…>` type a collapsed line shows before falling back to a field count.
const INLINE_STRUCT_CHARS: usize = 60;

/// The type of a field as one describe line shows it, and the struct fields to list below it
/// when it is expanded. Lists and map values are looked through, so `name` reads
/// `array<struct>` with the `HumanName` fields indented under it.
fn describe_shape(data_type: &DataType, expand: bool) -> (String, Option<&Fields>, bool) {
    match data_type {
        DataType::Struct(fields) if expand => ("struct".into(), Some(fields), false),
        DataType::Struct(fields) => {
            let full = sql_type_name(data_type);
            if full.chars().count() <= INLINE_STRUCT_CHARS {
                (full, None, false)
            } else {
                let n = fields.len();
                let noun = if n == 1 { "field" } else { "fields" };
                (format!("struct<{n} {noun}>"), None, true)
            }
        }
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::FixedSizeList(f, _)
        | DataType::ListView(f)
        | DataType::LargeListView(f) => {
            let (inner, children, hidden) = describe_shape(f.data_type(), expand);
            (format!("array<{inner}>"), children, hidden)
        }
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => {
                let (value, children, hidden) = describe_shape(kv[1].data_type(), expand);
                (
                    format!("map<{}, {value}>", sql_type_name(kv[0].data_type())),
                    children,
                    hidden,
                )
            }
            _ => (sql_type_name(data_type), None, false),
        },
        DataType::Dictionary(_, value) => describe_shape(value, expand),
        other => (sql_type_name(other), None, false),
    }
}

/// Renders `\d TABLE`: one line per column, `name  type`, with the fields of structs (and of
/// lists of structs) indented below their column. Structs nested deeper than `depth` levels
/// (`None`: no limit) are summarised on their line, inline when short.
pub fn describe_tree(table: &str, schema: &Schema, depth: Option<usize>) -> String {
    struct Line {
        indent: usize,
        name: String,
        ty: String,
    }
    fn collect(
        fields: &Fields,
        level: usize,
        depth: Option<usize>,
        lines: &mut Vec<Line>,
        hidden: &mut bool,
    ) {
        for field in fields {
            let expand = depth.is_none_or(|d| level < d);
            let (ty, children, summarised) = describe_shape(field.data_type(), expand);
            *hidden |= summarised;
            lines.push(Line {
                indent: level,
                name: field.name().clone(),
                ty,
            });
            if let Some(children) = children {
                collect(children, level + 1, depth, lines, hidden);
            }
        }
    }

    let mut lines = Vec::new();
    let mut hidden = false;
    collect(schema.fields(), 1, depth, &mut lines, &mut hidden);
    let name_width = lines
        .iter()
        .map(|l| 2 * (l.indent - 1) + l.name.chars().count())
        .chain(std::iter::once("column".len()))
        .max()
        .unwrap_or(0);
    let type_width = lines
        .iter()
        .map(|l| l.ty.chars().count())
        .chain(std::iter::once("type".len()))
        .max()
        .unwrap_or(0);

    let columns = schema.fields().len();
    let mut text = format!(
        "Table {table} ({columns} column{})\n",
        if columns == 1 { "" } else { "s" }
    );
    let _ = writeln!(text, " {:<name_width$}  type", "column");
    let _ = writeln!(
        text,
        " {}  {}",
        "-".repeat(name_width),
        "-".repeat(type_width)
    );
    for line in &lines {
        let name = format!("{}{}", "  ".repeat(line.indent - 1), line.name);
        let _ = writeln!(text, " {name:<name_width$}  {}", line.ty);
    }
    if hidden {
        let depth = depth.unwrap_or(0);
        let levels = if depth == 1 { "level" } else { "levels" };
        let _ = writeln!(
            text,
            "(structs nested deeper than {depth} {levels} are summarised; \\d+ {table} shows every level)"
        );
    }
    text
}

/// `\d TABLE` as a result set for machine formats: one row per column and nested field, with
/// its dotted path (`name.family`) and full SQL type.
pub fn describe_batch(schema: &Schema) -> Result<RecordBatch, ArrowError> {
    fn collect(fields: &Fields, prefix: &str, paths: &mut Vec<String>, types: &mut Vec<String>) {
        for field in fields {
            let path = if prefix.is_empty() {
                field.name().clone()
            } else {
                format!("{prefix}.{}", field.name())
            };
            paths.push(path.clone());
            types.push(sql_type_name(field.data_type()));
            if let (_, Some(children), _) = describe_shape(field.data_type(), true) {
                collect(children, &path, paths, types);
            }
        }
    }
    let mut paths = Vec::new();
    let mut types = Vec::new();
    collect(schema.fields(), "", &mut paths, &mut types);
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("column", DataType::Utf8, false),
            Field::new("type", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(StringArray::from(paths)),
            Arc::new(StringArray::from(types)),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BooleanArray, Float64Array, ListBuilder, StringBuilder};

    fn render(format: OutputFormat, batches: &[RecordBatch], options: &RenderOptions) -> String {
        let mut out = Vec::new();
        let mut writer =
            ResultWriter::new(format, batches[0].schema(), &mut out, options).expect("writer");
        for batch in batches {
            writer.write(batch).expect("write");
        }
        writer.finish().expect("finish");
        String::from_utf8(out).expect("utf8")
    }

    /// A small HumanName-like batch: id, active flag, score, and name as list<struct>.
    fn people() -> RecordBatch {
        let given_field = Arc::new(Field::new("item", DataType::Utf8, true));
        let name_fields = Fields::from(vec![
            Field::new("use", DataType::Utf8, true),
            Field::new("family", DataType::Utf8, true),
            Field::new("given", DataType::List(given_field.clone()), true),
        ]);
        let mut given = ListBuilder::new(StringBuilder::new()).with_field(given_field);
        given.values().append_value("John");
        given.values().append_value("Jacob");
        given.append(true);
        given.append(false);
        given.append(true);
        let given = Arc::new(given.finish());
        let names = StructArray::new(
            name_fields.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("official"), None, None])),
                Arc::new(StringArray::from(vec![Some("Smith"), Some("Doe"), None])),
                given,
            ],
            None,
        );
        let name_item = Arc::new(Field::new("item", DataType::Struct(name_fields), true));
        // Row 0 has two names, row 1 one, row 2 none (null list).
        let name = ListArray::new(
            name_item,
            arrow::buffer::OffsetBuffer::new(vec![0, 2, 3, 3].into()),
            Arc::new(names),
            Some(NullBuffer::from(vec![true, true, false])),
        );
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("active", DataType::Boolean, true),
            Field::new("score", DataType::Float64, true),
            Field::new("name", name.data_type().clone(), true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![
                    Some("a1"),
                    Some("b-with-a-rather-long-identifier"),
                    None,
                ])),
                Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])),
                Arc::new(Float64Array::from(vec![Some(1.5), Some(22.0), None])),
                Arc::new(name),
            ],
        )
        .expect("batch")
    }

    #[test]
    fn table_renders_nested_values_nulls_and_footer() {
        let options = RenderOptions {
            max_column_width: 80,
            ..RenderOptions::default()
        };
        let text = render(OutputFormat::Table, &[people()], &options);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert_eq!(
            lines[0],
            " id                              | active | score | name"
        );
        assert!(lines[1].starts_with("---------------------------------+--------+"));
        assert_eq!(
            lines[2],
            " a1                              | true   |   1.5 | \
             [{use=official, family=Smith, given=[John, Jacob]}, {family=Doe}]"
        );
        assert_eq!(
            lines[3],
            " b-with-a-rather-long-identifier | NULL   |  22.0 | [{given=[]}]"
        );
        assert_eq!(
            lines[4],
            " NULL                            | false  |  NULL | NULL"
        );
        assert_eq!(lines[5], "(3 rows)");
    }

    #[test]
    fn table_truncates_wide_cells_with_ellipsis() {
        let options = RenderOptions {
            max_column_width: 12,
            ..RenderOptions::default()
        };
        let text = render(OutputFormat::Table, &[people()], &options);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[2], " a1           | true   |   1.5 | [{use=offic…");
        assert_eq!(lines[3], " b-with-a-ra… | NULL   |  22.0 | [{given=[]}]");
        for line in &lines[2..5] {
            for cell in line.split(" | ") {
                assert!(cell.trim().chars().count() <= 12, "{cell:?} in {line:?}");
            }
        }
    }

    #[test]
    fn table_keeps_sampled_widths_for_later_rows() {
        let options = RenderOptions {
            max_column_width: 40,
            width_sample_rows: 1,
            ..RenderOptions::default()
        };
        let batch = people();
        let text = render(
            OutputFormat::Table,
            &[batch.slice(0, 1), batch.slice(1, 2)],
            &options,
        );
        let lines: Vec<&str> = text.lines().collect();
        // Widths come from the header and the first row only; the long id is cut to fit.
        assert_eq!(lines[0], " id | active | score | name");
        assert_eq!(lines[3], " b… | NULL   |  22.0 | [{given=[]}]");
        assert_eq!(lines[5], "(3 rows)");
    }

    #[test]
    fn table_escapes_control_characters() {
        assert_eq!(fit("a\nb\tc", 10), "a\\nb\\tc");
        assert_eq!(fit("line1\nline2", 6), "line1…");
        assert_eq!(fit("ééééé", 5), "ééééé");
        assert_eq!(fit("éééééé", 5), "éééé…");
    }

    #[test]
    fn table_of_empty_result_shows_header_and_zero_rows() {
        let batch = people().slice(0, 0);
        let text = render(OutputFormat::Table, &[batch], &RenderOptions::default());
        assert_eq!(
            text,
            " id | active | score | name\n----+--------+-------+------\n(0 rows)\n"
        );
    }

    #[test]
    fn csv_writes_one_header_and_nested_values_as_json() {
        let batch = people();
        let text = render(
            OutputFormat::Csv,
            &[batch.slice(0, 1), batch.slice(1, 2)],
            &RenderOptions::default(),
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            vec![
                "id,active,score,name",
                r#"a1,true,1.5,"[{""use"":""official"",""family"":""Smith"",""given"":[""John"",""Jacob""]},{""family"":""Doe""}]""#,
                r#"b-with-a-rather-long-identifier,,22.0,"[{""given"":[]}]""#,
                ",false,,",
            ]
        );
    }

    #[test]
    fn csv_of_empty_result_still_has_its_header() {
        let text = render(
            OutputFormat::Csv,
            &[people().slice(0, 0)],
            &RenderOptions::default(),
        );
        assert_eq!(text, "id,active,score,name\n");
    }

    #[test]
    fn json_writes_one_object_per_row() {
        let text = render(OutputFormat::Json, &[people()], &RenderOptions::default());
        let rows: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0]["name"][0]["given"][1], "Jacob");
        assert_eq!(rows[1]["score"], 22.0);
        assert!(rows[1].get("active").is_none());
        assert_eq!(rows[2], serde_json::json!({"active": false}));
    }

    #[test]
    fn parquet_round_trips() {
        let batch = people();
        let mut out = Vec::new();
        let mut writer = ResultWriter::new(
            OutputFormat::Parquet,
            batch.schema(),
            &mut out,
            &RenderOptions::default(),
        )
        .expect("writer");
        writer.write(&batch).expect("write");
        assert_eq!(writer.finish().expect("finish"), 3);
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(
            bytes::Bytes::from(out),
            1024,
        )
        .expect("reader");
        let read: Vec<RecordBatch> = reader.collect::<Result<_, _>>().expect("batches");
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].num_rows(), 3);
        assert_eq!(read[0].column(3).as_ref(), batch.column(3).as_ref());
    }

    #[test]
    fn output_failures_are_reported_as_io() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        for format in [OutputFormat::Table, OutputFormat::Csv, OutputFormat::Json] {
            let mut sink = Closed;
            let batch = people();
            let mut writer = ResultWriter::new(
                format,
                batch.schema(),
                &mut sink,
                &RenderOptions {
                    width_sample_rows: 1,
                    ..RenderOptions::default()
                },
            )
            .expect("writer");
            let error = writer
                .write(&batch)
                .and_then(|_| writer.finish().map(|_| ()))
                .expect_err("closed sink");
            assert!(error.is_broken_pipe(), "{format}: {error:?}");
        }
    }

    #[test]
    fn describe_tree_indents_nested_fields_and_collapses_deep_ones() {
        let schema = people().schema();
        let text = describe_tree("people", &schema, Some(1));
        let name_type = "array<struct<use varchar, family varchar, given array<varchar>>>";
        assert_eq!(
            text,
            format!(
                "Table people (4 columns)\n \
                 column  type\n \
                 ------  {}\n \
                 id      varchar\n \
                 active  boolean\n \
                 score   double\n \
                 name    {name_type}\n",
                "-".repeat(name_type.len())
            )
        );
        let text = describe_tree("people", &schema, Some(2));
        assert!(
            text.contains(" name      array<struct>\n   use     varchar\n   family  varchar\n   given   array<varchar>\n"),
            "{text}"
        );
    }

    #[test]
    fn describe_summarises_wide_structs_beyond_depth() {
        let wide: Vec<Field> = (0..12)
            .map(|i| Field::new(format!("field_{i}"), DataType::Int32, true))
            .collect();
        let schema = Schema::new(vec![Field::new(
            "meta",
            DataType::Struct(Fields::from(wide)),
            true,
        )]);
        let text = describe_tree("t", &schema, Some(1));
        assert!(text.contains(" meta    struct<12 fields>\n"), "{text}");
        assert!(text.ends_with("\\d+ t shows every level)\n"), "{text}");
        let text = describe_tree("t", &schema, None);
        assert!(text.contains("   field_11  integer\n"), "{text}");
        assert!(!text.contains("summarised"));
    }

    #[test]
    fn describe_batch_lists_dotted_paths() {
        let batch = describe_batch(&people().schema()).expect("batch");
        let paths = batch.column(0).as_string::<i32>();
        let types = batch.column(1).as_string::<i32>();
        let rows: Vec<(&str, &str)> = (0..batch.num_rows())
            .map(|i| (paths.value(i), types.value(i)))
            .collect();
        assert_eq!(rows[3].0, "name");
        assert_eq!(rows[4], ("name.use", "varchar"));
        assert_eq!(rows[6], ("name.given", "array<varchar>"));
    }

    #[test]
    fn sql_type_names_follow_athena() {
        assert_eq!(sql_type_name(&DataType::Int32), "integer");
        assert_eq!(sql_type_name(&DataType::Int64), "bigint");
        assert_eq!(
            sql_type_name(&DataType::Timestamp(
                arrow::datatypes::TimeUnit::Microsecond,
                Some("+00:00".into())
            )),
            "timestamp"
        );
        assert_eq!(
            sql_type_name(&DataType::List(Arc::new(Field::new(
                "element",
                DataType::Utf8,
                true
            )))),
            "array<varchar>"
        );
    }
}
