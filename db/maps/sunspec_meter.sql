-- SunSpec meter: wye-connect three-phase meter model 203 (integer + scale
-- factor) after a 65-register common model; also fits 201 (single-phase),
-- 202 (split-phase) and 204 (delta), which share the 203 point layout.
--
-- Source: SunSpec Alliance, "SunSpec Information Model Specification" and the
--         model definitions json/model_1.json and json/model_203.json in
--         github.com/sunspec/models (model 203: ID, L, A, AphA..AphC, A_SF,
--         PhV, PhVphA..C, PPV, PhVphAB..CA, V_SF, Hz, Hz_SF, W, WphA..C, W_SF,
--         VA.., VA_SF, VAR.., VAR_SF, PF.., PF_SF, TotWhExp(+A..C),
--         TotWhImp(+A..C), TotWh_SF, ...).
-- Device placement: Fronius, "Fronius Datamanager Modbus TCP & RTU" operating
--         instructions 42,0410,2049 (fronius.com): the energy meter at the feed-in
--         point answers as its own Modbus device, unit id 240 (further meters
--         241..245), with the common model (register numbers 40001 SID,
--         40003 ID, 40004 L = 65) followed by the meter model at register
--         number 40070 = protocol address 40069. Registers are 1-based in that
--         document; register_address here is the 0-based protocol address.
--         Check sunspec_model_id: it must read 201..204.
-- Unit id: Fronius Datamanager: 240 for the primary (feed-in) meter, 241..245
--         for further meters; Fronius GEN24 inverters are reported to serve the
--         primary meter at unit id 200.
--         SolarEdge serves meters inside the inverter's own map instead
--         (first meter: common block at 40121, model 20x ID at 40188): those
--         addresses are this map's plus 119, not loadable as is.
-- Sign convention: per SunSpec, W > 0 is power imported by the site; some
--         devices report the opposite (evcc's SolarEdge template multiplies
--         203:W by -1). Check against the meter's display once.
-- Addresses: register_address is the 0-based protocol address (40000 holds
--         "SunS"; Fronius register number 40070 -> 40069).
-- Function code: 3 (read holding registers).
-- Data types: int16 values with sunssf (int16 power of ten) registers referenced
--         through registers.scale_factor; acc32 energies as uint32; big-endian
--         (ABCD). PF is in percent per SunSpec; scale 0.01 stores a ratio.
-- Not available (SunSpec): int16 / sunssf -32768, uint16 65535, acc32 0.
-- Omitted: common-model strings (Mn, Md, Opt, Vr, SN) are text, not numbers;
--         apparent/reactive energy counters (TotVAh*, TotVArh*) and events.
-- Fronius: set "SunSpec Model Type: int + SF" (the default "float" serves model
--         213 instead: fronius_smart_meter_float.sql).
-- Counters: energy_import / energy_export and their phase values are kind 'counter';
--         counter_max_rate NULL: the meters behind this map (Fronius Smart Meter
--         TS 65A-3 direct, but also TS 5kA-3 and 50kA-3 with current transformers
--         of any size) have no rating the map could assume.
-- Signature: "SunS" at 40000, model id 201..204 at 40069 and model length 105 at
--         40070 (models 201..204 are 105 registers long). The float variant
--         (models 211..214, fronius_smart_meter_float) has length 124 and is not
--         matched. Meters from other makers with the same placement match too:
--         that is intended, the map is SunSpec's.
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/sunspec_meter.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('sunspec_meter',
        'SunSpec meter, model 201..204 (int+SF) at 40069 after a 65-register common model (Fronius meter, unit id 240)',
        125, 16, 3, 0)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'sunspec_meter';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code, byte_order, scale, scale_factor, not_available, kind, counter_max_rate) VALUES
    ('sunspec_meter', 40069, 'sunspec_model_id',   NULL,  4, 3, 'ABCD', 1,    NULL,                65535, 'gauge',   NULL),   -- ID: 201..204
    ('sunspec_meter', 40071, 'current_total',      'A',   1, 3, 'ABCD', 1,    'sf_current',        -32768, 'gauge',   NULL),  -- A
    ('sunspec_meter', 40072, 'current_l1',         'A',   1, 3, 'ABCD', 1,    'sf_current',        -32768, 'gauge',   NULL),  -- AphA
    ('sunspec_meter', 40073, 'current_l2',         'A',   1, 3, 'ABCD', 1,    'sf_current',        -32768, 'gauge',   NULL),  -- AphB
    ('sunspec_meter', 40074, 'current_l3',         'A',   1, 3, 'ABCD', 1,    'sf_current',        -32768, 'gauge',   NULL),  -- AphC
    ('sunspec_meter', 40075, 'sf_current',         NULL,  1, 3, 'ABCD', 1,    NULL,                -32768, 'gauge',   NULL),  -- A_SF
    ('sunspec_meter', 40076, 'voltage_ln_average', 'V',   1, 3, 'ABCD', 1,    'sf_voltage',        -32768, 'gauge',   NULL),  -- PhV
    ('sunspec_meter', 40077, 'voltage_l1',         'V',   1, 3, 'ABCD', 1,    'sf_voltage',        -32768, 'gauge',   NULL),  -- PhVphA
    ('sunspec_meter', 40078, 'voltage_l2',         'V',   1, 3, 'ABCD', 1,    'sf_voltage',        -32768, 'gauge',   NULL),  -- PhVphB
    ('sunspec_meter', 40079, 'voltage_l3',         'V',   1, 3, 'ABCD', 1,    'sf_voltage',        -32768, 'gauge',   NULL),  -- PhVphC
    ('sunspec_meter', 40080, 'voltage_ll_average', 'V',   1, 3, 'ABCD', 1,    'sf_voltage',        -32768, 'gauge',   NULL),  -- PPV
    ('sunspec_meter', 40081, 'voltage_l1_l2',      'V',   1, 3, 'ABCD', 1,    'sf_voltage',        -32768, 'gauge',   NULL),  -- PhVphAB
    ('sunspec_meter', 40082, 'voltage_l2_l3',      'V',   1, 3, 'ABCD', 1,    'sf_voltage',        -32768, 'gauge',   NULL),  -- PhVphBC
    ('sunspec_meter', 40083, 'voltage_l3_l1',      'V',   1, 3, 'ABCD', 1,    'sf_voltage',        -32768, 'gauge',   NULL),  -- PhVphCA
    ('sunspec_meter', 40084, 'sf_voltage',         NULL,  1, 3, 'ABCD', 1,    NULL,                -32768, 'gauge',   NULL),  -- V_SF
    ('sunspec_meter', 40085, 'frequency',          'Hz',  1, 3, 'ABCD', 1,    'sf_frequency',      -32768, 'gauge',   NULL),  -- Hz
    ('sunspec_meter', 40086, 'sf_frequency',       NULL,  1, 3, 'ABCD', 1,    NULL,                -32768, 'gauge',   NULL),  -- Hz_SF
    ('sunspec_meter', 40087, 'active_power',       'W',   1, 3, 'ABCD', 1,    'sf_power',          -32768, 'gauge',   NULL),  -- W
    ('sunspec_meter', 40088, 'active_power_l1',    'W',   1, 3, 'ABCD', 1,    'sf_power',          -32768, 'gauge',   NULL),  -- WphA
    ('sunspec_meter', 40089, 'active_power_l2',    'W',   1, 3, 'ABCD', 1,    'sf_power',          -32768, 'gauge',   NULL),  -- WphB
    ('sunspec_meter', 40090, 'active_power_l3',    'W',   1, 3, 'ABCD', 1,    'sf_power',          -32768, 'gauge',   NULL),  -- WphC
    ('sunspec_meter', 40091, 'sf_power',           NULL,  1, 3, 'ABCD', 1,    NULL,                -32768, 'gauge',   NULL),  -- W_SF
    ('sunspec_meter', 40092, 'apparent_power',     'VA',  1, 3, 'ABCD', 1,    'sf_apparent_power', -32768, 'gauge',   NULL),  -- VA
    ('sunspec_meter', 40093, 'apparent_power_l1',  'VA',  1, 3, 'ABCD', 1,    'sf_apparent_power', -32768, 'gauge',   NULL),  -- VAphA
    ('sunspec_meter', 40094, 'apparent_power_l2',  'VA',  1, 3, 'ABCD', 1,    'sf_apparent_power', -32768, 'gauge',   NULL),  -- VAphB
    ('sunspec_meter', 40095, 'apparent_power_l3',  'VA',  1, 3, 'ABCD', 1,    'sf_apparent_power', -32768, 'gauge',   NULL),  -- VAphC
    ('sunspec_meter', 40096, 'sf_apparent_power',  NULL,  1, 3, 'ABCD', 1,    NULL,                -32768, 'gauge',   NULL),  -- VA_SF
    ('sunspec_meter', 40097, 'reactive_power',     'var', 1, 3, 'ABCD', 1,    'sf_reactive_power', -32768, 'gauge',   NULL),  -- VAR
    ('sunspec_meter', 40098, 'reactive_power_l1',  'var', 1, 3, 'ABCD', 1,    'sf_reactive_power', -32768, 'gauge',   NULL),  -- VARphA
    ('sunspec_meter', 40099, 'reactive_power_l2',  'var', 1, 3, 'ABCD', 1,    'sf_reactive_power', -32768, 'gauge',   NULL),  -- VARphB
    ('sunspec_meter', 40100, 'reactive_power_l3',  'var', 1, 3, 'ABCD', 1,    'sf_reactive_power', -32768, 'gauge',   NULL),  -- VARphC
    ('sunspec_meter', 40101, 'sf_reactive_power',  NULL,  1, 3, 'ABCD', 1,    NULL,                -32768, 'gauge',   NULL),  -- VAR_SF
    ('sunspec_meter', 40102, 'power_factor',       NULL,  1, 3, 'ABCD', 0.01, 'sf_power_factor',   -32768, 'gauge',   NULL),  -- PF (Pct -> ratio)
    ('sunspec_meter', 40103, 'power_factor_l1',    NULL,  1, 3, 'ABCD', 0.01, 'sf_power_factor',   -32768, 'gauge',   NULL),  -- PFphA
    ('sunspec_meter', 40104, 'power_factor_l2',    NULL,  1, 3, 'ABCD', 0.01, 'sf_power_factor',   -32768, 'gauge',   NULL),  -- PFphB
    ('sunspec_meter', 40105, 'power_factor_l3',    NULL,  1, 3, 'ABCD', 0.01, 'sf_power_factor',   -32768, 'gauge',   NULL),  -- PFphC
    ('sunspec_meter', 40106, 'sf_power_factor',    NULL,  1, 3, 'ABCD', 1,    NULL,                -32768, 'gauge',   NULL),  -- PF_SF
    ('sunspec_meter', 40107, 'energy_export',      'Wh',  5, 3, 'ABCD', 1,    'sf_energy',         0, 'counter', NULL),       -- TotWhExp (acc32)
    ('sunspec_meter', 40109, 'energy_export_l1',   'Wh',  5, 3, 'ABCD', 1,    'sf_energy',         0, 'counter', NULL),       -- TotWhExpPhA
    ('sunspec_meter', 40111, 'energy_export_l2',   'Wh',  5, 3, 'ABCD', 1,    'sf_energy',         0, 'counter', NULL),       -- TotWhExpPhB
    ('sunspec_meter', 40113, 'energy_export_l3',   'Wh',  5, 3, 'ABCD', 1,    'sf_energy',         0, 'counter', NULL),       -- TotWhExpPhC
    ('sunspec_meter', 40115, 'energy_import',      'Wh',  5, 3, 'ABCD', 1,    'sf_energy',         0, 'counter', NULL),       -- TotWhImp (acc32)
    ('sunspec_meter', 40117, 'energy_import_l1',   'Wh',  5, 3, 'ABCD', 1,    'sf_energy',         0, 'counter', NULL),       -- TotWhImpPhA
    ('sunspec_meter', 40119, 'energy_import_l2',   'Wh',  5, 3, 'ABCD', 1,    'sf_energy',         0, 'counter', NULL),       -- TotWhImpPhB
    ('sunspec_meter', 40121, 'energy_import_l3',   'Wh',  5, 3, 'ABCD', 1,    'sf_energy',         0, 'counter', NULL),       -- TotWhImpPhC
    ('sunspec_meter', 40123, 'sf_energy',          NULL,  1, 3, 'ABCD', 1,    NULL,                -32768, 'gauge',   NULL);  -- TotWh_SF

DELETE FROM device_signatures WHERE type = 'sunspec_meter';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('sunspec_meter', 40000, 3, 5, 'ABCD', 1, 1400204883, 1400204883, 'SunSpec marker "SunS" (0x53756E53) at 40000'),
    ('sunspec_meter', 40069, 3, 4, 'ABCD', 1, 201, 204, 'SunSpec model id 201..204 (meter, int+SF) after a 65-register common model'),
    ('sunspec_meter', 40070, 3, 4, 'ABCD', 1, 105, 105, 'SunSpec model length 105 (models 201..204)');

COMMIT;
