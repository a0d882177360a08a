//! Structural validation of one resource against its generated schema.
//!
//! Checks what the lake relies on: the JSON parses, `resourceType` is an R4 type, `id` is
//! present and well-formed, and every property is known for its type with the right JSON
//! kind and cardinality. Diagnostics use HealthLake's wording where its guide gives it.

use std::sync::{Arc, LazyLock};

use regex::Regex;
use serde_json::{Map, Value};

use fhirlake_schema::outcome::{Issue, OperationOutcome};
use fhirlake_schema::{Field, FieldList, Kind, Registry, ResourceSchema};

/// A resource that passed validation.
#[derive(Debug, Clone)]
pub struct ValidResource {
    pub resource_type: &'static str,
    pub id: String,
    /// The resource JSON text as received.
    pub json: String,
}

static RESOURCE_TYPE_PATTERN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z]{1,256}$").unwrap());
static ID_PATTERN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9\-.]{1,64}$").unwrap());

/// Validates one NDJSON line (or a request body) as a FHIR R4 resource.
pub fn validate_resource(text: &str) -> Result<ValidResource, OperationOutcome> {
    let value: Value = serde_json::from_str(text)
        .map_err(|_| OperationOutcome::error("Invalid JSON found in input file"))?;
    let Value::Object(obj) = &value else {
        return Err(OperationOutcome::error("Invalid JSON found in input file"));
    };
    let schema = resource_schema(obj)?;
    let id = match obj.get("id") {
        None => {
            return Err(OperationOutcome::error(
                "Missing required id field in resource json",
            ));
        }
        Some(Value::String(id)) => id.clone(),
        Some(_) => {
            return Err(OperationOutcome::error(
                "1 validation error detected: Value at 'resourceId' failed to satisfy constraint: Member must satisfy regular expression pattern: [A-Za-z0-9-.]{1,64}",
            ));
        }
    };
    check_id(&id)?;
    let mut issues = Vec::new();
    let rt = schema.resource_type.as_str();
    check_object(
        obj,
        schema.columns(),
        &format!("/{rt}"),
        rt,
        true,
        &mut issues,
    );
    if !issues.is_empty() {
        return Err(OperationOutcome::new(issues));
    }
    let resource_type = Registry::global()
        .resource_types()
        .find(|t| *t == rt)
        .expect("schema came from the registry");
    Ok(ValidResource {
        resource_type,
        id,
        json: text.to_string(),
    })
}

/// Checks a resource id against FHIR's (and HealthLake's) id rule.
pub fn check_id(id: &str) -> Result<(), OperationOutcome> {
    if ID_PATTERN.is_match(id) {
        return Ok(());
    }
    let pattern = "Value at 'resourceId' failed to satisfy constraint: Member must satisfy regular expression pattern: [A-Za-z0-9-.]{1,64}";
    Err(OperationOutcome::error(if id.is_empty() {
        format!(
            "2 validation errors detected: {pattern}; Value at 'resourceId' failed to satisfy constraint: Member must have length greater than or equal to 1"
        )
    } else {
        format!("1 validation error detected: {pattern}")
    }))
}

fn resource_schema(obj: &Map<String, Value>) -> Result<Arc<ResourceSchema>, OperationOutcome> {
    let rt = match obj.get("resourceType") {
        Some(Value::String(rt)) => rt.as_str(),
        Some(other) => {
            return Err(OperationOutcome::error(format!(
                "1 validation error detected: Value '{other}' at 'resourceType' failed to satisfy constraint: Member must satisfy regular expression pattern: [A-Za-z]{{1,256}}"
            )));
        }
        None => {
            return Err(OperationOutcome::error(
                "Missing required resourceType field in resource json",
            ));
        }
    };
    if !RESOURCE_TYPE_PATTERN.is_match(rt) {
        return Err(OperationOutcome::error(format!(
            "1 validation error detected: Value '{rt}' at 'resourceType' failed to satisfy constraint: Member must satisfy regular expression pattern: [A-Za-z]{{1,256}}"
        )));
    }
    Registry::global().get(rt).map_err(|_| {
        OperationOutcome::error(format!(
            "Resource type '{rt}' is not a FHIR R4 resource type"
        ))
    })
}

fn check_object(
    obj: &Map<String, Value>,
    fields: FieldList<'_>,
    location: &str,
    expression: &str,
    top_level: bool,
    issues: &mut Vec<Issue>,
) {
    for (key, value) in obj {
        if top_level && key == "resourceType" {
            continue;
        }
        let field = fields
            .get(key)
            .map(|(_, f)| f)
            .filter(|f| f.fhir != "system");
        let Some(field) = field else {
            issues.push(
                Issue::processing(format!("Unrecognised property '@{key}'"))
                    .at(location, expression),
            );
            continue;
        };
        let loc = format!("{location}/{key}");
        let expr = format!("{expression}.{key}");
        if field.list {
            match value {
                Value::Array(items) => {
                    if items.is_empty() {
                        issues.push(
                            Issue::processing("Array properties must not be empty").at(&loc, &expr),
                        );
                    }
                    for (i, item) in items.iter().enumerate() {
                        let expr = format!("{expr}[{i}]");
                        // FHIR JSON pads primitive arrays and their `_x` siblings with null.
                        let null_ok = !matches!(field.kind, Kind::Struct)
                            && (field.fhir == "Element" || is_primitive(field.kind));
                        if item.is_null() && null_ok {
                            continue;
                        }
                        check_value(item, field, &loc, &expr, issues);
                    }
                }
                other => issues.push(
                    Issue::processing(format!(
                        "This property must be an Array, not {}",
                        json_kind(other)
                    ))
                    .at(&loc, &expr),
                ),
            }
        } else if value.is_array() {
            issues.push(
                Issue::processing(
                    "This property must be an simple value, not a com.google.gson.JsonArray",
                )
                .at(&loc, &expr),
            );
        } else {
            check_value(value, field, &loc, &expr, issues);
        }
    }
}

fn is_primitive(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Boolean | Kind::Int | Kind::Long | Kind::Double | Kind::String
    )
}

fn check_value(value: &Value, field: &Field, loc: &str, expr: &str, issues: &mut Vec<Issue>) {
    let expected = match field.kind {
        Kind::Boolean if value.is_boolean() => return,
        Kind::Boolean => "a boolean",
        Kind::Int | Kind::Long
            if value
                .as_i64()
                .is_some_and(|v| field.kind == Kind::Long || i32::try_from(v).is_ok()) =>
        {
            return;
        }
        Kind::Int | Kind::Long => "an integer",
        Kind::Double if value.is_number() => return,
        Kind::Double => "a number",
        Kind::String | Kind::Timestamp if value.is_string() => return,
        Kind::String | Kind::Timestamp => "a string",
        Kind::Json if value.is_object() => return,
        Kind::Json => "an object",
        Kind::Struct => match value {
            Value::Object(obj) => {
                check_object(obj, field.children(), loc, expr, false, issues);
                return;
            }
            _ => "an object",
        },
    };
    let diagnostics = if is_primitive(field.kind) {
        format!(
            "Error parsing JSON: the primitive value must be {expected}, not {}",
            json_kind(value)
        )
    } else {
        format!("This property must be {expected}, not {}", json_kind(value))
    };
    issues.push(Issue::processing(diagnostics).at(loc, expr));
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diagnostics(text: &str) -> Vec<String> {
        validate_resource(text)
            .unwrap_err()
            .issue
            .into_iter()
            .map(|i| i.diagnostics)
            .collect()
    }

    #[test]
    fn accepts_a_synthea_like_patient() {
        let ok = validate_resource(
            r#"{"resourceType":"Patient","id":"p-1","extension":[{"url":"u","valueString":"x"}],
               "name":[{"family":"Doe","given":["J"],"_given":[{"extension":[]}]}],
               "birthDate":"1970-01-01","multipleBirthInteger":2,"deceasedBoolean":false}"#,
        )
        .unwrap();
        assert_eq!(ok.resource_type, "Patient");
        assert_eq!(ok.id, "p-1");
    }

    #[test]
    fn healthlake_messages() {
        assert_eq!(
            diagnostics("{not json"),
            ["Invalid JSON found in input file"]
        );
        assert_eq!(
            diagnostics(r#"{"resourceType":"Patient"}"#),
            ["Missing required id field in resource json"]
        );
        assert_eq!(
            diagnostics(r#"{"resourceType":"Patient123","id":"a"}"#),
            [
                "1 validation error detected: Value 'Patient123' at 'resourceType' failed to satisfy constraint: Member must satisfy regular expression pattern: [A-Za-z]{1,256}"
            ]
        );
        assert!(
            diagnostics(r#"{"resourceType":"Patient","id":""}"#)[0]
                .starts_with("2 validation errors detected")
        );
        assert!(
            diagnostics(r#"{"resourceType":"Patient","id":"a b"}"#)[0]
                .starts_with("1 validation error detected: Value at 'resourceId'")
        );
        assert_eq!(
            diagnostics(r#"{"resourceType":"Patient","id":"a","@telecom":[]}"#),
            ["Unrecognised property '@@telecom'"]
        );
        assert_eq!(
            diagnostics(r#"{"resourceType":"Patient","id":"a","gender":["male"]}"#),
            ["This property must be an simple value, not a com.google.gson.JsonArray"]
        );
    }

    #[test]
    fn kinds_and_cardinality_are_checked_with_locations() {
        let oo = validate_resource(
            r#"{"resourceType":"Patient","id":"a","name":{"family":"x"},"active":"yes",
               "address":[{"line":"1 Main St"}]}"#,
        )
        .unwrap_err();
        let got: Vec<(String, String)> = oo
            .issue
            .iter()
            .map(|i| (i.diagnostics.clone(), i.expression[0].clone()))
            .collect();
        assert!(got.contains(&(
            "This property must be an Array, not an object".into(),
            "Patient.name".into()
        )));
        assert!(got.contains(&(
            "Error parsing JSON: the primitive value must be a boolean, not a string".into(),
            "Patient.active".into()
        )));
        assert!(got.contains(&(
            "This property must be an Array, not a string".into(),
            "Patient.address[0].line".into()
        )));
    }

    #[test]
    fn unknown_type() {
        assert_eq!(
            diagnostics(r#"{"resourceType":"Foo","id":"a"}"#),
            ["Resource type 'Foo' is not a FHIR R4 resource type"]
        );
    }
}
