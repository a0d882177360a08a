-- Q16: Patients + related prescriptions (MedicationRequest).
-- Source: AWS HealthLake Developer Guide, lines 5531-5549 of
-- shared/reference/healthlake-developer-guide.txt (checklist section 6.3).
-- Verbatim.
-- The aliases categoryCode/categoryDescription appear twice; fhirlake keeps the first and
-- names the second categorycode_2/categorydescription_2 (Athena shows both as written).
SELECT
 patient.id  as patientId
 , medicationrequest.id  as medicationrequestid
 , CONCAT(name[1].family, ' ', name[1].given[1]) as name
 , status
 , statusreason.coding[1].code as categoryCode
 , statusreason.coding[1].display as categoryDescription
 , category[1].coding[1].code as categoryCode
 , category[1].coding[1].display as categoryDescription
 , priority
 , donotperform
 , encounter.reference as encounterId
 , encounter.type as encountertype
 , medicationcodeableconcept.coding[1].code as medicationCode
 , medicationcodeableconcept.coding[1].display as medicationDescription
 , dosageinstruction[1].text as dosage
FROM database.patient, medicationrequest
WHERE CONCAT('Patient/', patient.id ) = medicationrequest.subject.reference
ORDER BY name
