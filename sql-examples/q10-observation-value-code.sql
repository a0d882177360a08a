-- Q10: Observation valueCodeableConcept code 266919005.
-- Source: AWS HealthLake Developer Guide, lines 5350-5353 of
-- shared/reference/healthlake-developer-guide.txt (checklist section 6.3).
-- Verbatim.
SELECT valueCodeableConcept.coding[1].code
FROM Observation
WHERE  valueCodeableConcept.coding[1].code = '266919005'
-- WHERE meta.tag[1] is NULL
