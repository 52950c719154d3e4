-- ORNO OR-WE-514 (and OR-WE-515), single-phase DIN-rail meter with RS485
--
-- Source: ORNO, "Register description OR-WE-514 & OR-WE-515" (the register list
--         published in github.com/gituser-rk/orno-modbus-mqtt, the document mbmd
--         cites). Not read directly here: the addresses and divisors are mbmd's.
-- Cross-checked: volkszaehler/mbmd meters/rs485/orno1p.go (ORNO1PProducer,
--         "Opcodes for ORNO WE-514 and WE-515") and evcc-io/evcc
--         templates/definition/meter/orno-we514_515.yaml (reads the total active
--         energy "Sum" as its energy). One reading of the map exists in the sources.
-- Function code: 3 (read holding registers).
-- Data types: big-endian (ABCD) unsigned integers: Hz and V uint16 / 100, A
--         uint32 / 1000, W, var, VA uint32 (mbmd: "0.001kW"), PF uint16 / 1000,
--         kWh / kvarh uint32 / 100.
-- Addresses: hex wire addresses (0x0131 = voltage).
-- Vocabulary: the meter reports total active energy only (no import/export
--         split): energy_total; the one phase is voltage_l1 / current_l1.
-- Unit id: the meter's address (default 1). Serial settings per the register
--         description (evcc offers the meter as RS485 only).
-- Request limits: the sources read one value per request; gaps are not known to be
--         answered, so max_gap is 0 (one request per run of adjacent values).
-- Counters: energy_total / energy_reactive_total are kind 'counter'; the rated
--         current is not in the sources cited, so counter_max_rate is NULL.
-- Signature: no identification register in the sources; frequency (0x0130) and
--         voltage (0x0131) as 16-bit hundredths in mains ranges.
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/orno_we514.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('orno_we514',
        'ORNO OR-WE-514 / OR-WE-515 single-phase meter (holding registers, scaled integers)',
        125, 0, 3, 0)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'orno_we514';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code,
                       byte_order, scale, not_available, kind, counter_max_rate) VALUES
    ('orno_we514', 304, 'frequency', 'Hz', 4, 3, 'ABCD', 0.01, NULL, 'gauge', NULL),                     -- 0x0130 0.01 Hz
    ('orno_we514', 305, 'voltage_l1', 'V', 4, 3, 'ABCD', 0.01, NULL, 'gauge', NULL),                     -- 0x0131 0.01 V
    ('orno_we514', 313, 'current_l1', 'A', 5, 3, 'ABCD', 0.001, NULL, 'gauge', NULL),                    -- 0x0139 0.001 A
    ('orno_we514', 320, 'active_power', 'W', 5, 3, 'ABCD', 1, NULL, 'gauge', NULL),                      -- 0x0140 W
    ('orno_we514', 328, 'reactive_power', 'var', 5, 3, 'ABCD', 1, NULL, 'gauge', NULL),                  -- 0x0148 var
    ('orno_we514', 336, 'apparent_power', 'VA', 5, 3, 'ABCD', 1, NULL, 'gauge', NULL),                   -- 0x0150 VA
    ('orno_we514', 344, 'power_factor', NULL, 4, 3, 'ABCD', 0.001, NULL, 'gauge', NULL),                 -- 0x0158 0.001
    ('orno_we514', 40960, 'energy_total', 'kWh', 5, 3, 'ABCD', 0.01, NULL, 'counter', NULL),             -- 0xA000 total active energy, 0.01 kWh
    ('orno_we514', 40990, 'energy_reactive_total', 'kvarh', 5, 3, 'ABCD', 0.01, NULL, 'counter', NULL);  -- 0xA01E total reactive energy

DELETE FROM device_signatures WHERE type = 'orno_we514';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('orno_we514', 304, 3, 4, 'ABCD', 0.01, 45, 65, 'frequency, 0.01 Hz (0x0130), plausible 45..65 Hz'),
    ('orno_we514', 305, 3, 4, 'ABCD', 0.01, 100, 300, 'voltage, 0.01 V (0x0131), plausible 100..300 V');

COMMIT;
