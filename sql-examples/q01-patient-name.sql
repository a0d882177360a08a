-- Q1: Patient name array (Element: Name).
-- Source: AWS HealthLake Developer Guide, lines 5148-5151 of
-- shared/reference/healthlake-developer-guide.txt (checklist section 6.3).
-- Verbatim.
SELECT
    name[1].given as FirstName,
    name[1].family as LastName
FROM Patient
