-- ORNO OR-WE-517 (and OR-WE-516), three-phase DIN-rail meter with RS485
--
-- Source: ORNO's OR-WE-516/517 register list as read by mbmd (the producer's
--         header cites the WE-514 document "Register description OR-WE-514&OR-WE-515"
--         from github.com/gituser-rk/orno-modbus-mqtt by mistake; the WE-517
--         addresses are its own). Not read directly here: the addresses are mbmd's.
-- Cross-checked: volkszaehler/mbmd meters/rs485/orno3p.go (ORNO3PProducer,
--         "ORNO WE-516 & WE-517") and evcc-io/evcc templates/definition/meter/orno.yaml
--         (OR-WE-516 / OR-WE-517 through that producer, serial "8E1"); a public
--         register file of the same meter gives L1 voltage at 0x000E as float32
--         big-endian too. One full reading of the map exists in the sources.
-- Function code: 3 (read holding registers).
-- Data type: IEEE-754 float32 big-endian (ABCD): V, A, Hz, PF as is; powers in
--         kW / kvar / kVA (scale 1000 gives W / var / VA); energies kWh / kvarh.
-- Addresses: hex wire addresses (0x000E = L1 voltage).
-- Unit id: the meter's address (default 1); serial 9600 8E1 (evcc's default).
-- Request limits: not stated; the values sit in two contiguous blocks
--         (0x000E..0x003B, 0x0100..0x012F), read as two requests.
-- Counters: energy_* totals are kind 'counter'; the rated current is not in the
--         sources cited, so counter_max_rate is NULL.
-- Signature: no identification register in the sources (0x0002 echoes the unit
--         id, which is not a fixed value); L1 voltage (0x000E) and frequency
--         (0x0014) as floats in mains ranges.
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/orno_we517.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('orno_we517',
        'ORNO OR-WE-516 / OR-WE-517 three-phase meter (holding registers, float32)',
        125, 16, 3, 0)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'orno_we517';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code,
                       byte_order, scale, not_available, kind, counter_max_rate) VALUES
    ('orno_we517', 14, 'voltage_l1', 'V', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),                     -- 0x000E
    ('orno_we517', 16, 'voltage_l2', 'V', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),                     -- 0x0010
    ('orno_we517', 18, 'voltage_l3', 'V', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),                     -- 0x0012
    ('orno_we517', 20, 'frequency', 'Hz', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),                     -- 0x0014
    ('orno_we517', 22, 'current_l1', 'A', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),                     -- 0x0016
    ('orno_we517', 24, 'current_l2', 'A', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),                     -- 0x0018
    ('orno_we517', 26, 'current_l3', 'A', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),                     -- 0x001A
    ('orno_we517', 28, 'active_power', 'W', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),                -- 0x001C total, kW
    ('orno_we517', 30, 'active_power_l1', 'W', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),             -- 0x001E
    ('orno_we517', 32, 'active_power_l2', 'W', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),             -- 0x0020
    ('orno_we517', 34, 'active_power_l3', 'W', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),             -- 0x0022
    ('orno_we517', 36, 'reactive_power', 'var', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),            -- 0x0024 total, kvar
    ('orno_we517', 38, 'reactive_power_l1', 'var', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),         -- 0x0026
    ('orno_we517', 40, 'reactive_power_l2', 'var', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),         -- 0x0028
    ('orno_we517', 42, 'reactive_power_l3', 'var', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),         -- 0x002A
    ('orno_we517', 44, 'apparent_power', 'VA', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),             -- 0x002C total, kVA
    ('orno_we517', 46, 'apparent_power_l1', 'VA', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),          -- 0x002E
    ('orno_we517', 48, 'apparent_power_l2', 'VA', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),          -- 0x0030
    ('orno_we517', 50, 'apparent_power_l3', 'VA', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),          -- 0x0032
    ('orno_we517', 52, 'power_factor', NULL, 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),                  -- 0x0034 total
    ('orno_we517', 54, 'power_factor_l1', NULL, 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),               -- 0x0036
    ('orno_we517', 56, 'power_factor_l2', NULL, 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),               -- 0x0038
    ('orno_we517', 58, 'power_factor_l3', NULL, 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),               -- 0x003A
    ('orno_we517', 256, 'energy_total', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),              -- 0x0100 total active energy
    ('orno_we517', 258, 'energy_total_l1', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),           -- 0x0102
    ('orno_we517', 260, 'energy_total_l2', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),           -- 0x0104
    ('orno_we517', 262, 'energy_total_l3', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),           -- 0x0106
    ('orno_we517', 264, 'energy_import', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),             -- 0x0108 forward active energy
    ('orno_we517', 266, 'energy_import_l1', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),          -- 0x010A
    ('orno_we517', 268, 'energy_import_l2', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),          -- 0x010C
    ('orno_we517', 270, 'energy_import_l3', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),          -- 0x010E
    ('orno_we517', 272, 'energy_export', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),             -- 0x0110 reverse active energy
    ('orno_we517', 274, 'energy_export_l1', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),          -- 0x0112
    ('orno_we517', 276, 'energy_export_l2', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),          -- 0x0114
    ('orno_we517', 278, 'energy_export_l3', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),          -- 0x0116
    ('orno_we517', 280, 'energy_reactive_total', 'kvarh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),   -- 0x0118
    ('orno_we517', 288, 'energy_reactive_import', 'kvarh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),  -- 0x0120
    ('orno_we517', 296, 'energy_reactive_export', 'kvarh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL);  -- 0x0128

DELETE FROM device_signatures WHERE type = 'orno_we517';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('orno_we517', 14, 3, 3, 'ABCD', 1, 100, 300, 'voltage L1, V (0x000E), plausible 100..300 V'),
    ('orno_we517', 20, 3, 3, 'ABCD', 1, 45, 65, 'frequency, Hz (0x0014), plausible 45..65 Hz');

COMMIT;
