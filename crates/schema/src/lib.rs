//! FHIR R4 resource schemas as stored in the lake.
//!
//! The schemas under `schemas/` are generated from the official R4 StructureDefinitions
//! (by the `fhirlake-gen` tool) and committed; the product embeds them at build time so it never needs
//! the definitions at run time. One [`ResourceSchema`] per resource type describes every column
//! of that type's table: its Iceberg field id, its physical [`Kind`], whether it repeats, and
//! the FHIR type it came from. The same description drives validation on ingest, flattening
//! into Arrow, and the Iceberg table schema, so the three can never disagree.

pub mod outcome;
mod registry;

pub use registry::{Registry, SchemaError};

use std::sync::Arc;

use arrow::datatypes::{DataType, Field as ArrowField, Fields, Schema as ArrowSchema, TimeUnit};
use serde::{Deserialize, Serialize};

/// Arrow field metadata key that carries the Iceberg field id into Parquet files.
pub const PARQUET_FIELD_ID_KEY: &str = "PARQUET:field_id";

/// Name of the system column holding the resource's exact JSON text.
pub const RESOURCE_COLUMN: &str = "_resource";
/// Name of the system column holding `meta.versionId` as a number.
pub const VERSION_COLUMN: &str = "_version_id";
/// Name of the resource id column.
pub const ID_COLUMN: &str = "id";
/// Name of the system column holding `meta.lastUpdated` as a UTC timestamp.
pub const LAST_UPDATED_COLUMN: &str = "_last_updated";

/// Physical storage of one element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// FHIR `boolean`.
    Boolean,
    /// FHIR `integer`, `positiveInt`, `unsignedInt` (32-bit).
    Int,
    /// 64-bit integer; only system columns use it.
    Long,
    /// FHIR `decimal`; the raw JSON keeps the exact text.
    Double,
    /// Every other FHIR primitive (dates included, as Athena shows them as varchar).
    String,
    /// A JSON object kept as text: extensions, contained resources, primitive extension
    /// siblings (`_birthDate`) and elements below the recursion cut-off.
    Json,
    /// UTC timestamp in microseconds; only system columns use it.
    Timestamp,
    /// A complex type or backbone element with its child fields.
    Struct,
}

/// One column or nested field of a resource table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    /// Iceberg field id, stable across regenerations.
    pub id: i32,
    /// FHIR element name as it appears in JSON (`birthDate`, `valueQuantity`, `_given`).
    pub name: String,
    /// Physical storage kind (of the element, when `list` is set).
    pub kind: Kind,
    /// FHIR type code the element came from (`HumanName`, `date`, `Extension`, `BackboneElement`),
    /// or `system` for system columns.
    pub fhir: String,
    /// True for `0..*` / `1..*` elements: stored as an Iceberg list.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub list: bool,
    /// Iceberg field id of the list element, present exactly when `list` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub element_id: Option<i32>,
    /// Child fields, present exactly when `kind` is [`Kind::Struct`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<Field>,
    /// Position of each child by name, built on first lookup.
    #[serde(skip)]
    index: NameIndex,
}

/// The full table schema of one resource type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceSchema {
    /// FHIR resource type, e.g. `Patient`.
    pub resource_type: String,
    /// FHIR version the schema was generated from.
    pub fhir_version: String,
    /// Top-level columns in table order: the resource's elements, then the system columns.
    pub fields: Vec<Field>,
    /// Position of each column by name, built on first lookup.
    #[serde(skip)]
    index: NameIndex,
}

/// A list of sibling fields with O(1) lookup by name: a struct's children or a table's
/// columns.
#[derive(Clone, Copy)]
pub struct FieldList<'a> {
    fields: &'a [Field],
    index: &'a NameIndex,
}

impl<'a> FieldList<'a> {
    /// The field named `name` and its position.
    pub fn get(&self, name: &str) -> Option<(usize, &'a Field)> {
        self.index
            .position(self.fields, name)
            .map(|i| (i, &self.fields[i]))
    }

    pub fn as_slice(&self) -> &'a [Field] {
        self.fields
    }
}

/// A lazily built name -> position map over a field list. Ingest looks up every JSON
/// property by name, so this keeps validation and flattening linear in the document size.
/// It is derived data: equality and cloning ignore it.
#[derive(Default)]
struct NameIndex(std::sync::OnceLock<std::collections::HashMap<String, usize>>);

impl NameIndex {
    fn position(&self, fields: &[Field], name: &str) -> Option<usize> {
        self.0
            .get_or_init(|| {
                fields
                    .iter()
                    .enumerate()
                    .map(|(i, f)| (f.name.clone(), i))
                    .collect()
            })
            .get(name)
            .copied()
    }
}

impl Clone for NameIndex {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for NameIndex {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for NameIndex {}

impl std::fmt::Debug for NameIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NameIndex")
    }
}

impl Field {
    /// A field without an element id (set by [`ResourceSchema::assign_iceberg_ids`] for lists).
    pub fn new(
        id: i32,
        name: impl Into<String>,
        kind: Kind,
        fhir: impl Into<String>,
        list: bool,
        fields: Vec<Field>,
    ) -> Self {
        Self {
            id,
            name: name.into(),
            kind,
            fhir: fhir.into(),
            list,
            element_id: None,
            fields,
            index: NameIndex::default(),
        }
    }

    /// Arrow type of the stored value (the element type, wrapped in a list when repeated).
    pub fn arrow_type(&self) -> DataType {
        let element = self.element_arrow_type();
        if self.list {
            let element_field = ArrowField::new("element", element, true).with_metadata(
                field_id_metadata(self.element_id.expect("list field without element id")),
            );
            DataType::List(Arc::new(element_field))
        } else {
            element
        }
    }

    /// Arrow type of one element, ignoring `list`.
    pub fn element_arrow_type(&self) -> DataType {
        match self.kind {
            Kind::Boolean => DataType::Boolean,
            Kind::Int => DataType::Int32,
            Kind::Long => DataType::Int64,
            Kind::Double => DataType::Float64,
            Kind::String | Kind::Json => DataType::Utf8,
            Kind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            Kind::Struct => DataType::Struct(Fields::from(
                self.fields.iter().map(Field::to_arrow).collect::<Vec<_>>(),
            )),
        }
    }

    /// The Arrow field, nullable, carrying its Iceberg field id.
    pub fn to_arrow(&self) -> ArrowField {
        ArrowField::new(&self.name, self.arrow_type(), true)
            .with_metadata(field_id_metadata(self.id))
    }

    /// Child field by exact JSON name.
    pub fn child(&self, name: &str) -> Option<&Field> {
        self.child_position(name).map(|i| &self.fields[i])
    }

    /// Position of a child field by exact JSON name.
    pub fn child_position(&self, name: &str) -> Option<usize> {
        self.index.position(&self.fields, name)
    }

    /// The child fields, indexed by name.
    pub fn children(&self) -> FieldList<'_> {
        FieldList {
            fields: &self.fields,
            index: &self.index,
        }
    }

    /// Number of leaf (non-struct) values below and including this field.
    pub fn leaf_count(&self) -> usize {
        match self.kind {
            Kind::Struct => self.fields.iter().map(Field::leaf_count).sum(),
            _ => 1,
        }
    }
}

impl ResourceSchema {
    pub fn new(
        resource_type: impl Into<String>,
        fhir_version: impl Into<String>,
        fields: Vec<Field>,
    ) -> Self {
        Self {
            resource_type: resource_type.into(),
            fhir_version: fhir_version.into(),
            fields,
            index: NameIndex::default(),
        }
    }

    /// Arrow schema of the full table, with Iceberg field ids in the field metadata.
    pub fn arrow_schema(&self) -> ArrowSchema {
        ArrowSchema::new(self.fields.iter().map(Field::to_arrow).collect::<Vec<_>>())
    }

    /// Top-level field by exact JSON name.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.field_position(name).map(|i| &self.fields[i])
    }

    /// Position of a top-level field by exact JSON name.
    pub fn field_position(&self, name: &str) -> Option<usize> {
        self.index.position(&self.fields, name)
    }

    /// The top-level columns, indexed by name.
    pub fn columns(&self) -> FieldList<'_> {
        FieldList {
            fields: &self.fields,
            index: &self.index,
        }
    }

    /// Number of leaf columns of the full table.
    pub fn leaf_count(&self) -> usize {
        self.fields.iter().map(Field::leaf_count).sum()
    }

    /// Largest field id used, for checks and schema evolution.
    pub fn max_field_id(&self) -> i32 {
        fn max_of(f: &Field) -> i32 {
            let own = f.id.max(f.element_id.unwrap_or(0));
            f.fields.iter().map(max_of).fold(own, i32::max)
        }
        self.fields.iter().map(max_of).max().unwrap_or(0)
    }
}

fn field_id_metadata(id: i32) -> std::collections::HashMap<String, String> {
    [(PARQUET_FIELD_ID_KEY.to_string(), id.to_string())].into()
}

impl ResourceSchema {
    /// Numbers every field the way Iceberg assigns fresh ids when a table is created (all
    /// fields of a struct first, then each field's nested type; a list's element id before
    /// the element's own fields), so the catalog keeps our ids unchanged and Parquet files
    /// written with them match the table schema.
    pub fn assign_iceberg_ids(&mut self) {
        fn level(fields: &mut [Field], next: &mut i32) {
            for f in fields.iter_mut() {
                f.id = *next;
                *next += 1;
            }
            for f in fields.iter_mut() {
                if f.list {
                    f.element_id = Some(*next);
                    *next += 1;
                }
                if f.kind == Kind::Struct {
                    level(&mut f.fields, next);
                }
            }
        }
        let mut next = 1;
        level(&mut self.fields, &mut next);
    }
}
