-- Time range on the system column _last_updated: how many resources of each type were
-- created or changed during the last 24 hours, and when the newest change happened.
-- _last_updated is a timestamp (UTC) that fhirlake sets on every write; meta.lastupdated
-- holds the same instant as FHIR text. On the freshly imported sample every resource is
-- recent; run it a day later and the counts drop to 0. (The test replaces timestamps that
-- fall within its own import with <import-time>; see README.md.)
-- compare: ordered
SELECT 'Condition' AS resource_type,
       count(*) AS updated_last_24h,
       max(_last_updated) AS newest_change
FROM condition
WHERE _last_updated >= current_timestamp - INTERVAL '1' DAY
UNION ALL
SELECT 'Encounter', count(*), max(_last_updated)
FROM encounter
WHERE _last_updated >= current_timestamp - INTERVAL '1' DAY
UNION ALL
SELECT 'Observation', count(*), max(_last_updated)
FROM observation
WHERE _last_updated >= current_timestamp - INTERVAL '1' DAY
UNION ALL
SELECT 'Patient', count(*), max(_last_updated)
FROM patient
WHERE _last_updated >= current_timestamp - INTERVAL '1' DAY
ORDER BY resource_type;
