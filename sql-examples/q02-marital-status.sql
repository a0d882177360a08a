-- Q2: Patient maritalStatus struct (Element: MaritalStatus).
-- Source: AWS HealthLake Developer Guide, lines 5185-5187 of
-- shared/reference/healthlake-developer-guide.txt (checklist section 6.3).
-- Verbatim.
SELECT
    maritalstatus.text as MaritalStatus
FROM Patient
