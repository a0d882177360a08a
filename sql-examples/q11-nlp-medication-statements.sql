-- Q11: NLP-generated MedicationStatement for one patient.
-- Source: AWS HealthLake Developer Guide, lines 5368-5371 of
-- shared/reference/healthlake-developer-guide.txt (checklist section 6.3).
-- Verbatim.
-- Returns no rows on the Synthea sample: it has no MedicationStatement resources.
SELECT *
FROM medicationstatement
WHERE meta.tag[1].display = 'SYSTEM_GENERATED' AND subject.reference =
 'Patient/0679b7b7-937d-488a-b48d-6315b8e7003b';
