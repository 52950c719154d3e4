-- ABB A41, A43, A44 (EQ meters A-series with RS485 Modbus: A43 three-phase direct
-- connected up to 80 A, A44 three-phase connected through current (and optionally
-- voltage) transformers, A41 single phase)
--
-- Source: ABB, "A43/A44 User Manual", document 2CMC484001M0201 Revision C,
--         2018-09-26, chapter 9 "Communication with Modbus" (published by ABB; the
--         copies read here are the page images on manualshive.com / easymanua.ls,
--         "ABB A43 User Manual"):
--         p. 12 meter types: "Direct connected meters for currents up to maximum
--         80A" and "Transformer connected meters for currents > 80A";
--         p. 108 "Total energy accumulators": active import 5000h, active export
--         5004h, reactive import 500Ch, reactive export 5010h, each 4 registers,
--         0,01 kWh / kvarh, unsigned; and the note that the start register "is
--         expressed exactly as it is sent on the bus. That is, it should not be
--         subtracted by 40 000 or decremented by 1";
--         p. 112: power factor L3 5B3Dh (1 register, 0,001, signed), quadrants
--         5B3Eh.., and "Powers are sent out as 32 bit signed integers, expressed in
--         W (or var/VA) with 2 decimals";
--         p. 113 "Production data and identification": serial number 8900h,
--         firmware 8908h, "Type designation 8960h, 6 registers, ASCII string (12
--         characters, including null termination)";
--         p. 169 a read of 5460h..: L1, L2, L3 active import, then L1, L2, L3
--         active export, 4 registers each (the per-phase accumulators below).
--         The pages with the instantaneous values (5B00h..) were not available;
--         those addresses come from the implementations below. The A41 (single
--         phase) has a manual of its own, not read here; it is in this family because
--         mbmd reads every A- and B-series meter with one producer, and its L2/L3 values
--         read "not available" as the B21's do.
-- Cross-checked: volkszaehler/mbmd meters/rs485/abb.go (ABBProducer, "ABB A/B-Series
--         meters": every address below except the reactive energies, with types and
--         divisors: V uint32/10, A uint32/100, W int32/100, Hz uint16/100, PF int16/1000,
--         kWh uint64/100) and victronenergy/dbus-modbus-client abb.py (the same values
--         for the B-series, which shares the A-series mapping, and the type designation
--         at 0x8960 read as uint32 for the model). The manual and both agree on every
--         address they share.
-- Versus abb_b2x.sql: the B21/B23/B24 answer the same registers (mbmd reads both
--         series with one producer); they differ only in the type designation, "B2x"
--         there and "A4x" here. The two files therefore carry the same values (this one
--         adds the reactive energies the A43/A44 manual documents) and the signatures
--         tell them apart by the model register alone.
-- Function code: 3 (read holding registers); the manual's mapping is read only.
-- Data types: big-endian (ABCD) integers: uint32 V / 10 and A / 100, int32 W / 100,
--         uint16 Hz / 100, int16 PF / 1000, uint64 kWh and kvarh / 100. A value the meter
--         does not have (L2/L3 of an A41) reads all-ones (unsigned) or 0x7FFF... (signed),
--         which mbmd turns into NaN: not_available here.
-- Addresses: the hexadecimal start register of the manual, sent unchanged
--         (0x5B00 = 23296).
-- Unit id: the meter's Modbus address, set on the meter (victronenergy probes 1 and 2).
--         Serial settings are set on the meter; the poller needs only the gateway.
-- Request limits: mbmd reads one value per request, victronenergy packs the registers
--         itself; the manual's own example reads 60 registers at 5460h in one request.
--         None states a smaller limit, so the planner's maximum (125) applies, with gaps
--         of up to 16 registers inside the documented blocks read and discarded:
--             fc3 20480..20499 (0x5000..0x5013), fc3 21600..21623 (0x5460..0x5477),
--             fc3 23296..23357 (0x5B00..0x5B3D).
-- Counters: energy_* totals are kind 'counter'. counter_max_rate is NULL: the family
--         includes the A44, whose primary current is the transformer ratio set on the
--         meter. (A direct A43 alone, 80 A: 3 x 276 V x 80 A = 66.2 kW = 0.0184 kWh/s,
--         twice that 0.037 kWh/s; an operator may set that on a copy of the map.)
-- Signature: holding 0x8960 read as uint32 (the first four characters of the type
--         designation, as victronenergy reads it for "B21 ".."B24 ") between "A4" 0x00 0x00
--         and "A4" 0xFF 0xFF, i.e. 0x41340000..0x4134FFFF: any A4x type, whatever follows
--         the digits; the B-series ("B2..", 0x4232....) is outside. Plus L1 voltage
--         100..300 V at 0x5B00.
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/abb_a4x.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('abb_a4x',
        'ABB A41/A43/A44 meters (holding registers, scaled integers, 0x5000/0x5460/0x5B00 blocks)',
        125, 16, 3, 0)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'abb_a4x';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code,
                       byte_order, scale, not_available, kind, counter_max_rate) VALUES
    -- instantaneous values (0x5Bxx); unsigned 0xFFFF... and signed 0x7FFF... mean 'not available'
    ('abb_a4x', 23296, 'voltage_l1', 'V', 5, 3, 'ABCD', 0.1, 4294967295, 'gauge', NULL),                       -- 0x5B00 L1-N, 0.1 V
    ('abb_a4x', 23298, 'voltage_l2', 'V', 5, 3, 'ABCD', 0.1, 4294967295, 'gauge', NULL),                       -- 0x5B02 (A41: not available)
    ('abb_a4x', 23300, 'voltage_l3', 'V', 5, 3, 'ABCD', 0.1, 4294967295, 'gauge', NULL),                       -- 0x5B04
    ('abb_a4x', 23308, 'current_l1', 'A', 5, 3, 'ABCD', 0.01, 4294967295, 'gauge', NULL),                      -- 0x5B0C 0.01 A
    ('abb_a4x', 23310, 'current_l2', 'A', 5, 3, 'ABCD', 0.01, 4294967295, 'gauge', NULL),                      -- 0x5B0E
    ('abb_a4x', 23312, 'current_l3', 'A', 5, 3, 'ABCD', 0.01, 4294967295, 'gauge', NULL),                      -- 0x5B10
    ('abb_a4x', 23316, 'active_power', 'W', 2, 3, 'ABCD', 0.01, 2147483647, 'gauge', NULL),                    -- 0x5B14 total, 0.01 W
    ('abb_a4x', 23318, 'active_power_l1', 'W', 2, 3, 'ABCD', 0.01, 2147483647, 'gauge', NULL),                 -- 0x5B16
    ('abb_a4x', 23320, 'active_power_l2', 'W', 2, 3, 'ABCD', 0.01, 2147483647, 'gauge', NULL),                 -- 0x5B18
    ('abb_a4x', 23322, 'active_power_l3', 'W', 2, 3, 'ABCD', 0.01, 2147483647, 'gauge', NULL),                 -- 0x5B1A
    ('abb_a4x', 23340, 'frequency', 'Hz', 4, 3, 'ABCD', 0.01, 65535, 'gauge', NULL),                           -- 0x5B2C 0.01 Hz
    ('abb_a4x', 23354, 'power_factor', NULL, 1, 3, 'ABCD', 0.001, 32767, 'gauge', NULL),                       -- 0x5B3A total, 0.001
    ('abb_a4x', 23355, 'power_factor_l1', NULL, 1, 3, 'ABCD', 0.001, 32767, 'gauge', NULL),                    -- 0x5B3B
    ('abb_a4x', 23356, 'power_factor_l2', NULL, 1, 3, 'ABCD', 0.001, 32767, 'gauge', NULL),                    -- 0x5B3C
    ('abb_a4x', 23357, 'power_factor_l3', NULL, 1, 3, 'ABCD', 0.001, 32767, 'gauge', NULL),                    -- 0x5B3D (manual p. 112)
    -- total energy accumulators (0x50xx, manual p. 108): uint64, 0.01 kWh / kvarh
    ('abb_a4x', 20480, 'energy_import', 'kWh', 7, 3, 'ABCD', 0.01, 18446744073709551615, 'counter', NULL),              -- 0x5000 active import
    ('abb_a4x', 20484, 'energy_export', 'kWh', 7, 3, 'ABCD', 0.01, 18446744073709551615, 'counter', NULL),              -- 0x5004 active export
    ('abb_a4x', 20492, 'energy_reactive_import', 'kvarh', 7, 3, 'ABCD', 0.01, 18446744073709551615, 'counter', NULL),   -- 0x500C reactive import
    ('abb_a4x', 20496, 'energy_reactive_export', 'kvarh', 7, 3, 'ABCD', 0.01, 18446744073709551615, 'counter', NULL),   -- 0x5010 reactive export
    -- per-phase accumulators (0x54xx, manual p. 169 example): uint64, 0.01 kWh
    ('abb_a4x', 21600, 'energy_import_l1', 'kWh', 7, 3, 'ABCD', 0.01, 18446744073709551615, 'counter', NULL),  -- 0x5460
    ('abb_a4x', 21604, 'energy_import_l2', 'kWh', 7, 3, 'ABCD', 0.01, 18446744073709551615, 'counter', NULL),  -- 0x5464
    ('abb_a4x', 21608, 'energy_import_l3', 'kWh', 7, 3, 'ABCD', 0.01, 18446744073709551615, 'counter', NULL),  -- 0x5468
    ('abb_a4x', 21612, 'energy_export_l1', 'kWh', 7, 3, 'ABCD', 0.01, 18446744073709551615, 'counter', NULL),  -- 0x546C
    ('abb_a4x', 21616, 'energy_export_l2', 'kWh', 7, 3, 'ABCD', 0.01, 18446744073709551615, 'counter', NULL),  -- 0x5470
    ('abb_a4x', 21620, 'energy_export_l3', 'kWh', 7, 3, 'ABCD', 0.01, 18446744073709551615, 'counter', NULL);  -- 0x5474

DELETE FROM device_signatures WHERE type = 'abb_a4x';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('abb_a4x', 35168, 3, 5, 'ABCD', 1, 1093926912, 1093992447, 'type designation starts ''A4'' in ASCII (0x8960: 0x4134xxxx), A41/A43/A44'),
    ('abb_a4x', 23296, 3, 5, 'ABCD', 0.1, 100, 300, 'voltage L1-N, V (0x5B00), plausible mains 100..300 V');

COMMIT;
