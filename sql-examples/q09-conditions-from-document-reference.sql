-- Q9: Condition generated from a specific DocumentReference.
-- Source: AWS HealthLake Developer Guide, lines 5332-5340 of
-- shared/reference/healthlake-developer-guide.txt (checklist section 6.3).
-- Verbatim.
-- Returns no rows on the Synthea sample: it has no NLP-generated (SYSTEM_GENERATED) resources.
SELECT
    meta.tag[1].display as SystemGenerated,
    json_extract(modifierextension[4], '$.valueReference.reference') as
 DocumentReference
 FROM condition
WHERE meta.tag[1].display = 'SYSTEM_GENERATED'

AND CAST(json_extract(modifierextension[4], '$.valueReference.reference') as
 VARCHAR) LIKE '%DocumentReference/67aa0278-8111-40d0-8adc-43055eb9d18d%'
