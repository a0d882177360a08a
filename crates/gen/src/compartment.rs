//! The Patient CompartmentDefinition, reduced to resource type -> compartment parameter codes
//! and written to `schemas/compartments/patient.json` for `fhirlake_search::compartment`.

use std::collections::BTreeMap;
use std::path::Path as FsPath;

use serde_json::Value;

pub use fhirlake_search::compartment::COMPARTMENT_FILE;

/// Errors reading the CompartmentDefinition.
#[derive(Debug, thiserror::Error)]
pub enum CompartmentError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a CompartmentDefinition: {message}")]
    Invalid { path: String, message: String },
}

/// Resource type -> compartment parameter codes, from the official CompartmentDefinition in
/// `definitions` (`compartmentdefinition-patient.json`).
pub fn generate(definitions: &FsPath) -> Result<BTreeMap<String, Vec<String>>, CompartmentError> {
    let path = definitions.join("compartmentdefinition-patient.json");
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|source| CompartmentError::Io {
        path: shown.clone(),
        source,
    })?;
    let def: Value = serde_json::from_str(&text).map_err(|e| CompartmentError::Invalid {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    if def["resourceType"] != "CompartmentDefinition" || def["code"] != "Patient" {
        return Err(CompartmentError::Invalid {
            path: shown,
            message: "expected the Patient CompartmentDefinition".into(),
        });
    }
    let mut out = BTreeMap::new();
    for entry in def["resource"].as_array().into_iter().flatten() {
        let (Some(code), Some(params)) = (entry["code"].as_str(), entry["param"].as_array()) else {
            continue;
        };
        let params: Vec<String> = params
            .iter()
            .filter_map(|p| p.as_str().map(str::to_string))
            .collect();
        if !params.is_empty() {
            out.insert(code.to_string(), params);
        }
    }
    Ok(out)
}

/// Writes the generated definition under `schemas_dir`.
pub fn write(
    compartment: &BTreeMap<String, Vec<String>>,
    schemas_dir: &FsPath,
) -> std::io::Result<()> {
    let path = schemas_dir.join(COMPARTMENT_FILE);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut text = serde_json::to_string_pretty(compartment).map_err(std::io::Error::other)?;
    text.push('\n');
    std::fs::write(path, text)
}
