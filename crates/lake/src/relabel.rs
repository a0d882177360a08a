//! Viewing an Arrow array under another type of the same physical layout.
//!
//! Parquet hands back nested arrays whose field names and metadata can differ from the table
//! schema's (field ids, list element names), and SQL shows every name in lower case; neither is
//! a reason to copy data. Re-labelling rebuilds only the `ArrayData` nodes whose type changes
//! (structs and the lists holding them) and shares every buffer.

use std::sync::Arc;

use arrow::array::{Array, ArrayData, ArrayRef, make_array};
use arrow::datatypes::DataType;
use arrow::error::ArrowError;

/// Child types of `data_type` in the order of `ArrayData::child_data`.
fn child_types(data_type: &DataType) -> Vec<DataType> {
    match data_type {
        DataType::Struct(fields) => fields.iter().map(|f| f.data_type().clone()).collect(),
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _)
        | DataType::Map(f, _) => vec![f.data_type().clone()],
        DataType::Dictionary(_, v) => vec![v.as_ref().clone()],
        DataType::RunEndEncoded(r, v) => vec![r.data_type().clone(), v.data_type().clone()],
        DataType::Union(fields, _) => fields.iter().map(|(_, f)| f.data_type().clone()).collect(),
        _ => Vec::new(),
    }
}

/// Re-labels `data` with `target`, which must have the same physical layout.
///
/// Nodes whose type is already `target` are returned untouched, so leaves (strings, numbers)
/// are never rebuilt or re-validated; rebuilt nodes are validated at their own level only.
fn retype(data: ArrayData, target: &DataType) -> Result<ArrayData, ArrowError> {
    if data.data_type() == target {
        return Ok(data);
    }
    let targets = child_types(target);
    if targets.len() != data.child_data().len() {
        return Err(ArrowError::SchemaError(format!(
            "cannot view {} as {target}: different number of children",
            data.data_type()
        )));
    }
    let children = data
        .child_data()
        .iter()
        .zip(&targets)
        .map(|(child, t)| retype(child.clone(), t))
        .collect::<Result<Vec<_>, _>>()?;
    data.into_builder()
        .data_type(target.clone())
        .child_data(children)
        .build()
}

/// `array` re-labelled with `target` (same layout, other field names), sharing all buffers.
pub fn relabel_array(array: &ArrayRef, target: &DataType) -> Result<ArrayRef, ArrowError> {
    if array.data_type() == target {
        return Ok(Arc::clone(array));
    }
    Ok(make_array(retype(array.to_data(), target)?))
}
