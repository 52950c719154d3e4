-- Fronius inverters (Symo, Primo, Eco, Galvo, GEN24, Tauro) in the Datamanager's
-- default "float" SunSpec setting: SunSpec inverter model 113 (111/112 single/
-- split phase), float32, after a 65-register common model.
--
-- This is the float twin of sunspec_inverter.sql (models 101..103, int + SF):
-- the Fronius Datamanager serves one or the other ("SunSpec Model Type: float"
-- is the factory setting, "int + SF" the alternative); the signature (model id
-- and length at 40069/40070) tells them apart.
--
-- Source: SunSpec Alliance, "SunSpec Information Model Specification" and the
--         model definition json/model_113.json in github.com/sunspec/models
--         (ID, L = 60, A, AphA..C, PPVphAB..CA, PhVphA..C, W, Hz, VA, VAr, PF,
--         WH, DCA, DCV, DCW, TmpCab, TmpSnk, TmpTrns, TmpOt, St, StVnd, events;
--         float32 values at offsets 2, 4, ... from the model id).
-- Device placement: Fronius, "Fronius Datamanager Modbus TCP & RTU" operating
--         instructions 42,0410,2049 (fronius.com): register numbers 40001 SID,
--         40003 ID, 40004 L = 65, inverter model at register number 40070 =
--         protocol address 40069 (see sunspec_inverter.sql for the same placement
--         of the int + SF models).
-- Cross-checked: evcc-io/evcc templates/definition/meter/fronius-gen24.yaml
--         (reads the inverter through the SunSpec chain, models 10x or 11x);
--         volkszaehler/mbmd issue #72 ("On (my) Fronius inverter power factor is
--         reported ... as: -96.91"): Fronius sends PF in percent, as SunSpec's
--         "Pct" unit says, hence scale 0.01 for a ratio like the meters' PF.
-- Function code: 3 (read holding registers).
-- Data types: float32 big-endian (ABCD); model id, St and StVnd uint16 (enum16).
--         A value the inverter does not have is NaN (0x7FC00000, e.g. the
--         temperatures on most models); NaN is never written.
-- Addresses: register_address is the 0-based protocol address (Fronius register
--         number 40070 -> 40069). Offsets from the model id follow model_113.json.
-- Unit id: the inverter number in the Datamanager's Modbus settings (usually 1).
--         Port 502. Enable "Data export via Modbus: tcp".
-- Request limits: 40069..40118 (50 registers) in one request.
-- Omitted: events (bitfields); heat-sink, transformer and other temperatures
--         (only the cabinet temperature TmpCab is read; NaN where a model lacks it).
-- Counters: energy_yield (WH, lifetime AC energy) is kind 'counter'.
--         counter_max_rate 300 Wh/s, from two limits, the larger one taken:
--         power: the largest Fronius inverter is the 100 kW Tauro ECO 100;
--         2 x 100 kW = 200000 Wh / 3600 s = 55.6 Wh/s;
--         resolution: WH is a float32 in Wh, whose step (one unit in the last
--         place) grows with the total: 64 Wh from 2^29 Wh (537 MWh), 256 Wh from
--         2^31 Wh (2.1 GWh). A whole step must pass in one second (the guard's
--         shortest interval), so 300 Wh/s covers totals up to 2^32 Wh (4.3 GWh).
-- Signature: "SunS" at 40000, model id 111..113 at 40069 and length 60 at 40070
--         (models 111..113 are 60 registers long). Not matched by
--         sunspec_inverter (ids 101..103, length 50). Any SunSpec float inverter
--         placed like Fronius's matches too (intended: the map is SunSpec's).
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/fronius_inverter_float.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('fronius_inverter_float',
        'Fronius inverter via Datamanager/GEN24, SunSpec model 111..113 float32 at 40069 (unit id = inverter number)',
        125, 16, 3, 0)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'fronius_inverter_float';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code,
                       byte_order, scale, not_available, kind, counter_max_rate) VALUES
    ('fronius_inverter_float', 40069, 'sunspec_model_id',       NULL,  4, 3, 'ABCD', 1,    65535, 'gauge',   NULL),  -- ID: 111..113
    ('fronius_inverter_float', 40071, 'current_total',          'A',   3, 3, 'ABCD', 1,    NULL,  'gauge',   NULL),  -- A
    ('fronius_inverter_float', 40073, 'current_l1',             'A',   3, 3, 'ABCD', 1,    NULL,  'gauge',   NULL),  -- AphA
    ('fronius_inverter_float', 40075, 'current_l2',             'A',   3, 3, 'ABCD', 1,    NULL,  'gauge',   NULL),  -- AphB
    ('fronius_inverter_float', 40077, 'current_l3',             'A',   3, 3, 'ABCD', 1,    NULL,  'gauge',   NULL),  -- AphC
    ('fronius_inverter_float', 40079, 'voltage_l1_l2',          'V',   3, 3, 'ABCD', 1,    NULL,  'gauge',   NULL),  -- PPVphAB
    ('fronius_inverter_float', 40081, 'voltage_l2_l3',          'V',   3, 3, 'ABCD', 1,    NULL,  'gauge',   NULL),  -- PPVphBC
    ('fronius_inverter_float', 40083, 'voltage_l3_l1',          'V',   3, 3, 'ABCD', 1,    NULL,  'gauge',   NULL),  -- PPVphCA
    ('fronius_inverter_float', 40085, 'voltage_l1',             'V',   3, 3, 'ABCD', 1,    NULL,  'gauge',   NULL),  -- PhVphA
    ('fronius_inverter_float', 40087, 'voltage_l2',             'V',   3, 3, 'ABCD', 1,    NULL,  'gauge',   NULL),  -- PhVphB
    ('fronius_inverter_float', 40089, 'voltage_l3',             'V',   3, 3, 'ABCD', 1,    NULL,  'gauge',   NULL),  -- PhVphC
    ('fronius_inverter_float', 40091, 'active_power',           'W',   3, 3, 'ABCD', 1,    NULL,  'gauge',   NULL),  -- W
    ('fronius_inverter_float', 40093, 'frequency',              'Hz',  3, 3, 'ABCD', 1,    NULL,  'gauge',   NULL),  -- Hz
    ('fronius_inverter_float', 40095, 'apparent_power',         'VA',  3, 3, 'ABCD', 1,    NULL,  'gauge',   NULL),  -- VA
    ('fronius_inverter_float', 40097, 'reactive_power',         'var', 3, 3, 'ABCD', 1,    NULL,  'gauge',   NULL),  -- VAr
    ('fronius_inverter_float', 40099, 'power_factor',           NULL,  3, 3, 'ABCD', 0.01, NULL,  'gauge',   NULL),  -- PF (Pct -> ratio)
    ('fronius_inverter_float', 40101, 'energy_yield',           'Wh',  3, 3, 'ABCD', 1,    NULL,  'counter', 300),   -- WH (lifetime AC energy)
    ('fronius_inverter_float', 40103, 'dc_current',             'A',   3, 3, 'ABCD', 1,    NULL,  'gauge',   NULL),  -- DCA
    ('fronius_inverter_float', 40105, 'dc_voltage',             'V',   3, 3, 'ABCD', 1,    NULL,  'gauge',   NULL),  -- DCV
    ('fronius_inverter_float', 40107, 'dc_power',               'W',   3, 3, 'ABCD', 1,    NULL,  'gauge',   NULL),  -- DCW
    ('fronius_inverter_float', 40109, 'temperature',            '°C',  3, 3, 'ABCD', 1,    NULL,  'gauge',   NULL),  -- TmpCab
    ('fronius_inverter_float', 40117, 'operating_state',        NULL,  4, 3, 'ABCD', 1,    65535, 'gauge',   NULL),  -- St (1 off .. 4 MPPT .. 7 fault, 8 standby)
    ('fronius_inverter_float', 40118, 'operating_state_vendor', NULL,  4, 3, 'ABCD', 1,    65535, 'gauge',   NULL);  -- StVnd

DELETE FROM device_signatures WHERE type = 'fronius_inverter_float';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('fronius_inverter_float', 40000, 3, 5, 'ABCD', 1, 1400204883, 1400204883, 'SunSpec marker "SunS" (0x53756E53) at 40000'),
    ('fronius_inverter_float', 40069, 3, 4, 'ABCD', 1, 111, 113, 'SunSpec model id 111..113 (inverter, float32) after a 65-register common model'),
    ('fronius_inverter_float', 40070, 3, 4, 'ABCD', 1, 60, 60, 'SunSpec model length 60 (models 111..113)');

COMMIT;
