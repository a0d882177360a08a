//! `fhirlake-gen`: regenerates `schemas/` from the FHIR R4 definitions.
//!
//! `cargo run -p fhirlake-gen -- --definitions ../shared/fhir-r4 --out schemas`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

/// Regenerate the per-type schemas, the search parameter catalogue and the Patient
/// compartment from the FHIR R4 definitions.
#[derive(Parser)]
#[command(version)]
struct GenSchemasArgs {
    /// Directory holding profiles-resources.json and profiles-types.json.
    #[arg(long, default_value = "../shared/fhir-r4")]
    definitions: PathBuf,
    /// Output directory.
    #[arg(long, default_value = "schemas")]
    out: PathBuf,
}

impl GenSchemasArgs {
    fn run(self) -> anyhow::Result<ExitCode> {
        let Self { definitions, out } = self;
        let schemas = fhirlake_gen::schema::generate(&definitions)
            .with_context(|| format!("generating from {}", definitions.display()))?;
        fhirlake_gen::schema::write_schemas(&schemas, &out)?;
        println!("wrote {} schemas to {}", schemas.len(), out.display());
        let catalog = fhirlake_gen::search::generate(&definitions, &schemas)?;
        fhirlake_gen::search::write_catalog(&catalog, &out)?;
        let s = &catalog.summary;
        println!(
            "search parameters: {} of {} definitions compile for every base type ({:.1}%); \
             {} (type, code) pairs compiled, {} unsupported (listed in {})",
            s.compiled_definitions,
            s.definitions,
            100.0 * s.compiled_definitions as f64 / s.definitions.max(1) as f64,
            s.compiled_parameters,
            s.unsupported_parameters,
            out.join(fhirlake_gen::search::CATALOG_FILE).display()
        );
        let compartment = fhirlake_gen::compartment::generate(&definitions)?;
        fhirlake_gen::compartment::write(&compartment, &out)?;
        println!(
            "Patient compartment: {} resource types ({})",
            compartment.len(),
            out.join(fhirlake_gen::compartment::COMPARTMENT_FILE)
                .display()
        );
        Ok(ExitCode::SUCCESS)
    }
}

fn main() -> ExitCode {
    match GenSchemasArgs::parse().run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
