//! Compiles the R4 `SearchParameter` definitions into the [`Catalog`].
//!
//! Each definition's FHIRPath expression is parsed ([`fhirlake_search::fhirpath`]) and resolved against
//! the generated table schemas: element names become columns and struct fields, choice
//! elements (`Observation.value`) expand to their typed columns (`valueQuantity`, ...) or the
//! one `ofType()` selects, and the leaf's FHIR type must be one the parameter type can match.
//! What cannot be resolved is recorded with its reason instead of failing the build, so the
//! server can reject those parameters by name.

use std::collections::{BTreeMap, HashMap};
use std::path::Path as FsPath;

use serde::Deserialize;

use fhirlake_schema::{Field, Kind, ResourceSchema};
use fhirlake_search::catalog::{
    Catalog, CatalogSummary, Component, ParamType, Path, SearchParam, Step, Unsupported,
};
use fhirlake_search::fhirpath::{self, Segment};

/// File name of the definitions inside the FHIR definitions directory.
pub const DEFINITIONS_FILE: &str = "search-parameters.json";
/// Where the catalogue is committed, relative to the schemas directory.
pub const CATALOG_FILE: &str = "search/parameters.json";

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a SearchParameter bundle: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Deserialize)]
struct DefinitionBundle {
    entry: Vec<DefinitionEntry>,
}

#[derive(Debug, Deserialize)]
struct DefinitionEntry {
    resource: Definition,
}

#[derive(Debug, Deserialize)]
struct Definition {
    id: String,
    url: String,
    code: String,
    base: Vec<String>,
    #[serde(rename = "type")]
    param_type: ParamType,
    #[serde(default)]
    expression: Option<String>,
    #[serde(default)]
    target: Vec<String>,
    #[serde(default)]
    component: Vec<DefinitionComponent>,
}

#[derive(Debug, Deserialize)]
struct DefinitionComponent {
    definition: String,
    expression: String,
}

/// Compiles every definition in `definitions_dir` against `schemas`.
pub fn generate(
    definitions_dir: &FsPath,
    schemas: &[ResourceSchema],
) -> Result<Catalog, CatalogError> {
    let path = definitions_dir.join(DEFINITIONS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| CatalogError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let bundle: DefinitionBundle =
        serde_json::from_str(&text).map_err(|source| CatalogError::Parse {
            path: path.display().to_string(),
            source,
        })?;
    let definitions: Vec<Definition> = bundle.entry.into_iter().map(|e| e.resource).collect();
    let mut catalog = compile_all(&definitions, schemas);
    let (summary, mandatory) = element_flags(definitions_dir)?;
    catalog.summary_elements = summary;
    catalog.mandatory_elements = mandatory;
    Ok(catalog)
}

type ElementLists = BTreeMap<String, Vec<String>>;

/// The `isSummary` and mandatory top-level elements of every resource type, from the
/// StructureDefinitions.
fn element_flags(definitions_dir: &FsPath) -> Result<(ElementLists, ElementLists), CatalogError> {
    #[derive(Deserialize)]
    struct Bundle {
        entry: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        resource: serde_json::Value,
    }
    let path = definitions_dir.join(crate::schema::RESOURCES_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| CatalogError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let bundle: Bundle = serde_json::from_str(&text).map_err(|source| CatalogError::Parse {
        path: path.display().to_string(),
        source,
    })?;
    let mut summary = BTreeMap::new();
    let mut mandatory = BTreeMap::new();
    for entry in bundle.entry {
        let sd = &entry.resource;
        if sd["resourceType"] != "StructureDefinition"
            || sd["kind"] != "resource"
            || sd["abstract"] == true
        {
            continue;
        }
        let Some(ty) = sd["type"].as_str() else {
            continue;
        };
        let mut s = Vec::new();
        let mut m = Vec::new();
        for el in sd["snapshot"]["element"].as_array().into_iter().flatten() {
            let Some(p) = el["path"].as_str() else {
                continue;
            };
            let Some(name) = p.strip_prefix(ty).and_then(|r| r.strip_prefix('.')) else {
                continue;
            };
            if name.contains('.') {
                continue;
            }
            if el["isSummary"] == true {
                s.push(name.to_string());
            }
            if el["min"].as_u64().unwrap_or(0) >= 1 {
                m.push(name.to_string());
            }
        }
        summary.insert(ty.to_string(), s);
        mandatory.insert(ty.to_string(), m);
    }
    Ok((summary, mandatory))
}

/// Writes the catalogue as pretty JSON under `schemas_dir`, leaving an unchanged file alone.
pub fn write_catalog(catalog: &Catalog, schemas_dir: &FsPath) -> Result<(), CatalogError> {
    let path = schemas_dir.join(CATALOG_FILE);
    let io_err = |source| CatalogError::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err)?;
    }
    let mut text = serde_json::to_string_pretty(catalog).expect("catalogue serializes");
    text.push('\n');
    if std::fs::read(&path).is_ok_and(|old| old == text.as_bytes()) {
        return Ok(());
    }
    std::fs::write(&path, text).map_err(io_err)
}

fn compile_all(definitions: &[Definition], schemas: &[ResourceSchema]) -> Catalog {
    let by_type: HashMap<&str, &ResourceSchema> = schemas
        .iter()
        .map(|s| (s.resource_type.as_str(), s))
        .collect();
    let by_url: HashMap<&str, &Definition> =
        definitions.iter().map(|d| (d.url.as_str(), d)).collect();
    // Common parameters are compiled against one representative type: every resource table
    // has the same `id`, `meta` and (for DomainResources) `text` columns.
    let representative = by_type.get("Patient").copied();

    let mut common = Vec::new();
    let mut resources: BTreeMap<String, Vec<SearchParam>> = BTreeMap::new();
    let mut unsupported = Vec::new();
    let mut compiled_definitions = 0;
    for def in definitions {
        let mut all_ok = true;
        for base in &def.base {
            let is_common = base == "Resource" || base == "DomainResource";
            let schema = if is_common {
                representative
            } else {
                by_type.get(base.as_str()).copied()
            };
            let result = match schema {
                Some(schema) => compile(def, base, schema, &by_url),
                None => Err(format!("no table schema for base type {base}")),
            };
            match result {
                Ok(param) if is_common => common.push(param),
                Ok(param) => resources.entry(base.clone()).or_default().push(param),
                Err(reason) => {
                    all_ok = false;
                    unsupported.push(Unsupported {
                        id: def.id.clone(),
                        resource_type: base.clone(),
                        code: def.code.clone(),
                        reason,
                    });
                }
            }
        }
        if all_ok {
            compiled_definitions += 1;
        }
    }
    for params in resources.values_mut() {
        params.sort_by(|a, b| a.code.cmp(&b.code));
    }
    common.sort_by(|a, b| a.code.cmp(&b.code));
    unsupported.sort_by(|a, b| (&a.resource_type, &a.code).cmp(&(&b.resource_type, &b.code)));
    let summary = CatalogSummary {
        definitions: definitions.len(),
        compiled_definitions,
        compiled_parameters: common.len() + resources.values().map(Vec::len).sum::<usize>(),
        unsupported_parameters: unsupported.len(),
    };
    Catalog {
        fhir_version: "4.0.1".into(),
        summary,
        common,
        resources,
        unsupported,
        summary_elements: BTreeMap::new(),
        mandatory_elements: BTreeMap::new(),
    }
}

/// The expression of the narrative and full-text parameters, which R4 leaves undefined.
fn implicit_expression(def: &Definition) -> Option<&'static str> {
    match def.code.as_str() {
        "_text" => Some("DomainResource.text.div"),
        "_content" => Some("Resource._resource"),
        _ => None,
    }
}

fn compile(
    def: &Definition,
    base: &str,
    schema: &ResourceSchema,
    by_url: &HashMap<&str, &Definition>,
) -> Result<SearchParam, String> {
    if def.param_type == ParamType::Special {
        return Err("special parameters (geographic search) are not supported".into());
    }
    let expression = def
        .expression
        .as_deref()
        .or_else(|| implicit_expression(def))
        .ok_or_else(|| "the definition has no expression".to_string())?;
    let alternatives = fhirpath::parse(expression).map_err(|e| e.to_string())?;
    let mine: Vec<&[Segment]> = alternatives
        .iter()
        .filter(|segs| matches!(segs.first(), Some(Segment::Name(n)) if n == base))
        .map(|segs| &segs[1..])
        .collect();
    if mine.is_empty() {
        return Err(format!("no expression path starts at {base}"));
    }
    let mut paths = Vec::new();
    let mut errors = Vec::new();
    let mut components = Vec::new();
    if def.param_type == ParamType::Composite {
        // A composite matches when all components match within one element of its path.
        let [segs] = mine.as_slice() else {
            return Err("composite over several paths".into());
        };
        let element = resolve(Context::Root(schema), segs)?;
        let [element] = element.as_slice() else {
            return Err("composite over a choice element".into());
        };
        for comp in &def.component {
            let comp_def = by_url
                .get(comp.definition.as_str())
                .ok_or_else(|| format!("component {} is not defined", comp.definition))?;
            let comp_paths =
                compile_relative(schema, element, &comp.expression, comp_def.param_type)?;
            components.push(Component {
                code: comp_def.code.clone(),
                param_type: comp_def.param_type,
                paths: comp_paths,
            });
        }
        if element.column.is_some() {
            paths.push(element.to_path());
        }
    } else {
        for segs in mine {
            match resolve(Context::Root(schema), segs) {
                Ok(found) => {
                    for p in found {
                        if compatible(def.param_type, &p.fhir) {
                            paths.push(p.to_path());
                        } else {
                            errors.push(format!(
                                "{} values cannot be searched as {}",
                                p.fhir,
                                def.param_type.as_str()
                            ));
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        if paths.is_empty() {
            errors.dedup();
            return Err(errors.join("; "));
        }
    }
    Ok(SearchParam {
        id: def.id.clone(),
        code: def.code.clone(),
        param_type: def.param_type,
        expression: expression.to_string(),
        paths,
        targets: def.target.clone(),
        components,
    })
}

/// Compiles a component expression relative to the composite's element.
fn compile_relative(
    schema: &ResourceSchema,
    element: &Resolved<'_>,
    expression: &str,
    param_type: ParamType,
) -> Result<Vec<Path>, String> {
    let alternatives = fhirpath::parse(expression).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for segs in &alternatives {
        let start = match element.field {
            None => Context::Root(schema),
            Some(f) => Context::Element(f),
        };
        for mut p in resolve(start, segs)? {
            if !compatible(param_type, &p.fhir) {
                continue;
            }
            if element.field.is_some() {
                // Relative to the element: the column is the element's, not repeated here.
                let mut steps = Vec::new();
                if let Some(col) = p.column.take() {
                    steps.push(Step::Field(col));
                }
                steps.append(&mut p.steps);
                p.steps = steps;
            }
            out.push(p.to_path());
        }
    }
    if out.is_empty() {
        return Err(format!(
            "component '{expression}' has no {} values",
            param_type.as_str()
        ));
    }
    Ok(out)
}

#[derive(Clone, Copy)]
enum Context<'a> {
    Root(&'a ResourceSchema),
    Element(&'a Field),
}

/// A path being resolved: where it is, and the column and steps that lead there.
#[derive(Clone)]
struct Resolved<'a> {
    field: Option<&'a Field>,
    column: Option<String>,
    steps: Vec<Step>,
    fhir: String,
}

impl Resolved<'_> {
    fn to_path(&self) -> Path {
        Path {
            column: self.column.clone(),
            steps: self.steps.clone(),
            fhir: self.fhir.clone(),
        }
    }
}

fn children<'a>(ctx: Context<'a>) -> &'a [Field] {
    match ctx {
        Context::Root(s) => &s.fields,
        Context::Element(f) => &f.fields,
    }
}

/// Resolves `segs` from `start`, expanding choice elements.
fn resolve<'a>(start: Context<'a>, segs: &[Segment]) -> Result<Vec<Resolved<'a>>, String> {
    let at_root = matches!(start, Context::Root(_));
    resolve_from(
        vec![Partial {
            ctx: start,
            column: None,
            steps: Vec::new(),
            at_root,
        }],
        segs,
    )
}

#[derive(Clone)]
struct Partial<'a> {
    ctx: Context<'a>,
    column: Option<String>,
    steps: Vec<Step>,
    at_root: bool,
}

fn resolve_from<'a>(
    mut partials: Vec<Partial<'a>>,
    segs: &[Segment],
) -> Result<Vec<Resolved<'a>>, String> {
    let mut i = 0;
    while i < segs.len() {
        let mut next = Vec::new();
        let mut consumed = 1;
        for p in &partials {
            match &segs[i] {
                Segment::Name(name) => {
                    let kids = children(p.ctx);
                    if let Some(field) = kids.iter().find(|f| &f.name == name) {
                        next.push(descend(p, field)?);
                        continue;
                    }
                    // A choice element: `value` -> valueQuantity, valueString, ...
                    let variants: Vec<&Field> =
                        kids.iter().filter(|f| is_choice_variant(name, f)).collect();
                    if variants.is_empty() {
                        return Err(format!("no element '{name}'"));
                    }
                    if let Some(Segment::OfType(t)) = segs.get(i + 1) {
                        consumed = 2;
                        match variants.iter().find(|f| f.fhir.eq_ignore_ascii_case(t)) {
                            Some(field) => next.push(descend(p, field)?),
                            None => return Err(format!("'{name}' has no {t} variant")),
                        }
                    } else {
                        for field in variants {
                            next.push(descend(p, field)?);
                        }
                    }
                }
                Segment::OfType(t) => {
                    if let Context::Element(f) = p.ctx
                        && f.fhir.eq_ignore_ascii_case(t)
                    {
                        next.push(p.clone());
                    }
                }
                Segment::Resolves(t) => {
                    let Context::Element(f) = p.ctx else {
                        return Err("resolve() on a resource".into());
                    };
                    if f.fhir != "Reference" {
                        return Err(format!("resolve() on {}", f.fhir));
                    }
                    let mut q = p.clone();
                    q.steps.push(Step::Resolves(t.clone()));
                    next.push(q);
                }
                Segment::WhereEq { element, value } => {
                    let kids = children(p.ctx);
                    if !kids
                        .iter()
                        .any(|f| &f.name == element && f.kind == Kind::String && !f.list)
                    {
                        return Err(format!("where() on a missing element '{element}'"));
                    }
                    let mut q = p.clone();
                    q.steps.push(Step::Where {
                        element: element.clone(),
                        value: value.clone(),
                    });
                    next.push(q);
                }
            }
        }
        if next.is_empty() {
            return Err("no values of the requested type".into());
        }
        partials = next;
        i += consumed;
    }
    partials
        .into_iter()
        .map(|p| {
            let fhir = match p.ctx {
                Context::Element(f) => {
                    if f.kind == Kind::Json && f.name != fhirlake_schema::RESOURCE_COLUMN {
                        return Err(format!("'{}' is stored as JSON text ({})", f.name, f.fhir));
                    }
                    if f.name == fhirlake_schema::RESOURCE_COLUMN {
                        "string".to_string()
                    } else {
                        f.fhir.clone()
                    }
                }
                Context::Root(s) => s.resource_type.clone(),
            };
            Ok(Resolved {
                field: match p.ctx {
                    Context::Element(f) => Some(f),
                    Context::Root(_) => None,
                },
                column: p.column,
                steps: p.steps,
                fhir,
            })
        })
        .collect()
}

fn descend<'a>(p: &Partial<'a>, field: &'a Field) -> Result<Partial<'a>, String> {
    if let Context::Element(parent) = p.ctx
        && parent.kind != Kind::Struct
    {
        return Err(format!("cannot navigate into {}", parent.fhir));
    }
    let mut q = p.clone();
    if p.at_root {
        q.column = Some(field.name.clone());
        q.at_root = false;
    } else {
        q.steps.push(Step::Field(field.name.clone()));
    }
    q.ctx = Context::Element(field);
    Ok(q)
}

/// `valueQuantity` is a variant of the choice element `value` (`value[x]`).
fn is_choice_variant(base: &str, field: &Field) -> bool {
    field.name.strip_prefix(base).is_some_and(|rest| {
        rest.starts_with(|c: char| c.is_ascii_uppercase()) && rest.eq_ignore_ascii_case(&field.fhir)
    })
}

/// Whether a parameter of `param_type` can match values of FHIR type `fhir`.
pub fn compatible(param_type: ParamType, fhir: &str) -> bool {
    match param_type {
        ParamType::Number => matches!(fhir, "decimal" | "integer" | "positiveInt" | "unsignedInt"),
        ParamType::Date => matches!(fhir, "date" | "dateTime" | "instant" | "Period" | "Timing"),
        ParamType::String => matches!(
            fhir,
            "string"
                | "markdown"
                | "HumanName"
                | "Address"
                | "xhtml"
                | "code"
                | "uri"
                | "url"
                | "canonical"
                | "id"
        ),
        ParamType::Token => matches!(
            fhir,
            "code"
                | "string"
                | "id"
                | "uri"
                | "url"
                | "canonical"
                | "oid"
                | "uuid"
                | "boolean"
                | "Coding"
                | "CodeableConcept"
                | "Identifier"
                | "ContactPoint"
        ),
        ParamType::Reference => matches!(fhir, "Reference" | "canonical" | "uri" | "url"),
        ParamType::Quantity => matches!(
            fhir,
            "Quantity"
                | "SimpleQuantity"
                | "Age"
                | "Duration"
                | "Distance"
                | "Count"
                | "MoneyQuantity"
                | "Money"
                | "Range"
        ),
        ParamType::Uri => matches!(
            fhir,
            "uri" | "url" | "canonical" | "oid" | "uuid" | "string"
        ),
        ParamType::Composite | ParamType::Special => false,
    }
}
