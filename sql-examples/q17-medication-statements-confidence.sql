-- Q17: MedicationStatement medications + NLP confidence.
-- Source: AWS HealthLake Developer Guide, lines 5561-5566 of
-- shared/reference/healthlake-developer-guide.txt (checklist section 6.3).
-- Verbatim.
-- Returns no rows on the Synthea sample: it has no MedicationStatement resources.
SELECT
 medicationcodeableconcept.coding[1].code as medicationCode
 , medicationcodeableconcept.coding[1].display as medicationDescription
 , meta.tag[1].display
 , json_extract(modifierextension[1], '$.valueDecimal') AS confidenceScore
FROM medicationstatement;
