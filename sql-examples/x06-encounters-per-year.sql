-- Encounters per year, split by encounter class (ambulatory, emergency, inpatient, other).
-- period.start is FHIR dateTime text; date() reads its date part and year() the year.
-- compare: ordered
SELECT
    year(date(period.start)) AS year,
    count(*) AS encounters,
    count(CASE WHEN class.code = 'AMB' THEN 1 END) AS ambulatory,
    count(CASE WHEN class.code = 'EMER' THEN 1 END) AS emergency,
    count(CASE WHEN class.code = 'IMP' THEN 1 END) AS inpatient,
    count(CASE WHEN class.code NOT IN ('AMB', 'EMER', 'IMP') THEN 1 END) AS other,
    count(DISTINCT subject.reference) AS patients
FROM encounter
GROUP BY year(date(period.start))
ORDER BY year;
