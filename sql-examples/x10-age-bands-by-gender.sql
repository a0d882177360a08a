-- Living patients by age band and gender, with the age computed as in the guide's Q4
-- (year(current_date) - year of birth). Uses current_date: the test runs it with a fixed
-- date (see README.md).
-- compare: ordered
SELECT
    CASE
        WHEN year(current_date) - year(date(birthdate)) < 18 THEN '0-17'
        WHEN year(current_date) - year(date(birthdate)) < 40 THEN '18-39'
        WHEN year(current_date) - year(date(birthdate)) < 65 THEN '40-64'
        ELSE '65+'
    END AS age_band,
    count(CASE WHEN gender = 'female' THEN 1 END) AS female,
    count(CASE WHEN gender = 'male' THEN 1 END) AS male,
    count(*) AS patients
FROM patient
WHERE deceaseddatetime IS NULL AND deceasedboolean IS NOT TRUE
GROUP BY 1
ORDER BY age_band;
