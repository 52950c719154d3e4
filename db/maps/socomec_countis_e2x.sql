-- Socomec Countis E23, E24, E27, E28 (three-phase Countis E2x with Modbus; E23/E24
-- direct connected, E27/E28 CT connected). Not the Countis E3x/E4x (E34, E44):
-- OpenEMS reads their frequency with another scale.
--
-- Source: Socomec's Countis E2x Modbus communication table (socomec.com, product
--         pages countis-e20-21), as OpenEMS reads it. Not read directly here: the
--         addresses and scales are OpenEMS's.
-- Cross-checked: OpenEMS/openems io.openems.edge.meter.socomec
--         threephase/MeterSocomecThreephaseImpl.java (identifiedCountisE23_E24_E27_E28:
--         "All are identical") and AbstractSocomecMeter.java (the "SOCO" identifier
--         at 0xC350 and the product name at 0xC38A). One reading of the map exists
--         in the sources found.
-- Function code: 3 (read holding registers).
-- Data types: big-endian (ABCD) 32-bit integers: V uint32 / 100, Hz uint32 / 1000,
--         A uint32 / 1000, W and var int32 x 10, kWh uint32 / 100 (OpenEMS's channel
--         units and scale factors: mV = raw x 10, mHz, mA, W = raw x 10, Wh = raw x 10).
-- Addresses: hex wire addresses (0xC558 = 50520, V1).
-- Energy direction: 0xC702 import and 0xC708 export (OpenEMS maps 0xC702 to its
--         grid meter's "production" channel, energy bought from the grid).
-- Unit id: the meter's Modbus address, set on the device (no default is given
--         in the sources). Serial settings on the device.
-- Request limits: OpenEMS reads 0xC558..0xC58D in one request (54 registers,
--         gaps included), so gaps are answered: this map reads fc3 50520..50555 and
--         fc3 50946..50953.
-- Counters: kind 'counter', counter_max_rate NULL: E27/E28 are CT connected
--         (primary current configured).
-- Signature: the Socomec identifier "SOCO" at 0xC350, one character per register
--         (OpenEMS compares 0x0053004F0043004F): two uint32 rows, 0x0053004F ("S","O")
--         and 0x0043004F ("C","O"), plus V1 in a mains range. Every Socomec meter
--         answers "SOCO"; Countis E3x/E4x and Diris are not in the library, so the
--         identifier suffices here; a product-name row (0xC38A) would be needed to
--         tell E2x from E3x (not added: the name's letter case is not documented).
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/socomec_countis_e2x.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('socomec_countis_e2x',
        'Socomec Countis E23/E24/E27/E28 three-phase meter (holding registers, scaled int32)',
        125, 16, 3, 0)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'socomec_countis_e2x';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code,
                       byte_order, scale, not_available, kind, counter_max_rate) VALUES
    ('socomec_countis_e2x', 50520, 'voltage_l1', 'V', 5, 3, 'ABCD', 0.01, NULL, 'gauge', NULL),         -- 0xC558 V1
    ('socomec_countis_e2x', 50522, 'voltage_l2', 'V', 5, 3, 'ABCD', 0.01, NULL, 'gauge', NULL),         -- 0xC55A V2
    ('socomec_countis_e2x', 50524, 'voltage_l3', 'V', 5, 3, 'ABCD', 0.01, NULL, 'gauge', NULL),         -- 0xC55C V3
    ('socomec_countis_e2x', 50526, 'frequency', 'Hz', 5, 3, 'ABCD', 0.001, NULL, 'gauge', NULL),        -- 0xC55E F
    ('socomec_countis_e2x', 50528, 'current_l1', 'A', 5, 3, 'ABCD', 0.001, NULL, 'gauge', NULL),        -- 0xC560 I1
    ('socomec_countis_e2x', 50530, 'current_l2', 'A', 5, 3, 'ABCD', 0.001, NULL, 'gauge', NULL),        -- 0xC562 I2
    ('socomec_countis_e2x', 50532, 'current_l3', 'A', 5, 3, 'ABCD', 0.001, NULL, 'gauge', NULL),        -- 0xC564 I3
    ('socomec_countis_e2x', 50536, 'active_power', 'W', 2, 3, 'ABCD', 10, NULL, 'gauge', NULL),         -- 0xC568 total P
    ('socomec_countis_e2x', 50538, 'reactive_power', 'var', 2, 3, 'ABCD', 10, NULL, 'gauge', NULL),     -- 0xC56A total Q
    ('socomec_countis_e2x', 50544, 'active_power_l1', 'W', 2, 3, 'ABCD', 10, NULL, 'gauge', NULL),      -- 0xC570 P1
    ('socomec_countis_e2x', 50546, 'active_power_l2', 'W', 2, 3, 'ABCD', 10, NULL, 'gauge', NULL),      -- 0xC572 P2
    ('socomec_countis_e2x', 50548, 'active_power_l3', 'W', 2, 3, 'ABCD', 10, NULL, 'gauge', NULL),      -- 0xC574 P3
    ('socomec_countis_e2x', 50550, 'reactive_power_l1', 'var', 2, 3, 'ABCD', 10, NULL, 'gauge', NULL),  -- 0xC576 Q1
    ('socomec_countis_e2x', 50552, 'reactive_power_l2', 'var', 2, 3, 'ABCD', 10, NULL, 'gauge', NULL),  -- 0xC578 Q2
    ('socomec_countis_e2x', 50554, 'reactive_power_l3', 'var', 2, 3, 'ABCD', 10, NULL, 'gauge', NULL),  -- 0xC57A Q3
    ('socomec_countis_e2x', 50946, 'energy_import', 'kWh', 5, 3, 'ABCD', 0.01, NULL, 'counter', NULL),  -- 0xC702 active energy +
    ('socomec_countis_e2x', 50952, 'energy_export', 'kWh', 5, 3, 'ABCD', 0.01, NULL, 'counter', NULL);  -- 0xC708 active energy -

DELETE FROM device_signatures WHERE type = 'socomec_countis_e2x';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('socomec_countis_e2x', 50000, 3, 5, 'ABCD', 1, 5439567, 5439567, 'Socomec identifier ''SO'' (0xC350: 0x0053, 0x004F)'),
    ('socomec_countis_e2x', 50002, 3, 5, 'ABCD', 1, 4390991, 4390991, 'Socomec identifier ''CO'' (0xC352: 0x0043, 0x004F)'),
    ('socomec_countis_e2x', 50520, 3, 5, 'ABCD', 0.01, 100, 300, 'voltage V1, 0.01 V (0xC558), plausible 100..300 V');

COMMIT;
