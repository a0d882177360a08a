//! The committed `schemas/` directory is exactly what the generator makes from the R4
//! definitions, and the generated schemas have the shape the SQL layer relies on.

use std::path::{Path, PathBuf};

use fhirlake::schema::{Field, Kind, Registry, ResourceSchema};
use fhirlake_gen::schema::{self as generate, DEFAULT_RECURSION_LIMITS, FHIR_VERSION};

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The R4 definitions, or `None` (with a note) when this checkout has no `../shared/fhir-r4`.
fn definitions_dir() -> Option<PathBuf> {
    let dir = manifest_dir().join("../shared/fhir-r4");
    if dir.join(generate::RESOURCES_FILE).is_file() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: FHIR R4 definitions not found at {}; the committed schemas are not \
             regenerated or compared",
            dir.display()
        );
        None
    }
}

fn committed_dir() -> PathBuf {
    manifest_dir().join("schemas")
}

/// Every committed schema, parsed, sorted by type.
fn committed() -> Vec<ResourceSchema> {
    let mut schemas: Vec<ResourceSchema> = std::fs::read_dir(committed_dir())
        .expect("schemas/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("readable schema");
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        })
        .collect();
    schemas.sort_by(|a, b| a.resource_type.cmp(&b.resource_type));
    schemas
}

fn field<'a>(schema: &'a ResourceSchema, name: &str) -> &'a Field {
    schema
        .field(name)
        .unwrap_or_else(|| panic!("{} has no field {name}", schema.resource_type))
}

fn child<'a>(f: &'a Field, name: &str) -> &'a Field {
    f.child(name)
        .unwrap_or_else(|| panic!("{} has no child {name}", f.name))
}

#[test]
fn committed_schemas_match_a_fresh_generation() {
    let Some(definitions) = definitions_dir() else {
        return;
    };
    let schemas = generate::generate(&definitions).expect("definitions generate");
    let out = tempfile::tempdir().unwrap();
    generate::write_schemas(&schemas, out.path()).unwrap();

    let list = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect();
        names.sort();
        names
    };
    let fresh = list(out.path());
    assert_eq!(
        fresh,
        list(&committed_dir()),
        "schemas/ holds other files than the generator writes; regenerate it"
    );
    for name in &fresh {
        let want = std::fs::read(out.path().join(name)).unwrap();
        let have = std::fs::read(committed_dir().join(name)).unwrap();
        assert!(
            want == have,
            "schemas/{name} differs from a fresh generation; regenerate it"
        );
    }
}

#[test]
fn generation_covers_the_r4_resource_types() {
    let Some(definitions) = definitions_dir() else {
        return;
    };
    let schemas = generate::generate(&definitions).unwrap();
    let types: Vec<&str> = schemas.iter().map(|s| s.resource_type.as_str()).collect();
    assert_eq!(types.len(), 146, "{types:?}");
    for expected in [
        "Patient",
        "Observation",
        "Bundle",
        "Parameters",
        "Binary",
        "Task",
    ] {
        assert!(types.contains(&expected), "{expected} missing");
    }
    // The R4B backport in the bundle is not an R4 type; abstract bases are not tables.
    for absent in ["SubscriptionStatus", "Resource", "DomainResource"] {
        assert!(!types.contains(&absent), "{absent} must not be generated");
    }
    assert!(schemas.iter().all(|s| s.fhir_version == FHIR_VERSION));
}

#[test]
fn patient_columns_follow_the_athena_conventions() {
    let patient = Registry::global().get("Patient").unwrap();
    let birth_date = field(&patient, "birthDate");
    assert_eq!(
        (birth_date.kind, birth_date.fhir.as_str(), birth_date.list),
        (Kind::String, "date", false)
    );
    let sibling = field(&patient, "_birthDate");
    assert_eq!(
        (sibling.kind, sibling.fhir.as_str()),
        (Kind::Json, "Element")
    );

    let name = field(&patient, "name");
    assert_eq!((name.kind, name.list), (Kind::Struct, true));
    assert_eq!(name.fhir, "HumanName");
    let given = child(name, "given");
    assert_eq!((given.kind, given.list), (Kind::String, true));
    let given_sibling = child(name, "_given");
    assert_eq!((given_sibling.kind, given_sibling.list), (Kind::Json, true));
    // Athena renders HumanName with exactly these members, siblings included.
    let members: Vec<&str> = name.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        members,
        [
            "id",
            "extension",
            "use",
            "_use",
            "text",
            "_text",
            "family",
            "_family",
            "given",
            "_given",
            "prefix",
            "_prefix",
            "suffix",
            "_suffix",
            "period"
        ]
    );

    let extension = field(&patient, "extension");
    assert_eq!((extension.kind, extension.list), (Kind::Json, true));
    assert_eq!(field(&patient, "deceasedBoolean").kind, Kind::Boolean);
    assert_eq!(field(&patient, "deceasedDateTime").kind, Kind::String);
    assert_eq!(field(&patient, "multipleBirthInteger").kind, Kind::Int);

    // Meta is the R4 Meta, without the redistribution's additions (`project`, `author`, ...).
    let meta: Vec<&str> = field(&patient, "meta")
        .fields
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(
        meta,
        [
            "id",
            "extension",
            "versionId",
            "_versionId",
            "lastUpdated",
            "_lastUpdated",
            "source",
            "_source",
            "profile",
            "_profile",
            "security",
            "tag"
        ]
    );

    let last: Vec<(&str, Kind)> = patient.fields[patient.fields.len() - 3..]
        .iter()
        .map(|f| (f.name.as_str(), f.kind))
        .collect();
    assert_eq!(
        last,
        [
            ("_resource", Kind::Json),
            ("_version_id", Kind::Long),
            ("_last_updated", Kind::Timestamp)
        ]
    );
}

#[test]
fn observation_and_recursive_structures() {
    let observation = Registry::global().get("Observation").unwrap();
    let quantity = field(&observation, "valueQuantity");
    assert_eq!(
        (quantity.kind, quantity.fhir.as_str()),
        (Kind::Struct, "Quantity")
    );
    assert_eq!(child(quantity, "value").kind, Kind::Double);
    assert_eq!(child(quantity, "unit").kind, Kind::String);
    let coding = child(field(&observation, "code"), "coding");
    assert_eq!((coding.kind, coding.list), (Kind::Struct, true));
    assert_eq!(child(coding, "code").kind, Kind::String);

    // A Reference keeps its identifier as a struct, whose assigner is already JSON.
    let subject = field(&observation, "subject");
    assert_eq!(child(subject, "reference").kind, Kind::String);
    let identifier = child(subject, "identifier");
    assert_eq!(identifier.kind, Kind::Struct);
    assert_eq!(DEFAULT_RECURSION_LIMITS.datatype, 1);
    assert_eq!(child(identifier, "assigner").kind, Kind::Json);

    // component.referenceRange re-enters Observation.referenceRange (a contentReference).
    let range = child(field(&observation, "component"), "referenceRange");
    assert_eq!((range.kind, range.list), (Kind::Struct, true));
    assert_eq!(child(child(range, "low"), "value").kind, Kind::Double);

    // Questionnaire.item.item is columns; one level deeper is JSON.
    let questionnaire = Registry::global().get("Questionnaire").unwrap();
    let item = field(&questionnaire, "item");
    let nested = child(item, "item");
    assert_eq!((nested.kind, nested.list), (Kind::Struct, true));
    let cut = child(nested, "item");
    assert_eq!((cut.kind, cut.list), (Kind::Json, true));

    // Resource-typed elements are JSON.
    let bundle = Registry::global().get("Bundle").unwrap();
    let entry = field(&bundle, "entry");
    assert_eq!(child(entry, "resource").kind, Kind::Json);
    assert_eq!(child(child(entry, "response"), "outcome").kind, Kind::Json);
}

#[test]
fn every_schema_converts_to_iceberg() {
    let registry = Registry::global();
    let types: Vec<&str> = registry.resource_types().collect();
    assert_eq!(types.len(), committed().len());
    for name in types {
        let schema = registry.get(name).unwrap();
        assert_eq!(schema.resource_type, name);
        let arrow = schema.arrow_schema();
        let iceberg = iceberg::arrow::arrow_schema_to_schema(&arrow)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            iceberg.highest_field_id(),
            schema.max_field_id(),
            "{name}: Iceberg ids"
        );
        // Names inside one struct never collide case-insensitively.
        fn check(fields: &[Field], at: &str) {
            let mut seen = std::collections::HashSet::new();
            for f in fields {
                assert!(
                    seen.insert(f.name.to_ascii_lowercase()),
                    "{at}.{} is ambiguous",
                    f.name
                );
                check(&f.fields, &format!("{at}.{}", f.name));
            }
        }
        check(&schema.fields, name);
    }
}

#[test]
fn registry_holds_every_generated_type() {
    let Some(definitions) = definitions_dir() else {
        return;
    };
    let schemas = generate::generate(&definitions).unwrap();
    let registry = Registry::global();
    for schema in &schemas {
        let embedded = registry
            .get(&schema.resource_type)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(*embedded, *schema);
    }
    assert_eq!(registry.resource_types().count(), schemas.len());
}

/// The committed search catalogue is exactly what the generator makes from the definitions,
/// and at least 95% of the R4 search parameter definitions compile.
#[test]
fn committed_search_catalogue_matches_a_fresh_generation() {
    let Some(definitions) = definitions_dir() else {
        return;
    };
    let catalog = fhirlake_gen::search::generate(&definitions, &committed())
        .expect("search parameters compile");
    let text =
        std::fs::read_to_string(committed_dir().join(fhirlake_gen::search::CATALOG_FILE)).unwrap();
    let on_disk: fhirlake::search::Catalog = serde_json::from_str(&text).unwrap();
    assert!(
        catalog == on_disk,
        "schemas/search/parameters.json is stale: run `cargo run -p fhirlake-gen`"
    );
    let s = &catalog.summary;
    assert!(
        s.compiled_definitions * 100 >= s.definitions * 95,
        "{} of {} definitions compile",
        s.compiled_definitions,
        s.definitions
    );
    assert_eq!(&catalog, fhirlake::search::Catalog::global());
}

/// The committed Patient compartment is what the generator makes from the definition.
#[test]
fn committed_patient_compartment_matches_a_fresh_generation() {
    let Some(definitions) = definitions_dir() else {
        return;
    };
    let fresh = fhirlake_gen::compartment::generate(&definitions).unwrap();
    assert!(fresh.len() > 60, "{} types", fresh.len());
    assert_eq!(
        fresh,
        fhirlake::search::compartment::PatientCompartment::embedded_params(),
        "schemas/compartments/patient.json is stale: run `cargo run -p fhirlake-gen`"
    );
}
