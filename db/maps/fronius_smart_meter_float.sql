-- Fronius Smart Meter (TS 65A-3, TS 5kA-3, 63A-3/-1, 50kA-3) read through the
-- Fronius Datamanager / GEN24 in the Datamanager's default "float" SunSpec
-- setting: SunSpec meter model 213 (211/212 single/split phase), float32.
--
-- This is the Fronius-specific variant of sunspec_meter.sql: the same meter,
-- the same unit id and the same place in the map (model at 40069), but the
-- Datamanager's factory setting "SunSpec Model Type: float" serves models
-- 211..213 (float32 values, no scale factors) instead of 201..203 (int + SF).
-- Use this map unless the installer switched the setting to "int + SF"; the
-- signature (model id and length at 40069/40070) tells the two apart.
--
-- Source: SunSpec Alliance, "SunSpec Information Model Specification" and the
--         model definition json/model_213.json in github.com/sunspec/models
--         (ID, L = 124, A, AphA..C, PhV, PhVphA..C, PPV, PPVphAB..CA, Hz, W,
--         WphA..C, VA.., VAR.., PF.., TotWhExp(+A..C), TotWhImp(+A..C), ...;
--         every value float32, offsets 2, 4, ... from the model id).
-- Device placement: Fronius, "Fronius Datamanager Modbus TCP & RTU" operating
--         instructions 42,0410,2049 (fronius.com): the meter at the feed-in point
--         is Modbus device 240 (further meters 241..245), common model with
--         register numbers 40001 SID, 40003 ID, 40004 L = 65, meter model at
--         register number 40070 = protocol address 40069 (see sunspec_meter.sql).
-- Cross-checked: evcc-io/evcc templates/definition/meter/fronius-gen24.yaml
--         ("sunspec model 20x (int+sf) / 21x (float) meter": 203:W or 213:W,
--         213:TotWhImp, 213:TotWhExp, 213:AphA..); the point offsets are
--         model_213.json's, the model's start is Fronius's.
-- Function code: 3 (read holding registers).
-- Data types: float32, big-endian (ABCD) as SunSpec prescribes; model id and
--         length uint16. A value the meter does not have is NaN (0x7FC00000);
--         NaN is never written, so not_available stays NULL.
-- Addresses: register_address is the 0-based protocol address (Fronius register
--         number 40070 -> 40069). Offsets from the model id follow model_213.json.
-- Unit id: 240 for the primary (feed-in) meter through a Datamanager or GEN24,
--         241..245 for further meters; GEN24 inverters are reported to serve the
--         primary meter at 200 as well. Port 502. Enable "Data export via Modbus:
--         tcp" on the Datamanager.
-- Request limits: the model is 126 registers; this map reads 40069..40144 (76)
--         in one request (the power factors 40121..40128 are read and discarded).
-- Omitted: power factors (model 213 gives PF in "PF" units with no statement of
--         percent or ratio, and Fronius inverters are reported to send percent;
--         rather none than a wrong scale), apparent/reactive energies, events.
-- Sign convention: per SunSpec, W > 0 is power imported by the site. Check
--         against the meter's display once after installing.
-- Counters: energy_import / energy_export and their phase values are kind 'counter';
--         counter_max_rate NULL: the Fronius Smart Meter family includes CT meters
--         (TS 5kA-3, 50kA-3) whose transformers can be of any size, so no rise per
--         second follows from the map.
-- Signature: "SunS" at 40000, model id 211..214 at 40069 and length 124 at 40070.
--         Not matched by sunspec_meter (ids 201..204, length 105). Any SunSpec float
--         meter placed like Fronius's matches too (intended: the map is SunSpec's).
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/fronius_smart_meter_float.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('fronius_smart_meter_float',
        'Fronius Smart Meter via Datamanager/GEN24, SunSpec model 211..213 float32 at 40069 (unit id 240)',
        125, 16, 3, 0)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'fronius_smart_meter_float';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code,
                       byte_order, scale, not_available, kind, counter_max_rate) VALUES
    ('fronius_smart_meter_float', 40069, 'sunspec_model_id',   NULL,  4, 3, 'ABCD', 1, 65535, 'gauge',   NULL),  -- ID: 211..213
    ('fronius_smart_meter_float', 40071, 'current_total',      'A',   3, 3, 'ABCD', 1, NULL,  'gauge',   NULL),  -- A
    ('fronius_smart_meter_float', 40073, 'current_l1',         'A',   3, 3, 'ABCD', 1, NULL,  'gauge',   NULL),  -- AphA
    ('fronius_smart_meter_float', 40075, 'current_l2',         'A',   3, 3, 'ABCD', 1, NULL,  'gauge',   NULL),  -- AphB
    ('fronius_smart_meter_float', 40077, 'current_l3',         'A',   3, 3, 'ABCD', 1, NULL,  'gauge',   NULL),  -- AphC
    ('fronius_smart_meter_float', 40079, 'voltage_ln_average', 'V',   3, 3, 'ABCD', 1, NULL,  'gauge',   NULL),  -- PhV
    ('fronius_smart_meter_float', 40081, 'voltage_l1',         'V',   3, 3, 'ABCD', 1, NULL,  'gauge',   NULL),  -- PhVphA
    ('fronius_smart_meter_float', 40083, 'voltage_l2',         'V',   3, 3, 'ABCD', 1, NULL,  'gauge',   NULL),  -- PhVphB
    ('fronius_smart_meter_float', 40085, 'voltage_l3',         'V',   3, 3, 'ABCD', 1, NULL,  'gauge',   NULL),  -- PhVphC
    ('fronius_smart_meter_float', 40087, 'voltage_ll_average', 'V',   3, 3, 'ABCD', 1, NULL,  'gauge',   NULL),  -- PPV
    ('fronius_smart_meter_float', 40089, 'voltage_l1_l2',      'V',   3, 3, 'ABCD', 1, NULL,  'gauge',   NULL),  -- PPVphAB
    ('fronius_smart_meter_float', 40091, 'voltage_l2_l3',      'V',   3, 3, 'ABCD', 1, NULL,  'gauge',   NULL),  -- PPVphBC
    ('fronius_smart_meter_float', 40093, 'voltage_l3_l1',      'V',   3, 3, 'ABCD', 1, NULL,  'gauge',   NULL),  -- PPVphCA
    ('fronius_smart_meter_float', 40095, 'frequency',          'Hz',  3, 3, 'ABCD', 1, NULL,  'gauge',   NULL),  -- Hz
    ('fronius_smart_meter_float', 40097, 'active_power',       'W',   3, 3, 'ABCD', 1, NULL,  'gauge',   NULL),  -- W
    ('fronius_smart_meter_float', 40099, 'active_power_l1',    'W',   3, 3, 'ABCD', 1, NULL,  'gauge',   NULL),  -- WphA
    ('fronius_smart_meter_float', 40101, 'active_power_l2',    'W',   3, 3, 'ABCD', 1, NULL,  'gauge',   NULL),  -- WphB
    ('fronius_smart_meter_float', 40103, 'active_power_l3',    'W',   3, 3, 'ABCD', 1, NULL,  'gauge',   NULL),  -- WphC
    ('fronius_smart_meter_float', 40105, 'apparent_power',     'VA',  3, 3, 'ABCD', 1, NULL,  'gauge',   NULL),  -- VA
    ('fronius_smart_meter_float', 40107, 'apparent_power_l1',  'VA',  3, 3, 'ABCD', 1, NULL,  'gauge',   NULL),  -- VAphA
    ('fronius_smart_meter_float', 40109, 'apparent_power_l2',  'VA',  3, 3, 'ABCD', 1, NULL,  'gauge',   NULL),  -- VAphB
    ('fronius_smart_meter_float', 40111, 'apparent_power_l3',  'VA',  3, 3, 'ABCD', 1, NULL,  'gauge',   NULL),  -- VAphC
    ('fronius_smart_meter_float', 40113, 'reactive_power',     'var', 3, 3, 'ABCD', 1, NULL,  'gauge',   NULL),  -- VAR
    ('fronius_smart_meter_float', 40115, 'reactive_power_l1',  'var', 3, 3, 'ABCD', 1, NULL,  'gauge',   NULL),  -- VARphA
    ('fronius_smart_meter_float', 40117, 'reactive_power_l2',  'var', 3, 3, 'ABCD', 1, NULL,  'gauge',   NULL),  -- VARphB
    ('fronius_smart_meter_float', 40119, 'reactive_power_l3',  'var', 3, 3, 'ABCD', 1, NULL,  'gauge',   NULL),  -- VARphC
    ('fronius_smart_meter_float', 40129, 'energy_export',      'Wh',  3, 3, 'ABCD', 1, NULL,  'counter', NULL),  -- TotWhExp
    ('fronius_smart_meter_float', 40131, 'energy_export_l1',   'Wh',  3, 3, 'ABCD', 1, NULL,  'counter', NULL),  -- TotWhExpPhA
    ('fronius_smart_meter_float', 40133, 'energy_export_l2',   'Wh',  3, 3, 'ABCD', 1, NULL,  'counter', NULL),  -- TotWhExpPhB
    ('fronius_smart_meter_float', 40135, 'energy_export_l3',   'Wh',  3, 3, 'ABCD', 1, NULL,  'counter', NULL),  -- TotWhExpPhC
    ('fronius_smart_meter_float', 40137, 'energy_import',      'Wh',  3, 3, 'ABCD', 1, NULL,  'counter', NULL),  -- TotWhImp
    ('fronius_smart_meter_float', 40139, 'energy_import_l1',   'Wh',  3, 3, 'ABCD', 1, NULL,  'counter', NULL),  -- TotWhImpPhA
    ('fronius_smart_meter_float', 40141, 'energy_import_l2',   'Wh',  3, 3, 'ABCD', 1, NULL,  'counter', NULL),  -- TotWhImpPhB
    ('fronius_smart_meter_float', 40143, 'energy_import_l3',   'Wh',  3, 3, 'ABCD', 1, NULL,  'counter', NULL);  -- TotWhImpPhC

DELETE FROM device_signatures WHERE type = 'fronius_smart_meter_float';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('fronius_smart_meter_float', 40000, 3, 5, 'ABCD', 1, 1400204883, 1400204883, 'SunSpec marker "SunS" (0x53756E53) at 40000'),
    ('fronius_smart_meter_float', 40069, 3, 4, 'ABCD', 1, 211, 214, 'SunSpec model id 211..214 (meter, float32) after a 65-register common model'),
    ('fronius_smart_meter_float', 40070, 3, 4, 'ABCD', 1, 124, 124, 'SunSpec model length 124 (models 211..214)');

COMMIT;
