//! HealthLake's fine-grained authorization (`FineGrainedAuthorizationEnabled`): a user's
//! `user/` scopes reach only the patients their `fhirUser` is related to.
//!
//! The guide's rules: a Practitioner reaches the patients whose `Patient.generalPractitioner`
//! references them; a Patient reaches themselves and the patients whose `Patient.link.other`
//! references them; a RelatedPerson reaches the patients whose `Patient.link.other`
//! references them. The patients are found with the data store's own search (parameters
//! `general-practitioner` and `link`) after the lake has caught up with acknowledged writes,
//! and remembered per user for [`REMEMBER`], so a changed relation takes effect within that
//! time.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fhirlake_lake::background::SyncHandle;
use fhirlake_search::{Searcher, query};

/// How long a user's patients are reused before they are looked up again.
const REMEMBER: Duration = Duration::from_secs(30);
/// Most patients one user reaches (a search beyond it is cut; the docs say so).
const MAX_PATIENTS: usize = 10_000;
/// Most users remembered (forgotten all at once beyond it).
const REMEMBERED_MAX: usize = 4096;

/// Patient ids a user reaches.
pub type Patients = Arc<BTreeSet<String>>;

/// The patients each fine-grained user reaches, per data store.
#[derive(Default)]
pub struct CareTeams {
    remembered: Mutex<HashMap<String, (Instant, Patients)>>,
}

impl CareTeams {
    /// The patients `fhir_user` (`Practitioner/1`, or an absolute URL ending so) reaches.
    pub async fn patients_of(
        &self,
        (searcher, sync): (&Searcher, &SyncHandle),
        fhir_user: &str,
    ) -> Result<Patients, String> {
        if let Some(found) = self.recall(fhir_user) {
            return Ok(found);
        }
        let found = Arc::new(look_up(searcher, sync, fhir_user).await?);
        let mut remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        if remembered.len() >= REMEMBERED_MAX {
            remembered.clear();
        }
        remembered.insert(fhir_user.to_string(), (Instant::now(), found.clone()));
        Ok(found)
    }

    fn recall(&self, fhir_user: &str) -> Option<Patients> {
        let remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        let (at, found) = remembered.get(fhir_user)?;
        (at.elapsed() < REMEMBER).then(|| found.clone())
    }
}

/// `(type, id)` of a `fhirUser` reference, relative or absolute.
pub fn reference_parts(fhir_user: &str) -> Option<(&str, &str)> {
    let reference = fhir_user.split("/_history/").next()?;
    let (before, id) = reference.rsplit_once('/')?;
    let ty = before.rsplit('/').next()?;
    (!id.is_empty() && !ty.is_empty()).then_some((ty, id))
}

async fn look_up(
    searcher: &Searcher,
    sync: &SyncHandle,
    fhir_user: &str,
) -> Result<BTreeSet<String>, String> {
    let Some((ty, id)) = reference_parts(fhir_user) else {
        return Ok(BTreeSet::new());
    };
    let reference = format!("{ty}/{id}");
    let mut out = BTreeSet::new();
    let param = match ty {
        "Practitioner" => "general-practitioner",
        "Patient" => {
            out.insert(id.to_string());
            "link"
        }
        "RelatedPerson" => "link",
        _ => return Ok(out),
    };
    sync.catch_up().await.map_err(|e| e.to_string())?;
    let params = [(param.to_string(), reference)];
    let req = query::parse("Patient", &params, false).map_err(|e| e.message)?;
    let matches = searcher
        .matching_ids("Patient", &req.filters, MAX_PATIENTS)
        .await
        .map_err(|e| e.to_string())?;
    out.extend(matches.into_iter().map(|(id, _)| id));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_relative_and_absolute_fhir_users() {
        assert_eq!(
            reference_parts("Practitioner/p1"),
            Some(("Practitioner", "p1"))
        );
        assert_eq!(
            reference_parts("https://ehr.example.com/fhir/Patient/9"),
            Some(("Patient", "9"))
        );
        assert_eq!(reference_parts("nobody"), None);
    }
}
