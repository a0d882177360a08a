-- Q6: Location city = ATTLEBORO (Resource type: Location).
-- Source: AWS HealthLake Developer Guide, lines 5294-5297 of
-- shared/reference/healthlake-developer-guide.txt (checklist section 6.3).
-- Verbatim.
SELECT *
FROM Location
WHERE address.city='ATTLEBORO'
 LIMIT 10;
