-- Cohort join: patients with diabetes (SNOMED 44054006) or prediabetes (SNOMED 15777000)
-- and their most recent HbA1c result (LOINC 4548-4), if any.
-- The cohort is one row per patient (first onset of the condition); row_number() over each
-- patient's HbA1c observations, newest first, picks the latest one; the LEFT JOIN keeps
-- cohort members who never had the test.
-- compare: ordered
WITH cohort AS (
    SELECT
        c.subject.reference AS patient_ref,
        min(c.code.coding[1].display) AS diagnosis,
        min(date(c.onsetdatetime)) AS first_onset
    FROM condition c
    WHERE c.code.coding[1].system = 'http://snomed.info/sct'
      AND c.code.coding[1].code IN ('44054006', '15777000')
    GROUP BY c.subject.reference
),
hba1c AS (
    SELECT
        o.subject.reference AS patient_ref,
        o.effectivedatetime,
        o.valuequantity.value AS value,
        o.valuequantity.unit AS unit,
        row_number() OVER (
            PARTITION BY o.subject.reference
            ORDER BY o.effectivedatetime DESC, o.id
        ) AS rn
    FROM observation o
    WHERE o.code.coding[1].system = 'http://loinc.org'
      AND o.code.coding[1].code = '4548-4'
)
SELECT
    p.id AS patient_id,
    CONCAT(p.name[1].family, ' ', p.name[1].given[1]) AS name,
    cohort.diagnosis,
    cohort.first_onset,
    hba1c.effectivedatetime AS latest_hba1c_at,
    hba1c.value AS latest_hba1c,
    hba1c.unit AS unit
FROM patient p
JOIN cohort ON cohort.patient_ref = CONCAT('Patient/', p.id)
LEFT JOIN hba1c ON hba1c.patient_ref = cohort.patient_ref AND hba1c.rn = 1
ORDER BY cohort.diagnosis, p.id;
