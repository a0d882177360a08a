//! Arrow values as JSON, for rendering structs and arrays as text and for `json_extract` on
//! nested columns.
//!
//! Struct fields that are NULL are left out, so a FHIR element renders as the compact JSON it
//! came from (with SQL's lower-case names) rather than a wall of `"_given": null` entries.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, Float16Type, Float32Type, Float64Type, Int8Type, Int16Type,
    Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::error::ArrowError;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::{Map, Number, Value};

use super::datetime::{format_timestamp_iso, timestamp_at};

fn float(v: f64) -> Value {
    Number::from_f64(v).map_or_else(|| Value::String(v.to_string()), Value::Number)
}

/// The value of row `row` of `array` as JSON.
pub(crate) fn value_at(array: &dyn Array, row: usize) -> Result<Value, ArrowError> {
    if matches!(array.data_type(), DataType::Null) || array.is_null(row) {
        return Ok(Value::Null);
    }
    Ok(match array.data_type() {
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Int8 => array.as_primitive::<Int8Type>().value(row).into(),
        DataType::Int16 => array.as_primitive::<Int16Type>().value(row).into(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(row).into(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).into(),
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(row).into(),
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(row).into(),
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(row).into(),
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(row).into(),
        DataType::Float16 => float(array.as_primitive::<Float16Type>().value(row).to_f64()),
        DataType::Float32 => float(f64::from(array.as_primitive::<Float32Type>().value(row))),
        DataType::Float64 => float(array.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(row).to_string()),
        DataType::LargeUtf8 => Value::String(array.as_string::<i64>().value(row).to_string()),
        DataType::Utf8View => Value::String(array.as_string_view().value(row).to_string()),
        DataType::Date32 => match array.as_primitive::<Date32Type>().value_as_date(row) {
            Some(d) => Value::String(d.format("%Y-%m-%d").to_string()),
            None => Value::Null,
        },
        DataType::Date64 => match array.as_primitive::<Date64Type>().value_as_date(row) {
            Some(d) => Value::String(d.format("%Y-%m-%d").to_string()),
            None => Value::Null,
        },
        DataType::Timestamp(..) => match timestamp_at(array, row)? {
            Some(ts) => Value::String(format_timestamp_iso(&ts)),
            None => Value::Null,
        },
        DataType::Struct(fields) => {
            let array = array.as_struct();
            let mut object = Map::with_capacity(fields.len());
            for (field, column) in fields.iter().zip(array.columns()) {
                let value = value_at(column.as_ref(), row)?;
                if !value.is_null() {
                    object.insert(field.name().clone(), value);
                }
            }
            Value::Object(object)
        }
        DataType::List(_) => list(array.as_list::<i32>().value(row).as_ref())?,
        DataType::LargeList(_) => list(array.as_list::<i64>().value(row).as_ref())?,
        DataType::FixedSizeList(..) => list(array.as_fixed_size_list().value(row).as_ref())?,
        DataType::Map(..) => {
            let entries = array.as_map().value(row);
            let keys = entries.column(0);
            let values = entries.column(1);
            let mut object = Map::with_capacity(entries.len());
            for i in 0..entries.len() {
                let key = match value_at(keys.as_ref(), i)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                object.insert(key, value_at(values.as_ref(), i)?);
            }
            Value::Object(object)
        }
        _ => {
            // Decimals, intervals, binaries...: Arrow's own text form, as a JSON string.
            let formatter = ArrayFormatter::try_new(array, &FormatOptions::default())?;
            Value::String(formatter.value(row).to_string())
        }
    })
}

fn list(values: &dyn Array) -> Result<Value, ArrowError> {
    (0..values.len())
        .map(|i| value_at(values, i))
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}
