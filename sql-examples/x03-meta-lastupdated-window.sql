-- Time range on meta.lastupdated (FHIR instant text): patients changed during the last
-- 7 days, with their version. from_iso8601_timestamp turns the FHIR text into a timestamp
-- so it can be compared with current_timestamp; a window in the past, such as
-- BETWEEN TIMESTAMP '2020-01-01 00:00:00' AND TIMESTAMP '2021-01-01 00:00:00', finds none
-- on a fresh import. (The test replaces timestamps that fall within its own import with
-- <import-time>; see README.md.)
-- compare: ordered
SELECT
    id,
    meta.versionid AS version,
    meta.lastupdated AS last_updated_text,
    _last_updated
FROM patient
WHERE from_iso8601_timestamp(meta.lastupdated)
      BETWEEN current_timestamp - INTERVAL '7' DAY AND current_timestamp
ORDER BY id
LIMIT 10;
