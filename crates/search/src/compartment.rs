//! The Patient compartment: which resources belong to which patients.
//!
//! The R4 CompartmentDefinition lists, per resource type, the search parameters whose
//! references place a resource in a patient's compartment (`Observation`: `subject`,
//! `performer`). It is generated from `compartmentdefinition-patient.json` into
//! `schemas/compartments/patient.json` (by `fhirlake-gen`) and resolved here through the compiled search
//! catalogue, so membership is decided on the stored JSON without FHIRPath at run time.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::OnceLock;

use serde_json::Value;

use crate::Catalog;
use crate::catalog::{Path, Step};
use crate::eval::{Criterion, Test};
use crate::query::Filter;

/// Where the generated definition lives under `schemas/`.
pub const COMPARTMENT_FILE: &str = "compartments/patient.json";

const EMBEDDED: &str = include_str!("../../../schemas/compartments/patient.json");

/// The Patient compartment, resolved to reference paths per resource type.
#[derive(Debug)]
pub struct PatientCompartment {
    paths: BTreeMap<String, Vec<Path>>,
}

impl PatientCompartment {
    /// The embedded definition, resolved once.
    pub fn global() -> &'static PatientCompartment {
        static COMPARTMENT: OnceLock<PatientCompartment> = OnceLock::new();
        COMPARTMENT.get_or_init(|| {
            let params: BTreeMap<String, Vec<String>> =
                serde_json::from_str(EMBEDDED).expect("the embedded compartment definition parses");
            Self::resolve(&params, Catalog::global())
        })
    }

    /// The committed definition as parameter codes (to compare with a fresh generation).
    pub fn embedded_params() -> BTreeMap<String, Vec<String>> {
        serde_json::from_str(EMBEDDED).expect("the embedded compartment definition parses")
    }

    fn resolve(params: &BTreeMap<String, Vec<String>>, catalog: &Catalog) -> Self {
        let paths = params
            .iter()
            .map(|(ty, codes)| {
                let paths = codes
                    .iter()
                    .filter_map(|code| catalog.get(ty, code))
                    .flat_map(|p| p.paths.iter().cloned())
                    .collect();
                (ty.clone(), paths)
            })
            .collect();
        Self { paths }
    }

    /// Whether resources of this type can be in a patient's compartment.
    pub fn has_type(&self, resource_type: &str) -> bool {
        resource_type == "Patient" || self.paths.contains_key(resource_type)
    }

    /// Resource types that can be in a patient's compartment, Patient included.
    pub fn types(&self) -> impl Iterator<Item = &str> {
        std::iter::once("Patient").chain(
            self.paths
                .keys()
                .map(String::as_str)
                .filter(|t| *t != "Patient"),
        )
    }

    /// Ids of the patients whose compartment `resource` (of `resource_type`) is in: a Patient
    /// is in its own, any resource in those its compartment references point to.
    pub fn patients(&self, resource_type: &str, resource: &Value) -> HashSet<String> {
        let mut out = HashSet::new();
        if resource_type == "Patient"
            && let Some(id) = resource["id"].as_str()
        {
            out.insert(id.to_string());
        }
        for path in self.paths.get(resource_type).into_iter().flatten() {
            let Some(column) = &path.column else { continue };
            let mut values = Vec::new();
            collect(&resource[column.as_str()], &path.steps, &mut values);
            for reference in values {
                if let Some(id) = reference["reference"].as_str().and_then(|r| patient_id(r)) {
                    out.insert(id.to_string());
                }
            }
        }
        out
    }
}

impl PatientCompartment {
    /// Whether `resource` belongs to the compartment of one of `patients`.
    pub fn contains(
        &self,
        resource_type: &str,
        resource: &Value,
        patients: &BTreeSet<String>,
    ) -> bool {
        self.patients(resource_type, resource)
            .iter()
            .any(|p| patients.contains(p))
    }

    /// The filter keeping only resources of `resource_type` in the compartments of
    /// `patients`: their own Patient resources by id, other types by the compartment's
    /// references. A type no patient compartment holds gets a filter that matches nothing.
    pub fn filter(&self, resource_type: &str, patients: &BTreeSet<String>) -> Filter {
        if resource_type == "Patient" {
            return Filter::Ids(patients.iter().cloned().collect());
        }
        match self.paths.get(resource_type) {
            Some(paths) if !paths.is_empty() => Filter::Criterion(Criterion::Paths {
                paths: paths.clone(),
                test: Test::Reference(
                    patients
                        .iter()
                        .map(|p| (Some("Patient".to_string()), p.clone()))
                        .collect(),
                ),
                negate: false,
            }),
            _ => Filter::Ids(Vec::new()),
        }
    }

    /// `filters` with every table they read confined to the compartments of `patients`: the
    /// searched type and, recursively, the targets of chains and the sources of `_has`, so no
    /// part of a search can select or reveal another patient's resources.
    pub fn confine(
        &self,
        resource_type: &str,
        filters: &[Filter],
        patients: &BTreeSet<String>,
    ) -> Vec<Filter> {
        let mut out: Vec<Filter> = filters
            .iter()
            .map(|f| match f {
                Filter::Chain {
                    param,
                    target,
                    inner,
                } => Filter::Chain {
                    param: param.clone(),
                    target,
                    inner: self.confine(target, inner, patients),
                },
                Filter::Has {
                    source,
                    param,
                    inner,
                } => Filter::Has {
                    source,
                    param: param.clone(),
                    inner: self.confine(source, inner, patients),
                },
                other => other.clone(),
            })
            .collect();
        out.push(self.filter(resource_type, patients));
        out
    }
}

/// The id of a literal Patient reference (`Patient/123`, or absolute `.../Patient/123`,
/// without a version suffix).
pub fn patient_id(reference: &str) -> Option<&str> {
    let reference = reference.split("/_history/").next()?;
    let (before, id) = reference.rsplit_once('/')?;
    (before == "Patient" || before.ends_with("/Patient")).then_some(id)
}

/// The values reached from `value` along `steps`, arrays flattened.
fn collect<'a>(value: &'a Value, steps: &[Step], out: &mut Vec<&'a Value>) {
    if let Value::Array(items) = value {
        for item in items {
            collect(item, steps, out);
        }
        return;
    }
    if value.is_null() {
        return;
    }
    let Some((step, rest)) = steps.split_first() else {
        out.push(value);
        return;
    };
    match step {
        Step::Field(name) => collect(&value[name.as_str()], rest, out),
        Step::Resolves(target) => {
            let matches = value["reference"].as_str().is_some_and(|r| {
                let r = r.split("/_history/").next().unwrap_or(r);
                r.rsplit_once('/').is_some_and(|(before, _)| {
                    before == target || before.ends_with(&format!("/{target}"))
                })
            });
            if matches {
                collect(value, rest, out);
            }
        }
        Step::Where {
            element,
            value: want,
        } => {
            if value[element.as_str()].as_str() == Some(want.as_str()) {
                collect(value, rest, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_the_patients_a_resource_belongs_to() {
        let c = PatientCompartment::global();
        let obs = json!({"resourceType": "Observation", "id": "o1",
            "subject": {"reference": "Patient/p1"},
            "performer": [{"reference": "Practitioner/x"}, {"reference": "Patient/p2/_history/3"}]});
        let mut got: Vec<_> = c.patients("Observation", &obs).into_iter().collect();
        got.sort();
        assert_eq!(got, ["p1", "p2"]);
        let patient = json!({"resourceType": "Patient", "id": "p9"});
        assert_eq!(
            c.patients("Patient", &patient),
            HashSet::from(["p9".to_string()])
        );
        let group_subject =
            json!({"resourceType": "Observation", "subject": {"reference": "Group/g"}});
        assert!(c.patients("Observation", &group_subject).is_empty());
        assert!(c.has_type("Encounter") && !c.has_type("Organization"));
    }

    #[test]
    fn patient_ids_come_from_literal_references_only() {
        assert_eq!(patient_id("Patient/1"), Some("1"));
        assert_eq!(patient_id("http://x/fhir/Patient/1"), Some("1"));
        assert_eq!(patient_id("Patient/1/_history/2"), Some("1"));
        assert_eq!(patient_id("Practitioner/1"), None);
        assert_eq!(patient_id("urn:uuid:abc"), None);
    }
}
