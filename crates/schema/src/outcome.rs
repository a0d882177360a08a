//! FHIR OperationOutcome: how every component reports a problem with a resource.
//!
//! Import failure reports, REST errors and validation results all use this one type, so a
//! message reads the same wherever it surfaces.

use serde::{Deserialize, Serialize};

/// Issue severity (FHIR `IssueSeverity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

/// One issue of an OperationOutcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    pub severity: Severity,
    /// FHIR `IssueType` code: `processing`, `structure`, `invalid`, `required`, `not-found`, ...
    pub code: String,
    pub diagnostics: String,
    /// Where in the resource, as a JSON-ish path (`/Patient/name`), HealthLake's style.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub location: Vec<String>,
    /// Where in the resource, as a FHIRPath expression (`Patient.name[0]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expression: Vec<String>,
}

impl Issue {
    /// An `error` issue with FHIR IssueType `code`.
    pub fn error(code: impl Into<String>, diagnostics: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code: code.into(),
            diagnostics: diagnostics.into(),
            location: Vec::new(),
            expression: Vec::new(),
        }
    }

    /// An `error` issue with code `processing`, HealthLake's code for import failures.
    pub fn processing(diagnostics: impl Into<String>) -> Self {
        Self::error("processing", diagnostics)
    }

    /// Adds a location and the matching FHIRPath expression.
    pub fn at(mut self, location: impl Into<String>, expression: impl Into<String>) -> Self {
        self.location.push(location.into());
        self.expression.push(expression.into());
        self
    }
}

/// A FHIR OperationOutcome resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "resourceType", rename = "OperationOutcome")]
pub struct OperationOutcome {
    pub issue: Vec<Issue>,
}

impl OperationOutcome {
    pub fn new(issue: Vec<Issue>) -> Self {
        Self { issue }
    }

    /// An outcome with one `processing` error.
    pub fn error(diagnostics: impl Into<String>) -> Self {
        Self::new(vec![Issue::processing(diagnostics)])
    }

    /// All diagnostics joined, for one-line logs and CLI output.
    pub fn summary(&self) -> String {
        self.issue
            .iter()
            .map(|i| i.diagnostics.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_as_fhir() {
        let oo =
            OperationOutcome::new(vec![Issue::processing("bad").at("/Patient/x", "Patient.x")]);
        assert_eq!(
            serde_json::to_string(&oo).unwrap(),
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":"bad","location":["/Patient/x"],"expression":["Patient.x"]}]}"#
        );
    }
}
