-- Numeric observation values by LOINC code and unit: the 25 most frequent measurements with
-- their count, minimum, mean and maximum. valuequantity is a struct (value, unit, system,
-- code); only observations with a numeric value are counted. Means are rounded to 2
-- decimals so the result does not depend on the order rows are summed in.
-- compare: ordered
SELECT
    code.coding[1].code AS loinc_code,
    min(code.coding[1].display) AS observation,
    valuequantity.unit AS unit,
    count(*) AS observations,
    min(valuequantity.value) AS min_value,
    round(avg(valuequantity.value), 2) AS mean_value,
    max(valuequantity.value) AS max_value
FROM observation
WHERE code.coding[1].system = 'http://loinc.org'
  AND valuequantity.value IS NOT NULL
GROUP BY code.coding[1].code, valuequantity.unit
ORDER BY observations DESC, loinc_code, unit
LIMIT 25;
