//! Embeds every committed `schemas/*.json` into the binary, so the product runs without the
//! FHIR definitions or the source tree.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut entries: Vec<(String, String)> = Vec::new();
    if let Ok(read_dir) = std::fs::read_dir(&dir) {
        for entry in read_dir.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                let name = path.file_stem().unwrap().to_string_lossy().into_owned();
                println!("cargo:rerun-if-changed={}", path.display());
                entries.push((name, path.display().to_string()));
            }
        }
    }
    entries.sort();
    let mut out = String::from("static EMBEDDED_SCHEMAS: &[(&str, &str)] = &[\n");
    for (name, path) in &entries {
        writeln!(out, "    ({name:?}, include_str!({path:?})),").unwrap();
    }
    out.push_str("];\n");
    let out_path = Path::new(&std::env::var("OUT_DIR").unwrap()).join("embedded_schemas.rs");
    std::fs::write(out_path, out).unwrap();
}
