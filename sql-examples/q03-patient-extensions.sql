-- Q3: Patient extension array<string> + json_extract (Element: Extension).
-- Source: AWS HealthLake Developer Guide, lines 5249-5254 of
-- shared/reference/healthlake-developer-guide.txt (checklist section 6.3).
-- Verbatim.
SELECT
    extension[1],
    json_extract(extension[1], '$.valueString') AS MothersMaidenName,
    extension[2],
    json_extract(extension[2], '$.valueAddress.city') AS birthPlace
FROM patient
