-- Q5: Born before 2019-01-01 and male (Element: birthDate, Example 2).
-- Source: AWS HealthLake Developer Guide, lines 5284-5287 of
-- shared/reference/healthlake-developer-guide.txt (checklist section 6.3).
-- Verbatim.
SELECT birthdate
FROM patient
-- we convert birthdate (varchar) to date  > cast that as date too
WHERE CAST(birthdate AS DATE) < CAST('2019-01-01' AS DATE) AND gender = 'male'
