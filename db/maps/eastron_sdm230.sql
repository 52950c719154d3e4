-- Eastron SDM230-Modbus (single-phase, two-module DIN-rail meter; also the
-- SDM230-2T two-tariff variant the V1.1 document describes)
--
-- Source: Eastron, "Eastron SDM230-2T Smart Meter Modbus Protocol Implementation
--         V1.1" (input register table, function code 04), published by Eastron
--         (eastron.com.cn); a copy is kept as documents/sdm230_modbus_protocol_v1.1.pdf
--         in github.com/nmakel/sdm_modbus (the earlier documents/sdm230_modbus_protocol.pdf
--         of Eastron Europe gives the same addresses).
-- Cross-checked: volkszaehler/mbmd meters/rs485/sdm230.go (SDM230Producer, citing
--         bg-etech.de SDM230-register.pdf) and nmakel/sdm_modbus src/sdm_modbus/sdm.py
--         (class SDM230): every address below is in both, same type and unit.
-- Function code: 4 (read input registers). Holding registers are settings only.
-- Data type: IEEE-754 float32, big-endian (ABCD), no scaling; energies in kWh /
--         kvarh.
-- Addresses: register_address is the hex start address of the table, the 0-based
--         address on the wire ("30001" -> 0, "30343" -> 0x0156 = 342).
-- Vocabulary: the one phase is voltage_l1 / current_l1, its power the total
--         active_power (as in eastron_sdm120.sql).
-- Unit id: the meter's MODBUS address (1..247, default 1). Serial settings from
--         the meter's menu; nmakel/sdm_modbus assumes 2400 baud, 8N1.
-- Request limits: "Each request for data must be restricted to 40 parameters or
--         less" (Eastron Europe document), so max_block 80; the map reads in three
--         requests: fc4 0..37, fc4 70..79, fc4 342..345.
-- Counters: energy_* totals are kind 'counter'. counter_max_rate is left NULL:
--         the meter's maximum current is not stated in the protocol documents cited
--         here (the guard still refuses a counter that goes backwards or drops to 0).
-- Signature: Eastron documents no meter code for the SDM230 (the SDM120's 0x0020
--         at holding 0xFC02 is documented, the SDM230's is not), so the family is
--         recognised by L1 voltage in a mains range plus its tariff register 0x130C
--         ("34877 Total active Energy Rate 1", V1.1 only: the SDM120 V2.5 document has
--         no 0x13xx registers). An SDM120 that also answered 0x130C would match both;
--         it then has the most rows (three) and wins.
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/eastron_sdm230.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('eastron_sdm230',
        'Eastron SDM230-Modbus single-phase meter (input registers, float32), Protocol V1.1',
        80, 16, 3, 0)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'eastron_sdm230';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code,
                       byte_order, scale, not_available, kind, counter_max_rate) VALUES
    ('eastron_sdm230', 0, 'voltage_l1', 'V', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                     -- 0x0000 30001
    ('eastron_sdm230', 6, 'current_l1', 'A', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                     -- 0x0006 30007
    ('eastron_sdm230', 12, 'active_power', 'W', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                  -- 0x000C 30013
    ('eastron_sdm230', 18, 'apparent_power', 'VA', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),               -- 0x0012 30019
    ('eastron_sdm230', 24, 'reactive_power', 'var', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),              -- 0x0018 30025
    ('eastron_sdm230', 30, 'power_factor', NULL, 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                 -- 0x001E 30031
    ('eastron_sdm230', 36, 'phase_angle', '°', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                   -- 0x0024 30037
    ('eastron_sdm230', 70, 'frequency', 'Hz', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                    -- 0x0046 30071
    ('eastron_sdm230', 72, 'energy_import', 'kWh', 3, 4, 'ABCD', 1, NULL, 'counter', NULL),             -- 0x0048 30073
    ('eastron_sdm230', 74, 'energy_export', 'kWh', 3, 4, 'ABCD', 1, NULL, 'counter', NULL),             -- 0x004A 30075
    ('eastron_sdm230', 76, 'energy_reactive_import', 'kvarh', 3, 4, 'ABCD', 1, NULL, 'counter', NULL),  -- 0x004C 30077
    ('eastron_sdm230', 78, 'energy_reactive_export', 'kvarh', 3, 4, 'ABCD', 1, NULL, 'counter', NULL),  -- 0x004E 30079
    ('eastron_sdm230', 342, 'energy_total', 'kWh', 3, 4, 'ABCD', 1, NULL, 'counter', NULL),             -- 0x0156 30343 import + export
    ('eastron_sdm230', 344, 'energy_reactive_total', 'kvarh', 3, 4, 'ABCD', 1, NULL, 'counter', NULL);  -- 0x0158 30345

DELETE FROM device_signatures WHERE type = 'eastron_sdm230';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('eastron_sdm230', 0, 4, 3, 'ABCD', 1, 100, 300, 'voltage L1-N, V (30001), plausible mains 100..300 V'),
    ('eastron_sdm230', 4876, 4, 3, 'ABCD', 1, 0, 1000000000, 'total active energy tariff 1, kWh (34877, SDM230-2T V1.1)');

COMMIT;
