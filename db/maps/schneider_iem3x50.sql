-- Schneider Electric iEM3150 / iEM3250 / iEM3350 (iEM3000 series with Modbus:
-- iEM3150 direct 63 A, iEM3250 CT connected, iEM3350 direct 125 A)
--
-- Source: Schneider Electric, "iEM3100 / iEM3200 / iEM3300 series Energy meters
--         User manual" DOCA0005 (download.schneider-electric.com, the document
--         mbmd cites: DOCA0005DE-12, Modbus register table from page 49). Not read
--         directly here: the addresses below are taken from the implementation that
--         follows.
-- Cross-checked: volkszaehler/mbmd meters/rs485/iem3000.go (IEM3000Producer) and
--         evcc-io/evcc templates/definition/meter/schneider-iem3000.yaml ("iEM3xxx
--         Modbus", which reads through that producer). Only one independent reading
--         of the addresses exists in the sources found; see db/maps/README.md.
-- Function code: 3 (read holding registers).
-- Data types: float32 big-endian (ABCD) for V, A, kW, kvar, kVA, Hz (powers are
--         kW in the meter: scale 1000 gives W); energies int64 big-endian in Wh
--         (mbmd divides by 1000 for kWh; here they stay Wh).
-- Addresses: the manual lists 1-based register numbers (3028 = voltage L1-N);
--         register_address is the number minus one, the address on the wire
--         (3027 = 0x0BD3), as mbmd sends them.
-- Unit id: the meter's Modbus address (1..247, set on the display). RS485
--         settings on the display.
-- Request limits: not stated in the sources; Modbus maximum 125, gaps up to 16
--         registers read and discarded inside the documented blocks.
-- Counters: energy_* totals are kind 'counter', counter_max_rate NULL: the family
--         includes the CT-connected iEM3250, whose primary current is configured.
-- Signature: no identification register is given by the sources found (the
--         manual's meter name/model text registers were not verifiable here); the
--         family is recognised by float L1 voltage (3027) and frequency (3109) in
--         mains ranges.
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/schneider_iem3x50.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('schneider_iem3x50',
        'Schneider Electric iEM3150/iEM3250/iEM3350 meters (holding registers, float32 and int64 Wh)',
        125, 16, 3, 0)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'schneider_iem3x50';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code,
                       byte_order, scale, not_available, kind, counter_max_rate) VALUES
    ('schneider_iem3x50', 2999, 'current_l1', 'A', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),                   -- 0x0BB7 (register 3000)
    ('schneider_iem3x50', 3001, 'current_l2', 'A', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),                   -- 0x0BB9
    ('schneider_iem3x50', 3003, 'current_l3', 'A', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),                   -- 0x0BBB
    ('schneider_iem3x50', 3009, 'current_average', 'A', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),              -- 0x0BC1 average current
    ('schneider_iem3x50', 3027, 'voltage_l1', 'V', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),                   -- 0x0BD3 (register 3028) L1-N
    ('schneider_iem3x50', 3029, 'voltage_l2', 'V', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),                   -- 0x0BD5
    ('schneider_iem3x50', 3031, 'voltage_l3', 'V', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),                   -- 0x0BD7
    ('schneider_iem3x50', 3035, 'voltage_ln_average', 'V', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),           -- 0x0BDB
    ('schneider_iem3x50', 3053, 'active_power_l1', 'W', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),           -- 0x0BED kW
    ('schneider_iem3x50', 3055, 'active_power_l2', 'W', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),           -- 0x0BEF
    ('schneider_iem3x50', 3057, 'active_power_l3', 'W', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),           -- 0x0BF1
    ('schneider_iem3x50', 3059, 'active_power', 'W', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),              -- 0x0BF3 total
    ('schneider_iem3x50', 3067, 'reactive_power', 'var', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),          -- 0x0BFB total, kvar
    ('schneider_iem3x50', 3075, 'apparent_power', 'VA', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),           -- 0x0C03 total, kVA
    ('schneider_iem3x50', 3109, 'frequency', 'Hz', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),                   -- 0x0C25
    ('schneider_iem3x50', 3203, 'energy_import', 'Wh', 6, 3, 'ABCD', 1, NULL, 'counter', NULL),             -- 0x0C83 total active energy import
    ('schneider_iem3x50', 3207, 'energy_export', 'Wh', 6, 3, 'ABCD', 1, NULL, 'counter', NULL),             -- 0x0C87 total active energy export
    ('schneider_iem3x50', 3219, 'energy_reactive_import', 'varh', 6, 3, 'ABCD', 1, NULL, 'counter', NULL),  -- 0x0C93
    ('schneider_iem3x50', 3223, 'energy_reactive_export', 'varh', 6, 3, 'ABCD', 1, NULL, 'counter', NULL),  -- 0x0C97
    ('schneider_iem3x50', 3517, 'energy_import_l1', 'Wh', 6, 3, 'ABCD', 1, NULL, 'counter', NULL),          -- 0x0DBD
    ('schneider_iem3x50', 3521, 'energy_import_l2', 'Wh', 6, 3, 'ABCD', 1, NULL, 'counter', NULL),          -- 0x0DC1
    ('schneider_iem3x50', 3525, 'energy_import_l3', 'Wh', 6, 3, 'ABCD', 1, NULL, 'counter', NULL);          -- 0x0DC5

DELETE FROM device_signatures WHERE type = 'schneider_iem3x50';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('schneider_iem3x50', 3027, 3, 3, 'ABCD', 1, 100, 300, 'voltage L1-N, V (register 3028), plausible 100..300 V'),
    ('schneider_iem3x50', 3109, 3, 3, 'ABCD', 1, 45, 65, 'frequency, Hz (register 3110), plausible 45..65 Hz');

COMMIT;
