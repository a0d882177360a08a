-- The 10 most frequent conditions (by SNOMED code), with how many patients have each.
-- One code can carry different display texts across Synthea versions, so the display shown
-- is the alphabetically first one; ties on the count are broken by code.
-- compare: ordered
SELECT
    code.coding[1].code AS snomed_code,
    min(code.coding[1].display) AS condition,
    count(*) AS conditions,
    count(DISTINCT subject.reference) AS patients
FROM condition
GROUP BY code.coding[1].code
ORDER BY conditions DESC, snomed_code
LIMIT 10;
