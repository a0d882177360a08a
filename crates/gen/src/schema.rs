//! Generates `schemas/*.json` from the FHIR R4 StructureDefinitions.
//!
//! The input is the pair of definition bundles, `profiles-resources.json` and
//! `profiles-types.json`, whose StructureDefinitions carry full snapshots (checked against their
//! differentials, as the redistribution at hand adds non-R4 elements). Every concrete R4 resource
//! type becomes one [`ResourceSchema`] following AWS HealthLake's Athena table conventions:
//! complex datatypes and backbone elements become structs, repeating elements become lists, each
//! choice type `value[x]` becomes one column per allowed type (`valueQuantity`, `valueString`),
//! extensions and contained resources stay JSON text, and every primitive `x` gets an `_x`
//! JSON sibling holding its `id`/`extension`, exactly as in FHIR's JSON format.
//!
//! Recursive structures (an `Identifier` whose `assigner` Reference has an `identifier`,
//! `Questionnaire.item.item`, ...) are expanded while the same datatype or backbone occurs at
//! most [`DEFAULT_RECURSION_LIMITS`] times on the path from the root; below that the element is
//! kept as JSON text, so no data is lost, only columnar access to deeply nested levels.
//!
//! Field ids are assigned in the order Iceberg gives fresh ids to a new table (see
//! [`ResourceSchema::assign_iceberg_ids`]), so the catalog keeps them unchanged; regenerating
//! from the same definitions yields byte-identical files; `docs/schema-mapping.md` documents the rules and column counts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use fhirlake_schema::{
    Field, Kind, LAST_UPDATED_COLUMN, RESOURCE_COLUMN, ResourceSchema, VERSION_COLUMN,
};

/// How often one recursive structure may occur on an ancestor path before the deeper occurrence
/// is stored as JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecursionLimits {
    /// For complex datatypes. The only recursive pair in R4 is `Identifier.assigner` (a
    /// Reference) and `Reference.identifier`, expanded below every one of the thousands of
    /// Reference and Identifier columns.
    pub datatype: usize,
    /// For backbone elements re-entered through a `contentReference` (`Questionnaire.item.item`,
    /// `QuestionnaireResponse.item.answer.item`, `PlanDefinition.action.action`).
    pub backbone: usize,
}

/// The limits the committed schemas use. A Reference keeps its `identifier` struct but that
/// identifier's `assigner` is JSON; nested questionnaire items, plan actions, etc. get one
/// level of columns below the first. `docs/schema-mapping.md` has the measurements: a single
/// limit of 2 for both costs 43% more leaf columns (138k vs 96k over all types), almost all of
/// it in `assigner.identifier` chains under every Reference, while a single limit of 1 would
/// turn `Questionnaire.item.item` into JSON for only 8% fewer columns.
pub const DEFAULT_RECURSION_LIMITS: RecursionLimits = RecursionLimits {
    datatype: 1,
    backbone: 2,
};

/// Complex datatypes always stored as JSON text, like the open-ended `Extension`.
/// `ElementDefinition` (only in `StructureDefinition.snapshot`/`differential`) has four choice
/// elements that allow every datatype (`fixed[x]`, `pattern[x]`, `defaultValue[x]`,
/// `example.value[x]`); as columns it would give StructureDefinition about 13,500 leaves, more
/// than three times the next widest type, for conformance metadata that is read as a whole.
pub const JSON_DATATYPES: &[&str] = &["Extension", "ElementDefinition"];

/// The FHIR version the schemas are for. Definitions of other versions that the bundles carry
/// (the R4B backport `SubscriptionStatus`, 4.3.0) are not R4 types and are skipped.
pub const FHIR_VERSION: &str = "4.0.1";

/// File name of the resource StructureDefinition bundle inside the definitions directory.
pub const RESOURCES_FILE: &str = "profiles-resources.json";
/// File name of the datatype StructureDefinition bundle inside the definitions directory.
pub const TYPES_FILE: &str = "profiles-types.json";

/// `fhir` value of the `_x` sibling of a primitive element.
const PRIMITIVE_SIBLING_FHIR: &str = "Element";
/// `fhir` value of the system columns.
const SYSTEM_FHIR: &str = "system";
/// Prefix of FHIRPath system type codes (`System.String` for `Element.id`).
const FHIRPATH_SYSTEM_PREFIX: &str = "http://hl7.org/fhirpath/System.";
/// Extension on a FHIRPath system type naming the FHIR type it stands for.
const FHIR_TYPE_EXTENSION: &str =
    "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type";

/// Errors generating or writing the schemas.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// A file or directory could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was attempted ("cannot read", "cannot write", ...).
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A definitions file is not a Bundle of well-formed StructureDefinitions.
    #[error("cannot parse {path}: {source}")]
    Parse {
        /// The definitions file.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// The definitions are structurally inconsistent (missing snapshot, dangling
    /// contentReference, element without a type, ...).
    #[error("invalid definitions at {location}: {message}")]
    Definition {
        /// StructureDefinition id or element path where the problem is.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// An element uses a type code that is neither a primitive, a complex datatype nor a
    /// resource type.
    #[error(
        "element {path} has type '{code}', which is not defined in {TYPES_FILE} or {RESOURCES_FILE}"
    )]
    UnknownType {
        /// The element path.
        path: String,
        /// The unknown type code.
        code: String,
    },
    /// Two fields of one struct have names equal ignoring ASCII case; SQL resolves names
    /// case-insensitively, so the columns would be ambiguous.
    #[error(
        "{resource_type}: fields '{first}' and '{second}' in {parent} clash (SQL compares names case-insensitively)"
    )]
    NameClash {
        /// The resource type whose schema is affected.
        resource_type: String,
        /// Path of the struct holding both fields (`Patient` for top-level columns).
        parent: String,
        /// The first field name.
        first: String,
        /// The second field name.
        second: String,
    },
    /// Field ids exceeded the Iceberg id space (i32).
    #[error("{0}: field ids exceed the Iceberg id range")]
    IdOverflow(String),
    /// A schema could not be serialized.
    #[error("cannot serialize schema {resource_type}: {source}")]
    Serialize {
        /// The resource type.
        resource_type: String,
        /// The underlying error.
        source: serde_json::Error,
    },
}

/// Generates the schema of every concrete resource type from `definitions_dir`
/// (which holds [`RESOURCES_FILE`] and [`TYPES_FILE`]), sorted by resource type.
pub fn generate(definitions_dir: &Path) -> Result<Vec<ResourceSchema>, GenerateError> {
    generate_with_limits(definitions_dir, DEFAULT_RECURSION_LIMITS)
}

/// Like [`generate`], with explicit recursion limits; used to measure the trade-off.
pub fn generate_with_limits(
    definitions_dir: &Path,
    limits: RecursionLimits,
) -> Result<Vec<ResourceSchema>, GenerateError> {
    let resources = read_bundle(&definitions_dir.join(RESOURCES_FILE))?;
    let types = read_bundle(&definitions_dir.join(TYPES_FILE))?;
    Definitions::new(resources, types)?.schemas(limits)
}

/// Writes one pretty-printed `<Type>.json` per schema into `out_dir` (created if missing) and
/// removes every other `*.json` there, so the directory mirrors exactly the generated set.
/// Files whose content is unchanged are not rewritten, keeping incremental builds incremental.
pub fn write_schemas(schemas: &[ResourceSchema], out_dir: &Path) -> Result<(), GenerateError> {
    std::fs::create_dir_all(out_dir).map_err(|source| GenerateError::Io {
        action: "cannot create",
        path: out_dir.to_path_buf(),
        source,
    })?;
    let mut wanted = BTreeSet::new();
    for schema in schemas {
        let mut text =
            serde_json::to_string_pretty(schema).map_err(|source| GenerateError::Serialize {
                resource_type: schema.resource_type.clone(),
                source,
            })?;
        text.push('\n');
        let file_name = format!("{}.json", schema.resource_type);
        let path = out_dir.join(&file_name);
        let unchanged = std::fs::read(&path).is_ok_and(|old| old == text.as_bytes());
        if !unchanged {
            std::fs::write(&path, text).map_err(|source| GenerateError::Io {
                action: "cannot write",
                path: path.clone(),
                source,
            })?;
        }
        wanted.insert(file_name);
    }
    let entries = std::fs::read_dir(out_dir).map_err(|source| GenerateError::Io {
        action: "cannot list",
        path: out_dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| GenerateError::Io {
            action: "cannot list",
            path: out_dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let is_json = path.extension().is_some_and(|e| e == "json");
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_json && path.is_file() && !wanted.contains(&name) {
            std::fs::remove_file(&path).map_err(|source| GenerateError::Io {
                action: "cannot remove stale schema",
                path,
                source,
            })?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Input model: only the parts of the definitions the mapping needs.

#[derive(Debug, Deserialize)]
struct Bundle {
    #[serde(default)]
    entry: Vec<BundleEntry>,
}

#[derive(Debug, Deserialize)]
struct BundleEntry {
    resource: serde_json::Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StructureDefinition {
    id: String,
    #[serde(rename = "type")]
    type_name: String,
    kind: String,
    #[serde(rename = "abstract")]
    is_abstract: bool,
    derivation: Option<String>,
    fhir_version: Option<String>,
    snapshot: Option<ElementList>,
    differential: Option<ElementList>,
}

#[derive(Debug, Deserialize)]
struct ElementList {
    element: Vec<ElementDefinition>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ElementDefinition {
    path: String,
    max: Option<String>,
    #[serde(default, rename = "type")]
    types: Vec<TypeRef>,
    content_reference: Option<String>,
    base: Option<ElementBase>,
}

impl ElementDefinition {
    /// True when the element is defined by an ancestor type (`Patient.id` from `Resource.id`,
    /// `Patient.contact.id` from `Element.id`) rather than by this definition itself.
    fn is_inherited(&self) -> bool {
        self.base.as_ref().is_some_and(|b| b.path != self.path)
    }
}

#[derive(Debug, Deserialize)]
struct ElementBase {
    path: String,
}

#[derive(Debug, Deserialize)]
struct TypeRef {
    code: String,
    #[serde(default)]
    extension: Vec<TypeExtension>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeExtension {
    url: String,
    value_url: Option<String>,
}

fn read_bundle(path: &Path) -> Result<Vec<StructureDefinition>, GenerateError> {
    let text = std::fs::read_to_string(path).map_err(|source| GenerateError::Io {
        action: "cannot read",
        path: path.to_path_buf(),
        source,
    })?;
    parse_bundle(&text).map_err(|source| GenerateError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// The StructureDefinitions of a Bundle; other resources (OperationDefinitions, ...) are skipped.
fn parse_bundle(text: &str) -> Result<Vec<StructureDefinition>, serde_json::Error> {
    let bundle: Bundle = serde_json::from_str(text)?;
    bundle
        .entry
        .into_iter()
        .filter(|e| {
            e.resource.get("resourceType").and_then(|t| t.as_str()) == Some("StructureDefinition")
        })
        .map(|e| serde_json::from_value(e.resource))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Indexed definitions.

/// One StructureDefinition with its R4 elements (see [`r4_elements`]) indexed by path.
struct Indexed {
    sd: StructureDefinition,
    /// The elements, root first, each parent before its children.
    elements: Vec<ElementDefinition>,
    /// Element index by path.
    by_path: HashMap<String, usize>,
    /// Indices of the direct children of each path, in definition order.
    children: HashMap<String, Vec<usize>>,
}

impl Indexed {
    fn new(mut sd: StructureDefinition) -> Result<Self, GenerateError> {
        let elements = r4_elements(&mut sd)?;
        let mut by_path = HashMap::new();
        let mut children: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, e) in elements.iter().enumerate() {
            if by_path.insert(e.path.clone(), i).is_some() {
                return Err(GenerateError::Definition {
                    location: e.path.clone(),
                    message: "element path occurs twice in the snapshot (slices are not supported)"
                        .into(),
                });
            }
            if let Some((parent, _)) = e.path.rsplit_once('.') {
                children.entry(parent.to_string()).or_default().push(i);
            }
        }
        Ok(Indexed {
            sd,
            elements,
            by_path,
            children,
        })
    }

    fn elements(&self) -> &[ElementDefinition] {
        &self.elements
    }

    fn children_of(&self, path: &str) -> impl Iterator<Item = &ElementDefinition> {
        let elements = self.elements();
        self.children
            .get(path)
            .into_iter()
            .flatten()
            .map(move |&i| &elements[i])
    }

    fn has_children(&self, path: &str) -> bool {
        self.children.contains_key(path)
    }
}

/// The elements of a definition as published in FHIR R4, taken out of `sd`.
///
/// The snapshot is the input, but the redistribution of the definitions used here injects
/// non-R4 elements into some snapshots (`Meta.project`, `Meta.author`, `Meta.compartment`,
/// `Binary.url`, R5 backports in `EvidenceVariable.characteristic`, ...) and drops a few R4
/// ones (`EvidenceVariable.characteristic.definition[x]`). The differential is faithful, and in
/// an official snapshot every element is either inherited from an ancestor type or declared by
/// the differential. So the result is: the snapshot's inherited elements (as the snapshot
/// states them, constraints applied), then the definition's own elements from the
/// differential, per parent in that order; which reproduces the official snapshot order.
/// Elements of neither kind, and everything below them, are dropped. Without a differential
/// the snapshot is taken as it is.
fn r4_elements(sd: &mut StructureDefinition) -> Result<Vec<ElementDefinition>, GenerateError> {
    let snapshot = sd.snapshot.take().map(|s| s.element).unwrap_or_default();
    let Some(root_path) = snapshot.first().map(|e| e.path.clone()) else {
        return Err(GenerateError::Definition {
            location: sd.id.clone(),
            message: "StructureDefinition has no snapshot elements".into(),
        });
    };
    if root_path != sd.type_name {
        return Err(GenerateError::Definition {
            location: sd.id.clone(),
            message: format!(
                "first snapshot element is '{root_path}', expected the root '{}'",
                sd.type_name
            ),
        });
    }
    let Some(differential) = sd.differential.take().map(|d| d.element) else {
        return Ok(snapshot);
    };

    let snapshot_paths: BTreeSet<String> = snapshot.iter().map(|e| e.path.clone()).collect();
    let inherited_paths: BTreeSet<String> = snapshot
        .iter()
        .filter(|e| e.is_inherited())
        .map(|e| e.path.clone())
        .collect();
    let mut slots: Vec<Option<ElementDefinition>> = Vec::new();
    let mut inherited_children: HashMap<String, Vec<usize>> = HashMap::new();
    let mut own_children: HashMap<String, Vec<usize>> = HashMap::new();
    let mut snapshot = snapshot.into_iter();
    let root = snapshot.next();
    for e in snapshot {
        if let Some((parent, _)) = e.path.rsplit_once('.')
            && e.is_inherited()
        {
            inherited_children
                .entry(parent.to_string())
                .or_default()
                .push(slots.len());
            slots.push(Some(e));
        }
    }
    for e in differential {
        if e.path == root_path || inherited_paths.contains(&e.path) {
            continue; // the root, or a constraint on an inherited element: the snapshot has it
        }
        let Some((parent, _)) = e.path.rsplit_once('.') else {
            return Err(GenerateError::Definition {
                location: e.path.clone(),
                message: format!("differential element outside the root '{root_path}'"),
            });
        };
        let structural = e
            .types
            .iter()
            .any(|t| t.code == "BackboneElement" || t.code == "Element");
        if structural && !snapshot_paths.contains(&e.path) {
            return Err(GenerateError::Definition {
                location: e.path.clone(),
                message: "backbone element is missing from the snapshot, so its inherited \
                          children (id, extension) are unknown"
                    .into(),
            });
        }
        own_children
            .entry(parent.to_string())
            .or_default()
            .push(slots.len());
        slots.push(Some(e));
    }

    let mut out: Vec<ElementDefinition> = root.into_iter().collect();
    let mut stack = vec![root_path];
    // Walk down from the root: each parent precedes its children, and elements whose parent
    // was dropped are never reached.
    while let Some(parent) = stack.pop() {
        let kids: Vec<usize> = inherited_children
            .remove(&parent)
            .into_iter()
            .flatten()
            .chain(own_children.remove(&parent).into_iter().flatten())
            .collect();
        let first_new = out.len();
        out.extend(kids.into_iter().filter_map(|i| slots[i].take()));
        stack.extend(out[first_new..].iter().rev().map(|e| e.path.clone()));
    }
    Ok(out)
}

/// How a primitive datatype is stored.
#[derive(Debug, Clone, Copy)]
struct Primitive {
    kind: Kind,
    /// Whether the JSON form allows an `_x` sibling: false only for `xhtml`, whose definition
    /// prohibits extensions (`xhtml.extension` has max 0).
    sibling: bool,
}

/// All definitions, classified.
struct Definitions {
    /// Concrete and abstract resource definitions by type name.
    resources: BTreeMap<String, Indexed>,
    /// Complex datatypes (specializations only; constraints like SimpleQuantity share the
    /// base type's shape) by type name.
    complex: HashMap<String, Indexed>,
    /// Primitive datatypes by type code.
    primitives: HashMap<String, Primitive>,
}

impl Definitions {
    fn new(
        resources: Vec<StructureDefinition>,
        types: Vec<StructureDefinition>,
    ) -> Result<Self, GenerateError> {
        let mut defs = Definitions {
            resources: BTreeMap::new(),
            complex: HashMap::new(),
            primitives: HashMap::new(),
        };
        for sd in resources {
            if sd.kind == "resource" && is_r4(&sd)? {
                defs.resources
                    .insert(sd.type_name.clone(), Indexed::new(sd)?);
            }
        }
        for sd in types {
            if sd.derivation.as_deref() == Some("constraint") || !is_r4(&sd)? {
                continue;
            }
            match sd.kind.as_str() {
                "primitive-type" => {
                    let indexed = Indexed::new(sd)?;
                    let extension_path = format!("{}.extension", indexed.sd.type_name);
                    let sibling = indexed
                        .by_path
                        .get(&extension_path)
                        .is_none_or(|&i| indexed.elements()[i].max.as_deref() != Some("0"));
                    let kind = primitive_kind(&indexed.sd.type_name);
                    defs.primitives
                        .insert(indexed.sd.type_name.clone(), Primitive { kind, sibling });
                }
                "complex-type" => {
                    defs.complex.insert(sd.type_name.clone(), Indexed::new(sd)?);
                }
                _ => {}
            }
        }
        Ok(defs)
    }

    /// Schemas of all concrete resource types, sorted by type name.
    fn schemas(&self, limits: RecursionLimits) -> Result<Vec<ResourceSchema>, GenerateError> {
        self.resources
            .values()
            .filter(|r| !r.sd.is_abstract && r.sd.derivation.as_deref() == Some("specialization"))
            .map(|r| self.resource_schema(r, limits))
            .collect()
    }

    fn resource_schema(
        &self,
        resource: &Indexed,
        limits: RecursionLimits,
    ) -> Result<ResourceSchema, GenerateError> {
        let resource_type = resource.sd.type_name.clone();
        let mut walker = Walker {
            defs: self,
            resource_type: &resource_type,
            limits,
            ancestors: Vec::new(),
        };
        let mut fields = walker.children(resource, &resource_type)?;
        // `OperationDefinition.resource` is a primitive list, so its extension sibling would be
        // named `_resource` like the raw-JSON system column. The sibling is dropped: its content
        // stays available in that raw JSON, whereas the system column cannot be renamed per type.
        fields.retain(|f| !(is_primitive_sibling(f) && is_system_column(&f.name)));
        fields.push(system_field(RESOURCE_COLUMN, Kind::Json));
        fields.push(system_field(VERSION_COLUMN, Kind::Long));
        fields.push(system_field(LAST_UPDATED_COLUMN, Kind::Timestamp));
        check_names(&resource_type, &resource_type, &fields)?;
        let mut schema = ResourceSchema::new(resource_type, FHIR_VERSION, fields);
        schema.assign_iceberg_ids();
        if schema.max_field_id() >= ICEBERG_RESERVED_IDS {
            return Err(GenerateError::IdOverflow(schema.resource_type));
        }
        Ok(schema)
    }
}

fn is_system_column(name: &str) -> bool {
    [RESOURCE_COLUMN, VERSION_COLUMN, LAST_UPDATED_COLUMN]
        .iter()
        .any(|c| c.eq_ignore_ascii_case(name))
}

fn is_primitive_sibling(f: &Field) -> bool {
    f.name.starts_with('_') && f.kind == Kind::Json && f.fhir == PRIMITIVE_SIBLING_FHIR
}

/// Whether `sd` belongs to FHIR R4 ([`FHIR_VERSION`]); a definition without a version is an error
/// rather than silently kept or dropped.
fn is_r4(sd: &StructureDefinition) -> Result<bool, GenerateError> {
    match sd.fhir_version.as_deref() {
        Some(v) => Ok(v == FHIR_VERSION),
        None => Err(GenerateError::Definition {
            location: sd.id.clone(),
            message: "StructureDefinition has no fhirVersion".into(),
        }),
    }
}

/// Storage kind of a FHIR primitive type code.
fn primitive_kind(code: &str) -> Kind {
    match code {
        "boolean" => Kind::Boolean,
        "integer" | "positiveInt" | "unsignedInt" => Kind::Int,
        "decimal" => Kind::Double,
        _ => Kind::String,
    }
}

/// Storage kind of a FHIRPath system type (only `System.String` occurs outside the
/// primitive types' own `value` elements, which are never walked).
fn system_kind(name: &str) -> Kind {
    match name {
        "Boolean" => Kind::Boolean,
        "Integer" => Kind::Int,
        "Decimal" => Kind::Double,
        _ => Kind::String,
    }
}

fn system_field(name: &str, kind: Kind) -> Field {
    Field::new(0, name, kind, SYSTEM_FHIR, false, Vec::new())
}

/// A field before id assignment; `element_id` is filled in by [`ResourceSchema::assign_iceberg_ids`].
fn field(name: String, kind: Kind, fhir: &str, list: bool, fields: Vec<Field>) -> Field {
    Field::new(0, name, kind, fhir, list, fields)
}

/// Iceberg reserves field ids from here up for metadata columns.
const ICEBERG_RESERVED_IDS: i32 = 2_147_483_447;

/// Fails when two names of one struct are equal ignoring ASCII case.
fn check_names(resource_type: &str, parent: &str, fields: &[Field]) -> Result<(), GenerateError> {
    let mut seen: HashMap<String, &str> = HashMap::new();
    for f in fields {
        if let Some(first) = seen.insert(f.name.to_ascii_lowercase(), &f.name) {
            return Err(GenerateError::NameClash {
                resource_type: resource_type.to_string(),
                parent: parent.to_string(),
                first: first.to_string(),
                second: f.name.clone(),
            });
        }
    }
    Ok(())
}

fn is_list(e: &ElementDefinition) -> Result<bool, GenerateError> {
    match e.max.as_deref() {
        Some("*") => Ok(true),
        Some(n) => n
            .parse::<u32>()
            .map(|n| n > 1)
            .map_err(|_| GenerateError::Definition {
                location: e.path.clone(),
                message: format!("max cardinality '{n}' is neither '*' nor a number"),
            }),
        None => Err(GenerateError::Definition {
            location: e.path.clone(),
            message: "element has no max cardinality".into(),
        }),
    }
}

fn upper_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Walks one resource's snapshot, expanding datatypes, tracking the ancestor path for the
/// recursion cut-off.
struct Walker<'a> {
    defs: &'a Definitions,
    resource_type: &'a str,
    limits: RecursionLimits,
    /// Recursion keys of the structs being expanded: datatype names (`Identifier`) and backbone
    /// element paths (`Questionnaire.item`); the two never collide as only paths contain dots.
    ancestors: Vec<String>,
}

impl Walker<'_> {
    /// Fields for the children of `path` in `sd`, in snapshot order.
    fn children(&mut self, sd: &Indexed, path: &str) -> Result<Vec<Field>, GenerateError> {
        let mut fields = Vec::new();
        for e in sd.children_of(path) {
            if e.max.as_deref() == Some("0") {
                continue; // prohibited element
            }
            self.element(sd, e, &mut fields)?;
        }
        if fields.is_empty() {
            return Err(GenerateError::Definition {
                location: path.to_string(),
                message: "struct element has no child elements".into(),
            });
        }
        check_names(self.resource_type, path, &fields)?;
        Ok(fields)
    }

    /// Appends the field(s) of element `e` (several for a choice, two for a primitive).
    fn element(
        &mut self,
        sd: &Indexed,
        e: &ElementDefinition,
        out: &mut Vec<Field>,
    ) -> Result<(), GenerateError> {
        let name = e.path.rsplit('.').next().unwrap_or(&e.path);
        let list = is_list(e)?;
        if let Some(reference) = &e.content_reference {
            let target = reference.strip_prefix('#').unwrap_or(reference);
            let target_element = sd
                .by_path
                .get(target)
                .map(|&i| &sd.elements()[i])
                .ok_or_else(|| GenerateError::Definition {
                    location: e.path.clone(),
                    message: format!("contentReference '{reference}' names no element"),
                })?;
            let fhir = target_element
                .types
                .first()
                .map_or("BackboneElement", |t| t.code.as_str());
            let limit = self.limits.backbone;
            let f = self.nested(name.to_string(), fhir, list, target, limit, |w| {
                w.children(sd, target)
            })?;
            out.push(f);
            return Ok(());
        }
        if let Some(base) = name.strip_suffix("[x]") {
            if e.types.is_empty() {
                return Err(GenerateError::Definition {
                    location: e.path.clone(),
                    message: "choice element lists no types".into(),
                });
            }
            for t in &e.types {
                let choice_name = format!("{base}{}", upper_first(&t.code));
                self.typed(sd, e, choice_name, t, list, false, out)?;
            }
            return Ok(());
        }
        match e.types.as_slice() {
            [t] => self.typed(sd, e, name.to_string(), t, list, true, out),
            [] => Err(GenerateError::Definition {
                location: e.path.clone(),
                message: "element has neither a type nor a contentReference".into(),
            }),
            _ => Err(GenerateError::Definition {
                location: e.path.clone(),
                message: "non-choice element lists several types".into(),
            }),
        }
    }

    /// Appends the field(s) for `e` stored as type `t` under `name`. `inline` allows the
    /// element's own children (backbone elements) to define the struct.
    #[allow(clippy::too_many_arguments)]
    fn typed(
        &mut self,
        sd: &Indexed,
        e: &ElementDefinition,
        name: String,
        t: &TypeRef,
        list: bool,
        inline: bool,
        out: &mut Vec<Field>,
    ) -> Result<(), GenerateError> {
        let code = t.code.as_str();
        if let Some(system) = code.strip_prefix(FHIRPATH_SYSTEM_PREFIX) {
            // `Element.id`, `Resource.id`: plain JSON strings without an `_x` sibling.
            let fhir = t
                .extension
                .iter()
                .find(|x| x.url == FHIR_TYPE_EXTENSION)
                .and_then(|x| x.value_url.as_deref())
                .unwrap_or(system);
            out.push(field(name, system_kind(system), fhir, list, Vec::new()));
            return Ok(());
        }
        if JSON_DATATYPES.contains(&code) || self.defs.resources.contains_key(code) {
            out.push(field(name, Kind::Json, code, list, Vec::new()));
            return Ok(());
        }
        if let Some(p) = self.defs.primitives.get(code) {
            let sibling = p.sibling.then(|| {
                field(
                    format!("_{name}"),
                    Kind::Json,
                    PRIMITIVE_SIBLING_FHIR,
                    list,
                    Vec::new(),
                )
            });
            out.push(field(name, p.kind, code, list, Vec::new()));
            out.extend(sibling);
            return Ok(());
        }
        if inline && sd.has_children(&e.path) {
            let path = e.path.as_str();
            let limit = self.limits.backbone;
            let f = self.nested(name, code, list, path, limit, |w| w.children(sd, path))?;
            out.push(f);
            return Ok(());
        }
        let defs = self.defs;
        if let Some(datatype) = defs.complex.get(code) {
            let root = datatype.sd.type_name.as_str();
            let limit = self.limits.datatype;
            let f = self.nested(name, code, list, code, limit, |w| {
                w.children(datatype, root)
            })?;
            out.push(f);
            return Ok(());
        }
        Err(GenerateError::UnknownType {
            path: e.path.clone(),
            code: code.to_string(),
        })
    }

    /// A struct built by `expand` under recursion key `key`, or a JSON field once `key`
    /// already occurs `limit` times among the ancestors.
    #[allow(clippy::too_many_arguments)]
    fn nested(
        &mut self,
        name: String,
        fhir: &str,
        list: bool,
        key: &str,
        limit: usize,
        expand: impl FnOnce(&mut Self) -> Result<Vec<Field>, GenerateError>,
    ) -> Result<Field, GenerateError> {
        let occurrences = self.ancestors.iter().filter(|a| *a == key).count();
        if occurrences >= limit {
            return Ok(field(name, Kind::Json, fhir, list, Vec::new()));
        }
        self.ancestors.push(key.to_string());
        let children = expand(self);
        self.ancestors.pop();
        Ok(field(name, Kind::Struct, fhir, list, children?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// One snapshot element: path, max, type codes (a `#path` code means contentReference).
    type El<'a> = (&'a str, &'a str, &'a [&'a str]);

    fn sd(type_name: &str, kind: &str, is_abstract: bool, elements: &[El]) -> Value {
        let element: Vec<Value> = elements
            .iter()
            .map(|(path, max, types)| match types {
                [reference] if reference.starts_with('#') => {
                    json!({"path": path, "min": 0, "max": max, "contentReference": reference})
                }
                _ => {
                    let types: Vec<Value> = types.iter().map(|c| json!({"code": c})).collect();
                    json!({"path": path, "min": 0, "max": max, "type": types})
                }
            })
            .collect();
        json!({
            "resourceType": "StructureDefinition",
            "id": type_name,
            "type": type_name,
            "kind": kind,
            "abstract": is_abstract,
            "derivation": "specialization",
            "fhirVersion": "4.0.1",
            "snapshot": {"element": element}
        })
    }

    fn primitive(name: &str) -> Value {
        let ext_max = if name == "xhtml" { "0" } else { "*" };
        sd(
            name,
            "primitive-type",
            false,
            &[
                (name, "*", &[]),
                (&format!("{name}.id"), "1", &[SYS_STRING]),
                (&format!("{name}.extension"), ext_max, &["Extension"]),
                (&format!("{name}.value"), "1", &[SYS_STRING]),
            ],
        )
    }

    const SYS_STRING: &str = "http://hl7.org/fhirpath/System.String";

    fn bundle(entries: Vec<Value>) -> String {
        let entry: Vec<Value> = entries
            .into_iter()
            .map(|r| json!({"resource": r}))
            .collect();
        json!({"resourceType": "Bundle", "entry": entry}).to_string()
    }

    fn types_bundle() -> String {
        let mut entries: Vec<Value> = ["boolean", "string", "decimal", "code", "xhtml", "integer"]
            .into_iter()
            .map(primitive)
            .collect();
        entries.push(sd(
            "Extension",
            "complex-type",
            false,
            &[
                ("Extension", "*", &[]),
                ("Extension.id", "1", &[SYS_STRING]),
                ("Extension.extension", "*", &["Extension"]),
                ("Extension.url", "1", &[SYS_STRING]),
                ("Extension.value[x]", "1", &["string", "Quantity"]),
            ],
        ));
        entries.push(sd(
            "Quantity",
            "complex-type",
            false,
            &[
                ("Quantity", "*", &[]),
                ("Quantity.id", "1", &[SYS_STRING]),
                ("Quantity.extension", "*", &["Extension"]),
                ("Quantity.value", "1", &["decimal"]),
                ("Quantity.unit", "1", &["string"]),
            ],
        ));
        entries.push(sd(
            "Identifier",
            "complex-type",
            false,
            &[
                ("Identifier", "*", &[]),
                ("Identifier.id", "1", &[SYS_STRING]),
                ("Identifier.extension", "*", &["Extension"]),
                ("Identifier.value", "1", &["string"]),
                ("Identifier.assigner", "1", &["Reference"]),
            ],
        ));
        entries.push(sd(
            "Reference",
            "complex-type",
            false,
            &[
                ("Reference", "*", &[]),
                ("Reference.id", "1", &[SYS_STRING]),
                ("Reference.extension", "*", &["Extension"]),
                ("Reference.reference", "1", &["string"]),
                ("Reference.identifier", "1", &["Identifier"]),
            ],
        ));
        bundle(entries)
    }

    /// A resource bundle with the abstract bases and one concrete type built from `elements`.
    fn resources_bundle(elements: &[El]) -> String {
        bundle(vec![
            sd("Resource", "resource", true, &[("Resource", "*", &[])]),
            sd("Thing", "resource", false, elements),
        ])
    }

    fn thing() -> Vec<El<'static>> {
        vec![
            ("Thing", "*", &[]),
            ("Thing.id", "1", &[SYS_STRING]),
            ("Thing.contained", "*", &["Resource"]),
            ("Thing.extension", "*", &["Extension"]),
            ("Thing.name", "*", &["string"]),
            ("Thing.active", "1", &["boolean"]),
            ("Thing.value[x]", "1", &["Quantity", "string", "boolean"]),
            ("Thing.identifier", "1", &["Identifier"]),
            ("Thing.div", "1", &["xhtml"]),
            ("Thing.definition", "*", &["ElementDefinition"]),
            ("Thing.gone", "0", &["string"]),
            ("Thing.item", "*", &["BackboneElement"]),
            ("Thing.item.id", "1", &[SYS_STRING]),
            ("Thing.item.modifierExtension", "*", &["Extension"]),
            ("Thing.item.linkId", "1", &["string"]),
            ("Thing.item.item", "*", &["#Thing.item"]),
        ]
    }

    fn limits(datatype: usize, backbone: usize) -> RecursionLimits {
        RecursionLimits { datatype, backbone }
    }

    fn schemas_of(
        elements: &[El],
        limits: RecursionLimits,
    ) -> Result<Vec<ResourceSchema>, GenerateError> {
        let resources = parse_bundle(&resources_bundle(elements)).unwrap();
        let types = parse_bundle(&types_bundle()).unwrap();
        Definitions::new(resources, types)?.schemas(limits)
    }

    fn thing_schema(limits: RecursionLimits) -> ResourceSchema {
        let mut schemas = schemas_of(&thing(), limits).unwrap();
        assert_eq!(schemas.len(), 1, "only the concrete type gets a schema");
        schemas.remove(0)
    }

    fn names(fields: &[Field]) -> Vec<&str> {
        fields.iter().map(|f| f.name.as_str()).collect()
    }

    #[test]
    fn top_level_columns_follow_snapshot_order_then_system_columns() {
        let s = thing_schema(DEFAULT_RECURSION_LIMITS);
        assert_eq!(s.resource_type, "Thing");
        assert_eq!(s.fhir_version, "4.0.1");
        assert_eq!(
            names(&s.fields),
            [
                "id",
                "contained",
                "extension",
                "name",
                "_name",
                "active",
                "_active",
                "valueQuantity",
                "valueString",
                "_valueString",
                "valueBoolean",
                "_valueBoolean",
                "identifier",
                "div",
                "definition",
                "item",
                RESOURCE_COLUMN,
                VERSION_COLUMN,
                LAST_UPDATED_COLUMN,
            ]
        );
        let id = s.field("id").unwrap();
        assert_eq!(
            (id.kind, id.fhir.as_str(), id.list),
            (Kind::String, "String", false)
        );
        let system: Vec<(Kind, &str)> = s.fields[s.fields.len() - 3..]
            .iter()
            .map(|f| (f.kind, f.fhir.as_str()))
            .collect();
        assert_eq!(
            system,
            [
                (Kind::Json, "system"),
                (Kind::Long, "system"),
                (Kind::Timestamp, "system")
            ]
        );
    }

    #[test]
    fn extensions_and_resources_are_json() {
        let s = thing_schema(DEFAULT_RECURSION_LIMITS);
        let ext = s.field("extension").unwrap();
        assert_eq!(
            (ext.kind, ext.list, ext.fhir.as_str()),
            (Kind::Json, true, "Extension")
        );
        let contained = s.field("contained").unwrap();
        assert_eq!((contained.kind, contained.list), (Kind::Json, true));
        let definition = s.field("definition").unwrap();
        assert_eq!((definition.kind, definition.list), (Kind::Json, true));
        let item = s.field("item").unwrap();
        let modifier = item.child("modifierExtension").unwrap();
        assert_eq!((modifier.kind, modifier.list), (Kind::Json, true));
    }

    #[test]
    fn choice_types_get_one_field_per_type() {
        let s = thing_schema(DEFAULT_RECURSION_LIMITS);
        let quantity = s.field("valueQuantity").unwrap();
        assert_eq!(
            (quantity.kind, quantity.fhir.as_str()),
            (Kind::Struct, "Quantity")
        );
        assert_eq!(
            names(&quantity.fields),
            ["id", "extension", "value", "_value", "unit", "_unit"]
        );
        assert_eq!(quantity.child("value").unwrap().kind, Kind::Double);
        let string = s.field("valueString").unwrap();
        assert_eq!(
            (string.kind, string.fhir.as_str()),
            (Kind::String, "string")
        );
        assert_eq!(s.field("valueBoolean").unwrap().kind, Kind::Boolean);
        let sibling = s.field("_valueBoolean").unwrap();
        assert_eq!(
            (sibling.kind, sibling.fhir.as_str()),
            (Kind::Json, "Element")
        );
    }

    #[test]
    fn lists_and_primitive_siblings() {
        let s = thing_schema(DEFAULT_RECURSION_LIMITS);
        let name = s.field("name").unwrap();
        assert_eq!((name.kind, name.list), (Kind::String, true));
        assert!(name.element_id.is_some_and(|e| e > name.id));
        let sibling = s.field("_name").unwrap();
        assert_eq!((sibling.kind, sibling.list), (Kind::Json, true));
        assert!(sibling.element_id.is_some());
        let active = s.field("active").unwrap();
        assert_eq!((active.list, active.element_id), (false, None));
        assert!(!s.field("_active").unwrap().list);
        // xhtml prohibits extensions, so it has no sibling; max 0 elements are dropped.
        assert!(s.field("div").is_some());
        assert!(s.field("_div").is_none());
        assert!(s.field("gone").is_none());
        assert!(s.field("_gone").is_none());
    }

    #[test]
    fn content_reference_recursion_is_cut_at_the_limit() {
        let s = thing_schema(DEFAULT_RECURSION_LIMITS);
        let item = s.field("item").unwrap();
        assert_eq!(
            (item.kind, item.list, item.fhir.as_str()),
            (Kind::Struct, true, "BackboneElement")
        );
        let nested = item.child("item").unwrap();
        assert_eq!((nested.kind, nested.list), (Kind::Struct, true));
        assert_eq!(names(&nested.fields), names(&item.fields));
        let cut = nested.child("item").unwrap();
        assert_eq!(
            (cut.kind, cut.list, cut.fhir.as_str()),
            (Kind::Json, true, "BackboneElement")
        );
        assert!(cut.fields.is_empty());

        let s = thing_schema(limits(1, 1));
        assert_eq!(
            s.field("item").unwrap().child("item").unwrap().kind,
            Kind::Json
        );
    }

    #[test]
    fn datatype_recursion_is_cut_at_the_limit() {
        let s = thing_schema(limits(2, 2));
        // identifier(1) -> assigner(1) -> identifier(2) -> assigner(2) -> identifier(3): JSON.
        let identifier = s.field("identifier").unwrap();
        let assigner = identifier.child("assigner").unwrap();
        let identifier2 = assigner.child("identifier").unwrap();
        let assigner2 = identifier2.child("assigner").unwrap();
        assert_eq!(identifier2.kind, Kind::Struct);
        assert_eq!(assigner2.kind, Kind::Struct);
        let cut = assigner2.child("identifier").unwrap();
        assert_eq!((cut.kind, cut.fhir.as_str()), (Kind::Json, "Identifier"));

        // The default: identifier(1) -> assigner(1) -> identifier(2): JSON.
        let s = thing_schema(DEFAULT_RECURSION_LIMITS);
        let identifier = s.field("identifier").unwrap();
        let cut = identifier
            .child("assigner")
            .unwrap()
            .child("identifier")
            .unwrap();
        assert_eq!(cut.kind, Kind::Json);
        assert!(s.leaf_count() < thing_schema(limits(2, 2)).leaf_count());
    }

    #[test]
    fn ids_are_iceberg_fresh_ids_and_unique() {
        let s = thing_schema(DEFAULT_RECURSION_LIMITS);
        let mut ids = Vec::new();
        fn walk(fields: &[Field], ids: &mut Vec<i32>) {
            for f in fields {
                ids.push(f.id);
                ids.extend(f.element_id);
                assert_eq!(f.list, f.element_id.is_some(), "{}", f.name);
                assert_eq!(f.kind == Kind::Struct, !f.fields.is_empty(), "{}", f.name);
                walk(&f.fields, ids);
            }
        }
        walk(&s.fields, &mut ids);
        ids.sort();
        let expected: Vec<i32> = (1..=ids.len() as i32).collect();
        assert_eq!(ids, expected, "ids are 1.. without gaps");
        assert_eq!(s.max_field_id(), ids.len() as i32);
        // Top-level columns come first (1..n), as Iceberg numbers a new table.
        assert_eq!(s.fields[1].id, 2);
        // Creating an Iceberg table keeps every id: the catalog's fresh ids equal ours.
        let ours = iceberg::arrow::arrow_schema_to_schema(&s.arrow_schema()).unwrap();
        let created = iceberg::spec::TableMetadataBuilder::from_table_creation(
            iceberg::TableCreation::builder()
                .name("t".to_string())
                .location("file:///tmp/t".to_string())
                .schema(ours.clone())
                .build(),
        )
        .unwrap()
        .build()
        .unwrap()
        .metadata;
        assert_eq!(
            created.current_schema().as_struct(),
            ours.as_struct(),
            "Iceberg must not renumber our field ids"
        );
        // Regenerating is deterministic.
        assert_eq!(s, thing_schema(DEFAULT_RECURSION_LIMITS));
    }

    #[test]
    fn names_differing_only_in_case_are_rejected() {
        let mut elements = thing();
        elements.push(("Thing.Name", "1", &["string"]));
        match schemas_of(&elements, DEFAULT_RECURSION_LIMITS) {
            Err(GenerateError::NameClash {
                parent,
                first,
                second,
                ..
            }) => {
                assert_eq!((parent.as_str(), first.as_str()), ("Thing", "name"));
                assert_eq!(second, "Name");
            }
            other => panic!("expected a name clash, got {other:?}"),
        }
    }

    #[test]
    fn unknown_types_and_dangling_references_are_errors() {
        let mut elements = thing();
        elements.push(("Thing.odd", "1", &["Unheard"]));
        let err = schemas_of(&elements, DEFAULT_RECURSION_LIMITS).unwrap_err();
        assert!(
            matches!(&err, GenerateError::UnknownType { path, code } if path == "Thing.odd" && code == "Unheard"),
            "{err}"
        );

        let mut elements = thing();
        elements.push(("Thing.loop", "*", &["#Thing.nowhere"]));
        let err = schemas_of(&elements, DEFAULT_RECURSION_LIMITS).unwrap_err();
        assert!(err.to_string().contains("#Thing.nowhere"), "{err}");
    }

    #[test]
    fn write_schemas_replaces_stale_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Stale.json"), "{}").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "kept").unwrap();
        let schema = thing_schema(DEFAULT_RECURSION_LIMITS);
        write_schemas(std::slice::from_ref(&schema), dir.path()).unwrap();
        let mut files: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["Thing.json", "notes.txt"]);
        let text = std::fs::read_to_string(dir.path().join("Thing.json")).unwrap();
        assert!(text.ends_with("}\n"));
        let back: ResourceSchema = serde_json::from_str(&text).unwrap();
        assert_eq!(back, schema);
    }

    #[test]
    fn missing_definitions_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = generate(dir.path()).unwrap_err();
        assert!(err.to_string().contains(RESOURCES_FILE), "{err}");
    }

    /// A snapshot element with a `base` path and a differential: the published R4 shape.
    fn element(path: &str, base: &str, max: &str, code: &str) -> Value {
        json!({"path": path, "max": max, "base": {"path": base}, "type": [{"code": code}]})
    }

    #[test]
    fn snapshot_additions_missing_from_the_differential_are_dropped() {
        let snapshot = vec![
            json!({"path": "Thing", "max": "*", "base": {"path": "Thing"}}),
            element("Thing.id", "Resource.id", "1", SYS_STRING),
            element(
                "Thing.extension",
                "DomainResource.extension",
                "*",
                "Extension",
            ),
            // Declared by the differential, but with another type there: the differential wins.
            element("Thing.note", "Thing.note", "1", "markdown"),
            // Injected: not in the differential, and neither are its children.
            element("Thing.project", "Thing.project", "1", "string"),
            element("Thing.group", "Thing.group", "*", "BackboneElement"),
            element("Thing.group.id", "Element.id", "1", SYS_STRING),
            element("Thing.group.code", "Thing.group.code", "1", "code"),
            element("Thing.active", "Thing.active", "1", "boolean"),
        ];
        let differential = vec![
            json!({"path": "Thing"}),
            element("Thing.note", "Thing.note", "1", "string"),
            // Missing from the snapshot: taken from the differential, in differential order.
            element("Thing.flag", "Thing.flag", "1", "boolean"),
            element("Thing.active", "Thing.active", "1", "boolean"),
        ];
        let mut thing = sd("Thing", "resource", false, &[]);
        thing["snapshot"]["element"] = Value::Array(snapshot);
        thing["differential"] = json!({"element": differential});
        let resources = parse_bundle(&bundle(vec![thing])).unwrap();
        let types = parse_bundle(&types_bundle()).unwrap();
        let s = Definitions::new(resources, types)
            .unwrap()
            .schemas(DEFAULT_RECURSION_LIMITS)
            .unwrap()
            .remove(0);
        assert_eq!(
            names(&s.fields[..s.fields.len() - 3]),
            [
                "id",
                "extension",
                "note",
                "_note",
                "flag",
                "_flag",
                "active",
                "_active"
            ]
        );
        assert_eq!(s.field("note").unwrap().fhir, "string");
    }

    #[test]
    fn definitions_of_other_fhir_versions_are_skipped() {
        let mut later = sd("Later", "resource", false, &[("Later", "*", &[])]);
        later["fhirVersion"] = json!("4.3.0");
        let entries = vec![
            later,
            sd("Resource", "resource", true, &[("Resource", "*", &[])]),
            sd("Thing", "resource", false, &thing()),
        ];
        let resources = parse_bundle(&bundle(entries)).unwrap();
        let types = parse_bundle(&types_bundle()).unwrap();
        let schemas = Definitions::new(resources, types)
            .unwrap()
            .schemas(DEFAULT_RECURSION_LIMITS)
            .unwrap();
        assert_eq!(names_of(&schemas), ["Thing"]);

        let mut unversioned = sd("Odd", "resource", false, &[("Odd", "*", &[])]);
        unversioned.as_object_mut().unwrap().remove("fhirVersion");
        let resources = parse_bundle(&bundle(vec![unversioned])).unwrap();
        let types = parse_bundle(&types_bundle()).unwrap();
        let err = Definitions::new(resources, types).err().unwrap();
        assert!(err.to_string().contains("Odd"), "{err}");
    }

    fn names_of(schemas: &[ResourceSchema]) -> Vec<&str> {
        schemas.iter().map(|s| s.resource_type.as_str()).collect()
    }

    #[test]
    fn primitive_sibling_named_like_a_system_column_is_dropped() {
        // OperationDefinition.resource (0..* code) would get `_resource`.
        let mut elements = thing();
        elements.push(("Thing.resource", "*", &["code"]));
        let s = schemas_of(&elements, DEFAULT_RECURSION_LIMITS)
            .unwrap()
            .remove(0);
        let resource = s.field("resource").unwrap();
        assert_eq!((resource.kind, resource.list), (Kind::String, true));
        let system = s.field(RESOURCE_COLUMN).unwrap();
        assert_eq!((system.kind, system.fhir.as_str()), (Kind::Json, "system"));
        assert_eq!(
            s.fields
                .iter()
                .filter(|f| f.name == RESOURCE_COLUMN)
                .count(),
            1
        );
    }
}
