-- Q4: Age calculation (Element: birthDate, Example 1).
-- Source: AWS HealthLake Developer Guide, lines 5272-5274 of
-- shared/reference/healthlake-developer-guide.txt (checklist section 6.3).
-- Verbatim.
-- Uses current_date: the test runs it with a fixed date (see README.md).
SELECT
 (year(current_date) - year(date(birthdate))) as age
FROM patient
