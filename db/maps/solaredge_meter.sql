-- SolarEdge "Modbus meter" (SE-MTR-3Y, WattNode / Inepro meters sold by SolarEdge)
-- as the SolarEdge inverter serves it inside its own SunSpec map: meter 1,
-- SunSpec model 203 (201/202/204) integer + scale factor, model id at 40188.
--
-- Source: SolarEdge, "Technical Note - SunSpec Logging in SolarEdge Inverters"
--         (Version 2.4, December 2021, and later; solaredge.com), chapter "Meter
--         Models": meter 1 = common block at 40121 (C_SunSpec_DID = 1, length 65,
--         manufacturer, model, option, version, serial, device address at 40187),
--         meter model at 40188 (C_SunSpec_DID 201..204), 40189 length 105,
--         40190 M_AC_Current ...; meters 2 and 3 follow at +174 and +348
--         (model ids at 40362 and 40536), not in this map. The model's point
--         layout is SunSpec's json/model_203.json (github.com/sunspec/models), the
--         same as sunspec_meter.sql: every address here is that map's plus 119.
-- Cross-checked: nmakel/solaredge_modbus src/solaredge_modbus/__init__.py
--         (class Meter: c_sunspec_did 0x9cfc = 40188, current 0x9cfe = 40190,
--         frequency 0x9d0c, power 0x9d0e, export_energy_active 0x9d22,
--         import_energy_active 0x9d2a, energy_active_scale 0x9d32;
--         METER_REGISTER_OFFSETS 0x0, 0xae, 0x15c); binsentsu/
--         home-assistant-solaredge-modbus (meter 1 read from 40190, 103
--         registers); evcc-io/evcc templates/definition/meter/solaredge-inverter.yaml
--         (subdevice 1: 203:W, 203:TotWhImp, 203:TotWhExp, 203:AphA..).
-- Function code: 3 (read holding registers).
-- Data types: int16 values with sunssf (int16 power of ten) scale factors
--         referenced through registers.scale_factor; acc32 energies as uint32;
--         big-endian (ABCD). PF is in percent per SunSpec; scale 0.01 stores a ratio.
-- Not available (SunSpec): int16 / sunssf -32768, uint16 65535, acc32 0.
-- Addresses: register_address is the 0-based protocol address: the technical
--         note numbers registers from 40000 ("SunS"), as this map does.
-- Unit id: the inverter's Modbus id (default 1); the meter has no unit id of its
--         own. Port 1502 (evcc's default for SolarEdge; older firmware 502), after
--         enabling Modbus TCP in SetApp or on the inverter's LCD. The inverter
--         accepts one Modbus TCP client at a time (evcc: "Only one system may
--         access the inverter").
-- Request limits: 40188..40242 (55 registers) in one request.
-- Sign convention: SolarEdge reports the meter's power with feed-in positive
--         (evcc's template multiplies 203:W by -1 to get import positive); this
--         map stores what the inverter sends. Check against the monitoring once.
-- Omitted: the common block's strings; apparent/reactive energies; events.
-- Counters: energy_import / energy_export and their phase values are kind 'counter';
--         counter_max_rate NULL: SolarEdge meters measure through current
--         transformers of any size, so no rise per second follows from the map.
-- Signature: "SunS" at 40000, the meter's common model (id 1 at 40121, length
--         65 at 40122) and meter model id 201..204 at 40188 with length 105 at
--         40189: five rows. A SolarEdge inverter without a meter fails them (no
--         meter block). One with a meter also matches sunspec_inverter (its three
--         rows at 40000/40069/40070: the same unit serves both); five rows beat
--         three, so emm scan names solaredge_meter. emm scan names one family per
--         unit: add sunspec_inverter for the same unit id by hand.
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/solaredge_meter.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('solaredge_meter',
        'SolarEdge meter 1 through the inverter, SunSpec model 201..204 (int+SF) at 40188 (inverter unit id)',
        125, 16, 3, 0)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'solaredge_meter';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code, byte_order, scale, scale_factor, not_available, kind, counter_max_rate) VALUES
    ('solaredge_meter', 40188, 'sunspec_model_id',   NULL,  4, 3, 'ABCD', 1,    NULL,                65535, 'gauge',   NULL),   -- ID: 201..204
    ('solaredge_meter', 40190, 'current_total',      'A',   1, 3, 'ABCD', 1,    'sf_current',        -32768, 'gauge',   NULL),  -- A
    ('solaredge_meter', 40191, 'current_l1',         'A',   1, 3, 'ABCD', 1,    'sf_current',        -32768, 'gauge',   NULL),  -- AphA
    ('solaredge_meter', 40192, 'current_l2',         'A',   1, 3, 'ABCD', 1,    'sf_current',        -32768, 'gauge',   NULL),  -- AphB
    ('solaredge_meter', 40193, 'current_l3',         'A',   1, 3, 'ABCD', 1,    'sf_current',        -32768, 'gauge',   NULL),  -- AphC
    ('solaredge_meter', 40194, 'sf_current',         NULL,  1, 3, 'ABCD', 1,    NULL,                -32768, 'gauge',   NULL),  -- A_SF
    ('solaredge_meter', 40195, 'voltage_ln_average', 'V',   1, 3, 'ABCD', 1,    'sf_voltage',        -32768, 'gauge',   NULL),  -- PhV
    ('solaredge_meter', 40196, 'voltage_l1',         'V',   1, 3, 'ABCD', 1,    'sf_voltage',        -32768, 'gauge',   NULL),  -- PhVphA
    ('solaredge_meter', 40197, 'voltage_l2',         'V',   1, 3, 'ABCD', 1,    'sf_voltage',        -32768, 'gauge',   NULL),  -- PhVphB
    ('solaredge_meter', 40198, 'voltage_l3',         'V',   1, 3, 'ABCD', 1,    'sf_voltage',        -32768, 'gauge',   NULL),  -- PhVphC
    ('solaredge_meter', 40199, 'voltage_ll_average', 'V',   1, 3, 'ABCD', 1,    'sf_voltage',        -32768, 'gauge',   NULL),  -- PPV
    ('solaredge_meter', 40200, 'voltage_l1_l2',      'V',   1, 3, 'ABCD', 1,    'sf_voltage',        -32768, 'gauge',   NULL),  -- PhVphAB
    ('solaredge_meter', 40201, 'voltage_l2_l3',      'V',   1, 3, 'ABCD', 1,    'sf_voltage',        -32768, 'gauge',   NULL),  -- PhVphBC
    ('solaredge_meter', 40202, 'voltage_l3_l1',      'V',   1, 3, 'ABCD', 1,    'sf_voltage',        -32768, 'gauge',   NULL),  -- PhVphCA
    ('solaredge_meter', 40203, 'sf_voltage',         NULL,  1, 3, 'ABCD', 1,    NULL,                -32768, 'gauge',   NULL),  -- V_SF
    ('solaredge_meter', 40204, 'frequency',          'Hz',  1, 3, 'ABCD', 1,    'sf_frequency',      -32768, 'gauge',   NULL),  -- Hz
    ('solaredge_meter', 40205, 'sf_frequency',       NULL,  1, 3, 'ABCD', 1,    NULL,                -32768, 'gauge',   NULL),  -- Hz_SF
    ('solaredge_meter', 40206, 'active_power',       'W',   1, 3, 'ABCD', 1,    'sf_power',          -32768, 'gauge',   NULL),  -- W
    ('solaredge_meter', 40207, 'active_power_l1',    'W',   1, 3, 'ABCD', 1,    'sf_power',          -32768, 'gauge',   NULL),  -- WphA
    ('solaredge_meter', 40208, 'active_power_l2',    'W',   1, 3, 'ABCD', 1,    'sf_power',          -32768, 'gauge',   NULL),  -- WphB
    ('solaredge_meter', 40209, 'active_power_l3',    'W',   1, 3, 'ABCD', 1,    'sf_power',          -32768, 'gauge',   NULL),  -- WphC
    ('solaredge_meter', 40210, 'sf_power',           NULL,  1, 3, 'ABCD', 1,    NULL,                -32768, 'gauge',   NULL),  -- W_SF
    ('solaredge_meter', 40211, 'apparent_power',     'VA',  1, 3, 'ABCD', 1,    'sf_apparent_power', -32768, 'gauge',   NULL),  -- VA
    ('solaredge_meter', 40212, 'apparent_power_l1',  'VA',  1, 3, 'ABCD', 1,    'sf_apparent_power', -32768, 'gauge',   NULL),  -- VAphA
    ('solaredge_meter', 40213, 'apparent_power_l2',  'VA',  1, 3, 'ABCD', 1,    'sf_apparent_power', -32768, 'gauge',   NULL),  -- VAphB
    ('solaredge_meter', 40214, 'apparent_power_l3',  'VA',  1, 3, 'ABCD', 1,    'sf_apparent_power', -32768, 'gauge',   NULL),  -- VAphC
    ('solaredge_meter', 40215, 'sf_apparent_power',  NULL,  1, 3, 'ABCD', 1,    NULL,                -32768, 'gauge',   NULL),  -- VA_SF
    ('solaredge_meter', 40216, 'reactive_power',     'var', 1, 3, 'ABCD', 1,    'sf_reactive_power', -32768, 'gauge',   NULL),  -- VAR
    ('solaredge_meter', 40217, 'reactive_power_l1',  'var', 1, 3, 'ABCD', 1,    'sf_reactive_power', -32768, 'gauge',   NULL),  -- VARphA
    ('solaredge_meter', 40218, 'reactive_power_l2',  'var', 1, 3, 'ABCD', 1,    'sf_reactive_power', -32768, 'gauge',   NULL),  -- VARphB
    ('solaredge_meter', 40219, 'reactive_power_l3',  'var', 1, 3, 'ABCD', 1,    'sf_reactive_power', -32768, 'gauge',   NULL),  -- VARphC
    ('solaredge_meter', 40220, 'sf_reactive_power',  NULL,  1, 3, 'ABCD', 1,    NULL,                -32768, 'gauge',   NULL),  -- VAR_SF
    ('solaredge_meter', 40221, 'power_factor',       NULL,  1, 3, 'ABCD', 0.01, 'sf_power_factor',   -32768, 'gauge',   NULL),  -- PF (Pct -> ratio)
    ('solaredge_meter', 40222, 'power_factor_l1',    NULL,  1, 3, 'ABCD', 0.01, 'sf_power_factor',   -32768, 'gauge',   NULL),  -- PFphA
    ('solaredge_meter', 40223, 'power_factor_l2',    NULL,  1, 3, 'ABCD', 0.01, 'sf_power_factor',   -32768, 'gauge',   NULL),  -- PFphB
    ('solaredge_meter', 40224, 'power_factor_l3',    NULL,  1, 3, 'ABCD', 0.01, 'sf_power_factor',   -32768, 'gauge',   NULL),  -- PFphC
    ('solaredge_meter', 40225, 'sf_power_factor',    NULL,  1, 3, 'ABCD', 1,    NULL,                -32768, 'gauge',   NULL),  -- PF_SF
    ('solaredge_meter', 40226, 'energy_export',      'Wh',  5, 3, 'ABCD', 1,    'sf_energy',         0, 'counter', NULL),       -- TotWhExp (acc32)
    ('solaredge_meter', 40228, 'energy_export_l1',   'Wh',  5, 3, 'ABCD', 1,    'sf_energy',         0, 'counter', NULL),       -- TotWhExpPhA
    ('solaredge_meter', 40230, 'energy_export_l2',   'Wh',  5, 3, 'ABCD', 1,    'sf_energy',         0, 'counter', NULL),       -- TotWhExpPhB
    ('solaredge_meter', 40232, 'energy_export_l3',   'Wh',  5, 3, 'ABCD', 1,    'sf_energy',         0, 'counter', NULL),       -- TotWhExpPhC
    ('solaredge_meter', 40234, 'energy_import',      'Wh',  5, 3, 'ABCD', 1,    'sf_energy',         0, 'counter', NULL),       -- TotWhImp (acc32)
    ('solaredge_meter', 40236, 'energy_import_l1',   'Wh',  5, 3, 'ABCD', 1,    'sf_energy',         0, 'counter', NULL),       -- TotWhImpPhA
    ('solaredge_meter', 40238, 'energy_import_l2',   'Wh',  5, 3, 'ABCD', 1,    'sf_energy',         0, 'counter', NULL),       -- TotWhImpPhB
    ('solaredge_meter', 40240, 'energy_import_l3',   'Wh',  5, 3, 'ABCD', 1,    'sf_energy',         0, 'counter', NULL),       -- TotWhImpPhC
    ('solaredge_meter', 40242, 'sf_energy',          NULL,  1, 3, 'ABCD', 1,    NULL,                -32768, 'gauge',   NULL);  -- TotWh_SF

DELETE FROM device_signatures WHERE type = 'solaredge_meter';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('solaredge_meter', 40000, 3, 5, 'ABCD', 1, 1400204883, 1400204883, 'SunSpec marker "SunS" (0x53756E53) at 40000'),
    ('solaredge_meter', 40121, 3, 4, 'ABCD', 1, 1, 1, 'meter 1 common model id (C_SunSpec_DID) = 1'),
    ('solaredge_meter', 40122, 3, 4, 'ABCD', 1, 65, 65, 'meter 1 common model length 65'),
    ('solaredge_meter', 40188, 3, 4, 'ABCD', 1, 201, 204, 'meter 1 model id 201..204 (meter, int+SF)'),
    ('solaredge_meter', 40189, 3, 4, 'ABCD', 1, 105, 105, 'meter 1 model length 105');

COMMIT;
