//! Embeds every committed `schemas/*.json` into the binary, so the product runs without the
//! FHIR definitions or the source tree.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    // Read at run time: a build script binary compiled for another checkout must not embed
    // that checkout's files.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    // The committed schemas live at the top of the workspace, next to the other generated files.
    let dir = Path::new(&manifest_dir).join("../../schemas");
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
    assert!(
        !entries.is_empty(),
        "no schemas/*.json under {}: run `cargo run -p fhirlake-gen`",
        dir.display()
    );
    entries.sort();
    let mut out = String::from("static EMBEDDED_SCHEMAS: &[(&str, &str)] = &[\n");
    for (name, path) in &entries {
        writeln!(out, "    ({name:?}, include_str!({path:?})),").unwrap();
    }
    out.push_str("];\n");
    let out_path = Path::new(&std::env::var("OUT_DIR").unwrap()).join("embedded_schemas.rs");
    std::fs::write(out_path, out).unwrap();
}
