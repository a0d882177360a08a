-- Resource counts per type: one count(*) per table, glued with UNION ALL. Every FHIR R4
-- resource type is a table (a type with no data counts 0); these are the types of the
-- shipped Synthea sample.
-- compare: ordered
SELECT 'AllergyIntolerance' AS resource_type, count(*) AS resources FROM allergyintolerance
UNION ALL
SELECT 'CarePlan', count(*) FROM careplan
UNION ALL
SELECT 'Claim', count(*) FROM claim
UNION ALL
SELECT 'Condition', count(*) FROM condition
UNION ALL
SELECT 'Device', count(*) FROM device
UNION ALL
SELECT 'DiagnosticReport', count(*) FROM diagnosticreport
UNION ALL
SELECT 'DocumentReference', count(*) FROM documentreference
UNION ALL
SELECT 'Encounter', count(*) FROM encounter
UNION ALL
SELECT 'ExplanationOfBenefit', count(*) FROM explanationofbenefit
UNION ALL
SELECT 'Goal', count(*) FROM goal
UNION ALL
SELECT 'ImagingStudy', count(*) FROM imagingstudy
UNION ALL
SELECT 'Immunization', count(*) FROM immunization
UNION ALL
SELECT 'Location', count(*) FROM location
UNION ALL
SELECT 'MedicationRequest', count(*) FROM medicationrequest
UNION ALL
SELECT 'Observation', count(*) FROM observation
UNION ALL
SELECT 'Organization', count(*) FROM organization
UNION ALL
SELECT 'Patient', count(*) FROM patient
UNION ALL
SELECT 'Practitioner', count(*) FROM practitioner
UNION ALL
SELECT 'PractitionerRole', count(*) FROM practitionerrole
UNION ALL
SELECT 'Procedure', count(*) FROM procedure
ORDER BY resource_type;
