-- Patient extensions by URL: mother's maiden name, birth place and race.
-- The guide's Q3/Q12 read extension[1]/extension[2] by position, which only works when the
-- source puts those extensions first (Synthea puts us-core-race first). This looks each one
-- up by its URL instead: unnest() turns the array<string> column into one row per extension,
-- json_extract_scalar reads members of the JSON text (JSON paths are 0-based), and a
-- max(CASE ...) per URL folds the rows back into one row per patient.
-- compare: ordered
SELECT
    id,
    max(CASE WHEN json_extract_scalar(ext, '$.url')
                  = 'http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName'
             THEN json_extract_scalar(ext, '$.valueString') END) AS mothers_maiden_name,
    max(CASE WHEN json_extract_scalar(ext, '$.url')
                  = 'http://hl7.org/fhir/StructureDefinition/patient-birthPlace'
             THEN json_extract_scalar(ext, '$.valueAddress.city') END) AS birth_place_city,
    max(CASE WHEN json_extract_scalar(ext, '$.url')
                  = 'http://hl7.org/fhir/StructureDefinition/patient-birthPlace'
             THEN json_extract_scalar(ext, '$.valueAddress.state') END) AS birth_place_state,
    max(CASE WHEN json_extract_scalar(ext, '$.url')
                  = 'http://hl7.org/fhir/us/core/StructureDefinition/us-core-race'
             THEN json_extract_scalar(ext, '$.extension[1].valueString') END) AS race
FROM (SELECT id, unnest(extension) AS ext FROM patient) AS patient_extensions
GROUP BY id
ORDER BY id;
