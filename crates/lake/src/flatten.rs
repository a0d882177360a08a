//! Flattening stored FHIR JSON into Arrow record batches of the table schema.
//!
//! Only the top-level columns that hold data in a batch are decoded from JSON; the others are
//! added as all-null arrays of their type, so every file carries the full table schema (see
//! the note in [`flatten`] on why iceberg-rust needs that).

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, StringArray, new_null_array};
use arrow::compute::cast;
use arrow::datatypes::{Field as ArrowField, Schema as ArrowSchema};
use arrow::error::ArrowError;
use arrow::json::ReaderBuilder;
use arrow::record_batch::RecordBatch;
use serde_json::{Map, Value};

use fhirlake_schema::{
    Field, FieldList, Kind, LAST_UPDATED_COLUMN, RESOURCE_COLUMN, ResourceSchema, VERSION_COLUMN,
};

/// Errors flattening resources.
#[derive(Debug, thiserror::Error)]
pub enum FlattenError {
    #[error("stored resource {0} is not a JSON object: {1}")]
    BadJson(String, String),
    #[error("building Arrow data for {resource_type}: {source}")]
    Arrow {
        resource_type: String,
        source: arrow::error::ArrowError,
    },
}

/// One resource version to flatten.
pub struct FlatInput<'a> {
    pub id: &'a str,
    pub version: i64,
    pub last_updated: &'a str,
    pub json: &'a str,
}

/// Flattens `inputs` (in order: row i is input i) into one batch of the full table schema.
pub fn flatten(
    schema: &ResourceSchema,
    inputs: &[FlatInput<'_>],
) -> Result<RecordBatch, FlattenError> {
    let mut presence = vec![false; schema.fields.len()];
    let mut rows = Vec::with_capacity(inputs.len());
    for input in inputs {
        let value: Value = serde_json::from_str(input.json)
            .map_err(|e| FlattenError::BadJson(input.id.to_string(), e.to_string()))?;
        let Value::Object(obj) = value else {
            return Err(FlattenError::BadJson(
                input.id.to_string(),
                "not an object".into(),
            ));
        };
        let row = normalize_object(obj, schema.columns(), Some(&mut presence));
        rows.push(Value::Object(row));
    }
    if let Some(i) = schema.fields.iter().position(|f| f.name == "id") {
        presence[i] = true;
    }
    let fields: Vec<ArrowField> = schema
        .fields
        .iter()
        .zip(&presence)
        .filter(|(_, present)| **present)
        .map(|(f, _)| f.to_arrow())
        .collect();
    let arrow_schema = Arc::new(ArrowSchema::new(fields));
    let arrow_err = |source| FlattenError::Arrow {
        resource_type: schema.resource_type.clone(),
        source,
    };
    let mut decoder = ReaderBuilder::new(arrow_schema.clone())
        .with_batch_size(rows.len().max(1))
        .build_decoder()
        .map_err(arrow_err)?;
    decoder.serialize(&rows).map_err(arrow_err)?;
    let present = decoder
        .flush()
        .map_err(arrow_err)?
        .unwrap_or_else(|| RecordBatch::new_empty(arrow_schema));
    // Absent columns are added as all-null arrays (cheap: no per-row work). They must be in
    // the file: iceberg-rust 0.10's reader can fill a missing primitive or struct column with
    // nulls, but not a list, nor a struct containing one, and almost every FHIR element has
    // a list (`extension`) inside.
    let full = Arc::new(schema.arrow_schema());
    let columns = full
        .fields()
        .iter()
        .map(|f| match system_column(f, inputs)? {
            Some(column) => Ok(column),
            None => Ok(present
                .column_by_name(f.name())
                .cloned()
                .unwrap_or_else(|| new_null_array(f.data_type(), present.num_rows()))),
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(arrow_err)?;
    RecordBatch::try_new(full, columns).map_err(arrow_err)
}

/// The columns fhirlake adds (the stored JSON, its version and time), built straight from the
/// inputs: passing the whole JSON text through the JSON decoder as one more string value
/// copied and re-scanned every resource twice.
fn system_column(
    field: &ArrowField,
    inputs: &[FlatInput<'_>],
) -> Result<Option<ArrayRef>, ArrowError> {
    let column: ArrayRef = match field.name().as_str() {
        RESOURCE_COLUMN => Arc::new(StringArray::from_iter_values(inputs.iter().map(|i| i.json))),
        VERSION_COLUMN => Arc::new(Int64Array::from_iter_values(
            inputs.iter().map(|i| i.version),
        )),
        LAST_UPDATED_COLUMN => Arc::new(StringArray::from_iter_values(
            inputs.iter().map(|i| i.last_updated),
        )),
        _ => return Ok(None),
    };
    if column.data_type() == field.data_type() {
        Ok(Some(column))
    } else {
        cast(&column, field.data_type()).map(Some)
    }
}

/// Keeps known fields, turns JSON-kind values into their text, and records which top-level
/// fields are present.
fn normalize_object(
    obj: Map<String, Value>,
    fields: FieldList<'_>,
    presence: Option<&mut [bool]>,
) -> Map<String, Value> {
    let mut presence = presence;
    let mut out = Map::with_capacity(obj.len());
    for (key, value) in obj {
        let Some((i, field)) = fields.get(&key) else {
            continue;
        };
        if field.fhir == "system" || value.is_null() {
            continue;
        }
        let normalized = if field.list {
            match value {
                Value::Array(items) => Value::Array(
                    items
                        .into_iter()
                        .map(|item| normalize_value(item, field))
                        .collect(),
                ),
                single => Value::Array(vec![normalize_value(single, field)]),
            }
        } else {
            normalize_value(value, field)
        };
        if let Some(p) = presence.as_deref_mut() {
            p[i] = true;
        }
        out.insert(key, normalized);
    }
    out
}

fn normalize_value(value: Value, field: &Field) -> Value {
    match (field.kind, value) {
        (_, Value::Null) => Value::Null,
        (Kind::Json, v) => Value::String(v.to_string()),
        (Kind::Struct, Value::Object(obj)) => {
            Value::Object(normalize_object(obj, field.children(), None))
        }
        (_, v) => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use fhirlake_schema::Registry;

    #[test]
    fn flattens_present_columns_and_null_fills_the_rest() {
        let schema = Registry::global().get("Patient").unwrap();
        let json = r#"{"resourceType":"Patient","id":"p1","extension":[{"url":"u","valueString":"Smith"}],"name":[{"family":"Doe","given":["Jo","Ann"]}],"birthDate":"1970-01-02","_birthDate":{"extension":[{"url":"t"}]}}"#;
        let batch = flatten(
            &schema,
            &[FlatInput {
                id: "p1",
                version: 2,
                last_updated: "2026-01-01T00:00:00.000Z",
                json,
            }],
        )
        .unwrap();
        let names: Vec<&str> = batch
            .schema_ref()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(
            names.len(),
            schema.fields.len(),
            "every column is in the batch"
        );
        assert!(arrow::array::Array::is_null(
            batch.column_by_name("telecom").unwrap().as_ref(),
            0
        ));
        let ext = batch.column_by_name("extension").unwrap().as_list::<i32>();
        assert_eq!(
            ext.value(0).as_string::<i32>().value(0),
            r#"{"url":"u","valueString":"Smith"}"#
        );
        let name = batch
            .column_by_name("name")
            .unwrap()
            .as_list::<i32>()
            .value(0);
        let name = name.as_struct();
        assert_eq!(
            name.column_by_name("family")
                .unwrap()
                .as_string::<i32>()
                .value(0),
            "Doe"
        );
        assert_eq!(
            batch
                .column_by_name("_resource")
                .unwrap()
                .as_string::<i32>()
                .value(0),
            json
        );
        let version = batch.column_by_name(VERSION_COLUMN).unwrap();
        assert_eq!(
            version
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0),
            2
        );
        let updated = arrow::compute::cast(
            batch.column_by_name(LAST_UPDATED_COLUMN).unwrap(),
            &arrow::datatypes::DataType::Int64,
        )
        .unwrap();
        // 2026-01-01T00:00:00Z in the column's unit (microseconds).
        assert_eq!(
            updated
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0),
            1_767_225_600_000_000
        );
        assert!(
            batch
                .schema_ref()
                .field_with_name("name")
                .unwrap()
                .metadata()
                .contains_key("PARQUET:field_id")
        );
    }
}
