-- Chint DTSU666 three-phase meter (and the DTSU666-H that Huawei ships with its
-- inverters: the same Chint protocol; the Huawei variant was not checked against a
-- Huawei document)
--
-- Source: Chint, "DTSU666 DSSU666 User Manual" (chintglobal.com, product center,
--         din-rail-meter/dtsu666/manual), Modbus register table; the document mbmd
--         cites. Not read directly here: the addresses and divisors are mbmd's.
-- Cross-checked: volkszaehler/mbmd meters/rs485/dtsu666.go (DTSU666Producer).
--         Only one independent reading of the map exists in the sources found.
-- Function code: 3 (read holding registers).
-- Data type: IEEE-754 float32 big-endian (ABCD) holding fixed-point numbers:
--         V / 10, A / 1000, W and var / 10, PF / 1000, Hz / 100 (mbmd's divisors,
--         here as scale); energies in kWh, unscaled.
-- Addresses: the manual's hex addresses are the wire addresses (0x2006 = L1 voltage).
-- Unit id: the meter's address (default 1); RS485 9600 baud by default.
-- Request limits: not stated; Modbus maximum 125, gaps up to 16 registers read
--         and discarded inside the documented 0x2000 and 0x1000 blocks.
-- Counters: kind 'counter', counter_max_rate NULL: DTSU666 variants are CT
--         connected (the Huawei DTSU666-H with 250 A / 50 mA CTs), ratio set on
--         the meter.
-- Signature: no identification register in the sources; L1 voltage (0x2006) and
--         frequency (0x2044) in mains ranges, in the meter's own fixed-point floats
--         (a float meter with plain volts at 0x2006 reads 10 x too small and fails).
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/chint_dtsu666.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('chint_dtsu666',
        'Chint DTSU666 / DTSU666-H three-phase meter (holding registers, scaled float32)',
        125, 16, 3, 0)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'chint_dtsu666';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code,
                       byte_order, scale, not_available, kind, counter_max_rate) VALUES
    ('chint_dtsu666', 8198, 'voltage_l1', 'V', 3, 3, 'ABCD', 0.1, NULL, 'gauge', NULL),           -- 0x2006 Ua
    ('chint_dtsu666', 8200, 'voltage_l2', 'V', 3, 3, 'ABCD', 0.1, NULL, 'gauge', NULL),           -- 0x2008 Ub
    ('chint_dtsu666', 8202, 'voltage_l3', 'V', 3, 3, 'ABCD', 0.1, NULL, 'gauge', NULL),           -- 0x200A Uc
    ('chint_dtsu666', 8204, 'current_l1', 'A', 3, 3, 'ABCD', 0.001, NULL, 'gauge', NULL),         -- 0x200C Ia
    ('chint_dtsu666', 8206, 'current_l2', 'A', 3, 3, 'ABCD', 0.001, NULL, 'gauge', NULL),         -- 0x200E
    ('chint_dtsu666', 8208, 'current_l3', 'A', 3, 3, 'ABCD', 0.001, NULL, 'gauge', NULL),         -- 0x2010
    ('chint_dtsu666', 8210, 'active_power', 'W', 3, 3, 'ABCD', 0.1, NULL, 'gauge', NULL),         -- 0x2012 Pt
    ('chint_dtsu666', 8212, 'active_power_l1', 'W', 3, 3, 'ABCD', 0.1, NULL, 'gauge', NULL),      -- 0x2014
    ('chint_dtsu666', 8214, 'active_power_l2', 'W', 3, 3, 'ABCD', 0.1, NULL, 'gauge', NULL),      -- 0x2016
    ('chint_dtsu666', 8216, 'active_power_l3', 'W', 3, 3, 'ABCD', 0.1, NULL, 'gauge', NULL),      -- 0x2018
    ('chint_dtsu666', 8218, 'reactive_power', 'var', 3, 3, 'ABCD', 0.1, NULL, 'gauge', NULL),     -- 0x201A Qt
    ('chint_dtsu666', 8220, 'reactive_power_l1', 'var', 3, 3, 'ABCD', 0.1, NULL, 'gauge', NULL),  -- 0x201C
    ('chint_dtsu666', 8222, 'reactive_power_l2', 'var', 3, 3, 'ABCD', 0.1, NULL, 'gauge', NULL),  -- 0x201E
    ('chint_dtsu666', 8224, 'reactive_power_l3', 'var', 3, 3, 'ABCD', 0.1, NULL, 'gauge', NULL),  -- 0x2020
    ('chint_dtsu666', 8234, 'power_factor', NULL, 3, 3, 'ABCD', 0.001, NULL, 'gauge', NULL),      -- 0x202A PFt
    ('chint_dtsu666', 8236, 'power_factor_l1', NULL, 3, 3, 'ABCD', 0.001, NULL, 'gauge', NULL),   -- 0x202C
    ('chint_dtsu666', 8238, 'power_factor_l2', NULL, 3, 3, 'ABCD', 0.001, NULL, 'gauge', NULL),   -- 0x202E
    ('chint_dtsu666', 8240, 'power_factor_l3', NULL, 3, 3, 'ABCD', 0.001, NULL, 'gauge', NULL),   -- 0x2030
    ('chint_dtsu666', 8260, 'frequency', 'Hz', 3, 3, 'ABCD', 0.01, NULL, 'gauge', NULL),          -- 0x2044 Freq
    ('chint_dtsu666', 4126, 'energy_import', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),      -- 0x101E ImpEp
    ('chint_dtsu666', 4128, 'energy_import_l1', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),   -- 0x1020
    ('chint_dtsu666', 4130, 'energy_import_l2', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),   -- 0x1022
    ('chint_dtsu666', 4132, 'energy_import_l3', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),   -- 0x1024
    ('chint_dtsu666', 4136, 'energy_export', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),      -- 0x1028 ExpEp
    ('chint_dtsu666', 4138, 'energy_export_l1', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),   -- 0x102A
    ('chint_dtsu666', 4140, 'energy_export_l2', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),   -- 0x102C
    ('chint_dtsu666', 4142, 'energy_export_l3', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL);   -- 0x102E

DELETE FROM device_signatures WHERE type = 'chint_dtsu666';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('chint_dtsu666', 8198, 3, 3, 'ABCD', 0.1, 100, 300, 'voltage L1, 0.1 V as float (0x2006), plausible 100..300 V'),
    ('chint_dtsu666', 8260, 3, 3, 'ABCD', 0.01, 45, 65, 'frequency, 0.01 Hz as float (0x2044), plausible 45..65 Hz');

COMMIT;
