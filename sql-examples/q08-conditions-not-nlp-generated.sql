-- Q8: Condition without SYSTEM_GENERATED tag (Resource type: Condition).
-- Source: AWS HealthLake Developer Guide, lines 5319-5321 of
-- shared/reference/healthlake-developer-guide.txt (checklist section 6.3).
-- Verbatim.
SELECT *
FROM condition
WHERE meta.tag[1] is NULL
