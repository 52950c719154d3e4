-- Eastron SDM72D-M v2 (three-phase, four-wire DIN-rail energy meter, MID)
--
-- Source: Eastron, "SDM72D-M-2 (SDM72DM-V2) User Manual", part "Modbus Protocol"
--         (input register table, function code 04), published by Eastron and
--         its distributor B+G e-tech (eastron-germany.de); the copy cited by
--         mbmd is https://stromzähler.eu/media/5f/b6/aa/1696582672/sdm72dm-v2.pdf
-- Cross-checked: volkszaehler/mbmd meters/rs485/sdm72v2.go (SDM72V2Producer)
--         and nmakel/sdm_modbus src/sdm_modbus/sdm.py (class SDM72V2).
-- Function code: 4 (read input registers). Holding registers are settings only.
-- Data type: IEEE-754 float32, big-endian (ABCD); V, A, W, VA, var, Hz,
--         energies in kWh / kvarh. No scaling.
-- Addresses: register_address is the hex start address of the table, the
--         0-based address on the wire ("30001" -> 0, "31281" -> 0x0500 = 1280).
-- Unit id: the meter's MODBUS address (default 001). Serial settings (baud
--         rate, parity) are set in the meter's setup menu and must match the
--         gateway; nmakel/sdm_modbus assumes 9600 baud for the SDM72 v2.
-- Wiring: RS485 A/B to a Modbus TCP gateway, 120 ohm termination at the bus
--         ends; energy_meters.slave_address is the meter's RS485 address.
-- Request limits: the SDM72D-M manual states "each request for data must be
--         restricted to 30 parameters or less", so max_block is 60 registers
--         (30 float32). Gaps up to 16 registers inside the documented range are
--         read and discarded.
-- Version: this is the v2 map (SDM72D-M-2 / SDM72DM-V2, meter code 0x0089); the
--         first SDM72D-M (manual V1.5, meter code 0x0084) lacks 0x0500/0x0502 and
--         the line-to-line values and is not this family. Every address below was
--         checked against the input register table of the V1.1 manual (pages 12-14).
-- Counters: energy_* totals are kind 'counter'. counter_max_rate: direct
--         connection, "Max. Current (Imax) 100A AC" (manual V1.1, specifications);
--         3 phases * 276 V (1.2 x 230 V) * 100 A = 82.8 kW = 0.023 kWh/s; twice
--         that as the limit: 0.046 kWh/s (kvarh alike).
-- Signature: holding register 0xFC02 (464515) "Meter code SDM72D-M = 00 89"
--         (manual V1.1, page 16; Tinkerforge evse-v2-bricklet meter_eastron.c reads
--         the same register: 0x0089 SDM72V2, 0x0084 SDM72 v1), with L1 voltage and
--         frequency in mains ranges.
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/eastron_sdm72.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('eastron_sdm72',
        'Eastron SDM72D-M v2 three-phase meter (input registers, float32)',
        60, 16, 3, 0)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'eastron_sdm72';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code,
                       byte_order, scale, not_available, kind, counter_max_rate) VALUES
    ('eastron_sdm72', 0, 'voltage_l1', 'V', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                      -- 0x0000
    ('eastron_sdm72', 2, 'voltage_l2', 'V', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                      -- 0x0002
    ('eastron_sdm72', 4, 'voltage_l3', 'V', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                      -- 0x0004
    ('eastron_sdm72', 6, 'current_l1', 'A', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                      -- 0x0006
    ('eastron_sdm72', 8, 'current_l2', 'A', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                      -- 0x0008
    ('eastron_sdm72', 10, 'current_l3', 'A', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                     -- 0x000A
    ('eastron_sdm72', 12, 'active_power_l1', 'W', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                -- 0x000C
    ('eastron_sdm72', 14, 'active_power_l2', 'W', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                -- 0x000E
    ('eastron_sdm72', 16, 'active_power_l3', 'W', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                -- 0x0010
    ('eastron_sdm72', 18, 'apparent_power_l1', 'VA', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),             -- 0x0012
    ('eastron_sdm72', 20, 'apparent_power_l2', 'VA', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),             -- 0x0014
    ('eastron_sdm72', 22, 'apparent_power_l3', 'VA', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),             -- 0x0016
    ('eastron_sdm72', 24, 'reactive_power_l1', 'var', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),            -- 0x0018
    ('eastron_sdm72', 26, 'reactive_power_l2', 'var', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),            -- 0x001A
    ('eastron_sdm72', 28, 'reactive_power_l3', 'var', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),            -- 0x001C
    ('eastron_sdm72', 30, 'power_factor_l1', NULL, 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),               -- 0x001E
    ('eastron_sdm72', 32, 'power_factor_l2', NULL, 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),               -- 0x0020
    ('eastron_sdm72', 34, 'power_factor_l3', NULL, 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),               -- 0x0022
    ('eastron_sdm72', 42, 'voltage_ln_average', 'V', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),             -- 0x002A
    ('eastron_sdm72', 46, 'current_average', 'A', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                -- 0x002E
    ('eastron_sdm72', 48, 'current_total', 'A', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                  -- 0x0030 sum of line currents
    ('eastron_sdm72', 52, 'active_power', 'W', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                   -- 0x0034
    ('eastron_sdm72', 56, 'apparent_power', 'VA', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                -- 0x0038
    ('eastron_sdm72', 60, 'reactive_power', 'var', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),               -- 0x003C
    ('eastron_sdm72', 62, 'power_factor', NULL, 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                  -- 0x003E
    ('eastron_sdm72', 70, 'frequency', 'Hz', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                     -- 0x0046
    ('eastron_sdm72', 72, 'energy_import', 'kWh', 3, 4, 'ABCD', 1, NULL, 'counter', 0.046),             -- 0x0048
    ('eastron_sdm72', 74, 'energy_export', 'kWh', 3, 4, 'ABCD', 1, NULL, 'counter', 0.046),             -- 0x004A
    ('eastron_sdm72', 200, 'voltage_l1_l2', 'V', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                 -- 0x00C8
    ('eastron_sdm72', 202, 'voltage_l2_l3', 'V', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                 -- 0x00CA
    ('eastron_sdm72', 204, 'voltage_l3_l1', 'V', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                 -- 0x00CC
    ('eastron_sdm72', 206, 'voltage_ll_average', 'V', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),            -- 0x00CE
    ('eastron_sdm72', 224, 'current_neutral', 'A', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),               -- 0x00E0
    ('eastron_sdm72', 342, 'energy_total', 'kWh', 3, 4, 'ABCD', 1, NULL, 'counter', 0.046),             -- 0x0156 import + export
    ('eastron_sdm72', 344, 'energy_reactive_total', 'kvarh', 3, 4, 'ABCD', 1, NULL, 'counter', 0.046),  -- 0x0158
    ('eastron_sdm72', 1280, 'active_power_import', 'W', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),          -- 0x0500 total import power
    ('eastron_sdm72', 1282, 'active_power_export', 'W', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL);          -- 0x0502 total export power

DELETE FROM device_signatures WHERE type = 'eastron_sdm72';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('eastron_sdm72', 64514, 3, 4, 'ABCD', 1, 137, 137, 'meter code 0x0089 = SDM72D-M v2 (holding 464515, FC02h)'),
    ('eastron_sdm72', 0, 4, 3, 'ABCD', 1, 100, 300, 'voltage L1-N, V (30001), plausible mains 100..300 V'),
    ('eastron_sdm72', 70, 4, 3, 'ABCD', 1, 45, 65, 'frequency, Hz (30071), plausible 45..65 Hz');

COMMIT;
