-- Prescriptions per patient: the 20 patients with the most MedicationRequests, with how
-- many different medications (RxNorm codes) and how many are still active.
-- compare: ordered
SELECT
    p.id AS patient_id,
    CONCAT(p.name[1].family, ' ', p.name[1].given[1]) AS name,
    count(*) AS prescriptions,
    count(DISTINCT m.medicationcodeableconcept.coding[1].code) AS distinct_medications,
    count(CASE WHEN m.status = 'active' THEN 1 END) AS active
FROM patient p
JOIN medicationrequest m ON m.subject.reference = CONCAT('Patient/', p.id)
GROUP BY p.id, p.name[1].family, p.name[1].given[1]
ORDER BY prescriptions DESC, patient_id
LIMIT 20;
