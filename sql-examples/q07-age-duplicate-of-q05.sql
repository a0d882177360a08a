-- Q7: Duplicate of Q5 under heading 'Element: Age'.
-- Source: AWS HealthLake Developer Guide, lines 5301-5304 of
-- shared/reference/healthlake-developer-guide.txt (checklist section 6.3).
-- Verbatim.
-- The guide repeats Q5 word for word under the heading 'Element: Age'; kept for numbering.
SELECT birthdate
FROM patient
-- we convert birthdate (varchar) to date  > cast that as date too
WHERE CAST(birthdate AS DATE) < CAST('2019-01-01' AS DATE) AND gender = 'male'
