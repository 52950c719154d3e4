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
-- Fronius: set "SunSpec Model Type: int + SF" (default "float" serves model
--         213 instead).
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

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code, byte_order, scale, scale_factor, not_available) VALUES
    ('sunspec_meter', 40069, 'sunspec_model_id',   NULL,  4, 3, 'ABCD', 1,    NULL,                65535),   -- ID: 201..204
    ('sunspec_meter', 40071, 'current_total',      'A',   1, 3, 'ABCD', 1,    'sf_current',        -32768),  -- A
    ('sunspec_meter', 40072, 'current_l1',         'A',   1, 3, 'ABCD', 1,    'sf_current',        -32768),  -- AphA
    ('sunspec_meter', 40073, 'current_l2',         'A',   1, 3, 'ABCD', 1,    'sf_current',        -32768),  -- AphB
    ('sunspec_meter', 40074, 'current_l3',         'A',   1, 3, 'ABCD', 1,    'sf_current',        -32768),  -- AphC
    ('sunspec_meter', 40075, 'sf_current',         NULL,  1, 3, 'ABCD', 1,    NULL,                -32768),  -- A_SF
    ('sunspec_meter', 40076, 'voltage_ln_average', 'V',   1, 3, 'ABCD', 1,    'sf_voltage',        -32768),  -- PhV
    ('sunspec_meter', 40077, 'voltage_l1',         'V',   1, 3, 'ABCD', 1,    'sf_voltage',        -32768),  -- PhVphA
    ('sunspec_meter', 40078, 'voltage_l2',         'V',   1, 3, 'ABCD', 1,    'sf_voltage',        -32768),  -- PhVphB
    ('sunspec_meter', 40079, 'voltage_l3',         'V',   1, 3, 'ABCD', 1,    'sf_voltage',        -32768),  -- PhVphC
    ('sunspec_meter', 40080, 'voltage_ll_average', 'V',   1, 3, 'ABCD', 1,    'sf_voltage',        -32768),  -- PPV
    ('sunspec_meter', 40081, 'voltage_l1_l2',      'V',   1, 3, 'ABCD', 1,    'sf_voltage',        -32768),  -- PhVphAB
    ('sunspec_meter', 40082, 'voltage_l2_l3',      'V',   1, 3, 'ABCD', 1,    'sf_voltage',        -32768),  -- PhVphBC
    ('sunspec_meter', 40083, 'voltage_l3_l1',      'V',   1, 3, 'ABCD', 1,    'sf_voltage',        -32768),  -- PhVphCA
    ('sunspec_meter', 40084, 'sf_voltage',         NULL,  1, 3, 'ABCD', 1,    NULL,                -32768),  -- V_SF
    ('sunspec_meter', 40085, 'frequency',          'Hz',  1, 3, 'ABCD', 1,    'sf_frequency',      -32768),  -- Hz
    ('sunspec_meter', 40086, 'sf_frequency',       NULL,  1, 3, 'ABCD', 1,    NULL,                -32768),  -- Hz_SF
    ('sunspec_meter', 40087, 'active_power',       'W',   1, 3, 'ABCD', 1,    'sf_power',          -32768),  -- W
    ('sunspec_meter', 40088, 'active_power_l1',    'W',   1, 3, 'ABCD', 1,    'sf_power',          -32768),  -- WphA
    ('sunspec_meter', 40089, 'active_power_l2',    'W',   1, 3, 'ABCD', 1,    'sf_power',          -32768),  -- WphB
    ('sunspec_meter', 40090, 'active_power_l3',    'W',   1, 3, 'ABCD', 1,    'sf_power',          -32768),  -- WphC
    ('sunspec_meter', 40091, 'sf_power',           NULL,  1, 3, 'ABCD', 1,    NULL,                -32768),  -- W_SF
    ('sunspec_meter', 40092, 'apparent_power',     'VA',  1, 3, 'ABCD', 1,    'sf_apparent_power', -32768),  -- VA
    ('sunspec_meter', 40093, 'apparent_power_l1',  'VA',  1, 3, 'ABCD', 1,    'sf_apparent_power', -32768),  -- VAphA
    ('sunspec_meter', 40094, 'apparent_power_l2',  'VA',  1, 3, 'ABCD', 1,    'sf_apparent_power', -32768),  -- VAphB
    ('sunspec_meter', 40095, 'apparent_power_l3',  'VA',  1, 3, 'ABCD', 1,    'sf_apparent_power', -32768),  -- VAphC
    ('sunspec_meter', 40096, 'sf_apparent_power',  NULL,  1, 3, 'ABCD', 1,    NULL,                -32768),  -- VA_SF
    ('sunspec_meter', 40097, 'reactive_power',     'var', 1, 3, 'ABCD', 1,    'sf_reactive_power', -32768),  -- VAR
    ('sunspec_meter', 40098, 'reactive_power_l1',  'var', 1, 3, 'ABCD', 1,    'sf_reactive_power', -32768),  -- VARphA
    ('sunspec_meter', 40099, 'reactive_power_l2',  'var', 1, 3, 'ABCD', 1,    'sf_reactive_power', -32768),  -- VARphB
    ('sunspec_meter', 40100, 'reactive_power_l3',  'var', 1, 3, 'ABCD', 1,    'sf_reactive_power', -32768),  -- VARphC
    ('sunspec_meter', 40101, 'sf_reactive_power',  NULL,  1, 3, 'ABCD', 1,    NULL,                -32768),  -- VAR_SF
    ('sunspec_meter', 40102, 'power_factor',       NULL,  1, 3, 'ABCD', 0.01, 'sf_power_factor',   -32768),  -- PF (Pct -> ratio)
    ('sunspec_meter', 40103, 'power_factor_l1',    NULL,  1, 3, 'ABCD', 0.01, 'sf_power_factor',   -32768),  -- PFphA
    ('sunspec_meter', 40104, 'power_factor_l2',    NULL,  1, 3, 'ABCD', 0.01, 'sf_power_factor',   -32768),  -- PFphB
    ('sunspec_meter', 40105, 'power_factor_l3',    NULL,  1, 3, 'ABCD', 0.01, 'sf_power_factor',   -32768),  -- PFphC
    ('sunspec_meter', 40106, 'sf_power_factor',    NULL,  1, 3, 'ABCD', 1,    NULL,                -32768),  -- PF_SF
    ('sunspec_meter', 40107, 'energy_export',      'Wh',  5, 3, 'ABCD', 1,    'sf_energy',         0),       -- TotWhExp (acc32)
    ('sunspec_meter', 40109, 'energy_export_l1',   'Wh',  5, 3, 'ABCD', 1,    'sf_energy',         0),       -- TotWhExpPhA
    ('sunspec_meter', 40111, 'energy_export_l2',   'Wh',  5, 3, 'ABCD', 1,    'sf_energy',         0),       -- TotWhExpPhB
    ('sunspec_meter', 40113, 'energy_export_l3',   'Wh',  5, 3, 'ABCD', 1,    'sf_energy',         0),       -- TotWhExpPhC
    ('sunspec_meter', 40115, 'energy_import',      'Wh',  5, 3, 'ABCD', 1,    'sf_energy',         0),       -- TotWhImp (acc32)
    ('sunspec_meter', 40117, 'energy_import_l1',   'Wh',  5, 3, 'ABCD', 1,    'sf_energy',         0),       -- TotWhImpPhA
    ('sunspec_meter', 40119, 'energy_import_l2',   'Wh',  5, 3, 'ABCD', 1,    'sf_energy',         0),       -- TotWhImpPhB
    ('sunspec_meter', 40121, 'energy_import_l3',   'Wh',  5, 3, 'ABCD', 1,    'sf_energy',         0),       -- TotWhImpPhC
    ('sunspec_meter', 40123, 'sf_energy',          NULL,  1, 3, 'ABCD', 1,    NULL,                -32768);  -- TotWh_SF

COMMIT;
