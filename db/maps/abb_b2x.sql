-- ABB B21, B23, B24 (EQ meters B-series with RS485 Modbus: B21 single phase,
-- B23 three-phase direct connected, B24 three-phase CT connected)
--
-- Source: ABB's B-series manual as published by Stark Elektronik, "Energiezaehler
--         B-Serie Handbuch" (datenblatt.stark-elektronik.de/Energiezaehler_B-Serie_Handbuch.pdf),
--         the document mbmd cites. It was not read directly here: every address
--         below is taken from the two implementations that follow and is in both.
-- Cross-checked: volkszaehler/mbmd meters/rs485/abb.go (ABBProducer: addresses,
--         types and divisors) and victronenergy/dbus-modbus-client abb.py
--         (ABB_Meter_1P for the B21, ABB_Meter_3P for B23/B24: the same addresses
--         and divisors, and the model register 0x8960 used for the signature).
--         The two agree on every value below.
-- Function code: 3 (read holding registers), as both implementations read.
-- Data types: big-endian (ABCD) unsigned/signed integers with fixed divisors:
--         V uint32 / 10, A uint32 / 100, W int32 / 100, Hz uint16 / 100, PF int16
--         / 1000, energies uint64 / 100 kWh. A value the meter does not have (L2/L3
--         of a B21) reads as all-ones (unsigned) or 0x7FFF... (signed), which mbmd
--         turns into NaN: those are not_available here, so nothing is written.
-- Addresses: the manual's register numbers are the hex addresses sent on the wire
--         (0x5B00 = 23296); register_address is that number.
-- Unit id: the meter's Modbus address (set on the display; victronenergy probes 1
--         and 2). Serial settings on the display; the poller needs only the gateway.
-- Request limits: the sources read one value per request (mbmd) or pack the
--         registers themselves (victron); none states a limit, so the planner's
--         Modbus maximum (125) applies, and gaps of up to 16 registers inside these
--         documented blocks are read and discarded.
-- Versus the A-series: the ABB A41/A43/A44 share the 0x5xxx layout but carry
--         "A4x" in the model register; the signature below asks for "B21 ".."B24 ".
-- Counters: energy_* totals are kind 'counter'; counter_max_rate is NULL because
--         the family includes the B24, whose primary current is the CT ratio set on
--         the device (a direct B21/B23 operator may set a rate on a copy of the map).
-- Signature: holding 0x8960 (uint32) holds the type designation in ASCII, "B21 " =
--         0x42323120, "B23 " = 0x42323320, "B24 " = 0x42323420 (victronenergy
--         abb.py `models`); the family matches "B21 ".."B24 ", and L1 voltage 100..300 V.
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/abb_b2x.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('abb_b2x',
        'ABB B21/B23/B24 meters (holding registers, scaled integers, 0x5000/0x5B00 blocks)',
        125, 16, 3, 0)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'abb_b2x';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code,
                       byte_order, scale, not_available, kind, counter_max_rate) VALUES
    -- instantaneous values (0x5Bxx), unsigned values 0xFFFF... and signed 0x7FFF... mean 'not available'
    ('abb_b2x', 23296, 'voltage_l1', 'V', 5, 3, 'ABCD', 0.1, 4294967295, 'gauge', NULL),                       -- 0x5B00 L1-N, 0.1 V
    ('abb_b2x', 23298, 'voltage_l2', 'V', 5, 3, 'ABCD', 0.1, 4294967295, 'gauge', NULL),                       -- 0x5B02 (B21: not available)
    ('abb_b2x', 23300, 'voltage_l3', 'V', 5, 3, 'ABCD', 0.1, 4294967295, 'gauge', NULL),                       -- 0x5B04
    ('abb_b2x', 23308, 'current_l1', 'A', 5, 3, 'ABCD', 0.01, 4294967295, 'gauge', NULL),                      -- 0x5B0C 0.01 A
    ('abb_b2x', 23310, 'current_l2', 'A', 5, 3, 'ABCD', 0.01, 4294967295, 'gauge', NULL),                      -- 0x5B0E
    ('abb_b2x', 23312, 'current_l3', 'A', 5, 3, 'ABCD', 0.01, 4294967295, 'gauge', NULL),                      -- 0x5B10
    ('abb_b2x', 23316, 'active_power', 'W', 2, 3, 'ABCD', 0.01, 2147483647, 'gauge', NULL),                    -- 0x5B14 total, 0.01 W
    ('abb_b2x', 23318, 'active_power_l1', 'W', 2, 3, 'ABCD', 0.01, 2147483647, 'gauge', NULL),                 -- 0x5B16
    ('abb_b2x', 23320, 'active_power_l2', 'W', 2, 3, 'ABCD', 0.01, 2147483647, 'gauge', NULL),                 -- 0x5B18
    ('abb_b2x', 23322, 'active_power_l3', 'W', 2, 3, 'ABCD', 0.01, 2147483647, 'gauge', NULL),                 -- 0x5B1A
    ('abb_b2x', 23340, 'frequency', 'Hz', 4, 3, 'ABCD', 0.01, 65535, 'gauge', NULL),                           -- 0x5B2C 0.01 Hz
    ('abb_b2x', 23354, 'power_factor', NULL, 1, 3, 'ABCD', 0.001, 32767, 'gauge', NULL),                       -- 0x5B3A total, 0.001
    ('abb_b2x', 23355, 'power_factor_l1', NULL, 1, 3, 'ABCD', 0.001, 32767, 'gauge', NULL),                    -- 0x5B3B
    ('abb_b2x', 23356, 'power_factor_l2', NULL, 1, 3, 'ABCD', 0.001, 32767, 'gauge', NULL),                    -- 0x5B3C
    ('abb_b2x', 23357, 'power_factor_l3', NULL, 1, 3, 'ABCD', 0.001, 32767, 'gauge', NULL),                    -- 0x5B3D
    -- energy registers (0x50xx totals, 0x54xx per phase): uint64, 0.01 kWh
    ('abb_b2x', 20480, 'energy_import', 'kWh', 7, 3, 'ABCD', 0.01, 18446744073709551615, 'counter', NULL),     -- 0x5000 active import
    ('abb_b2x', 20484, 'energy_export', 'kWh', 7, 3, 'ABCD', 0.01, 18446744073709551615, 'counter', NULL),     -- 0x5004 active export
    ('abb_b2x', 21600, 'energy_import_l1', 'kWh', 7, 3, 'ABCD', 0.01, 18446744073709551615, 'counter', NULL),  -- 0x5460
    ('abb_b2x', 21604, 'energy_import_l2', 'kWh', 7, 3, 'ABCD', 0.01, 18446744073709551615, 'counter', NULL),  -- 0x5464
    ('abb_b2x', 21608, 'energy_import_l3', 'kWh', 7, 3, 'ABCD', 0.01, 18446744073709551615, 'counter', NULL),  -- 0x5468
    ('abb_b2x', 21612, 'energy_export_l1', 'kWh', 7, 3, 'ABCD', 0.01, 18446744073709551615, 'counter', NULL),  -- 0x546C
    ('abb_b2x', 21616, 'energy_export_l2', 'kWh', 7, 3, 'ABCD', 0.01, 18446744073709551615, 'counter', NULL),  -- 0x5470
    ('abb_b2x', 21620, 'energy_export_l3', 'kWh', 7, 3, 'ABCD', 0.01, 18446744073709551615, 'counter', NULL);  -- 0x5474

DELETE FROM device_signatures WHERE type = 'abb_b2x';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('abb_b2x', 35168, 3, 5, 'ABCD', 1, 1110585632, 1110586400, 'type designation ''B21 ''..''B24 '' in ASCII (0x8960)'),
    ('abb_b2x', 23296, 3, 5, 'ABCD', 0.1, 100, 300, 'voltage L1-N, V (0x5B00), plausible mains 100..300 V');

COMMIT;
