-- Eastron SDM120-Modbus (single-phase, two-wire DIN-rail energy meter)
--
-- Source: Eastron, "SDM120 Modbus Smart Meter Modbus Protocol Implementation
--         V2.5" (register table "Input Registers, function code 04"), published
--         by Eastron and its distributor B+G e-tech (eastron-germany.de);
--         a copy is kept as documents/sdm120_modbus_protocol_v2.5.pdf in
--         github.com/nmakel/sdm_modbus.
-- Cross-checked: nmakel/sdm_modbus src/sdm_modbus/sdm.py (class SDM120) and
--         volkszaehler/mbmd meters/rs485/sdm120.go.
-- Function code: 4 (read input registers). Holding registers are settings only.
-- Data type: IEEE-754 float32, big-endian (ABCD), unit as shown on the meter
--         (V, A, W, VA, var, Hz; energies kWh / kvarh). No scaling.
-- Addresses: register_address is the hex start address of the protocol table,
--         the 0-based address on the wire ("30001" -> 0, "30073" -> 0x0048 = 72,
--         "30343" -> 0x0156 = 342).
-- Vocabulary: a single-phase meter reports its one phase as voltage_l1 and
--         current_l1, its power as the total active_power, so dashboards built
--         for three-phase meters show it too.
-- Unit id: the meter's MODBUS address (default 001). Serial settings (baud
--         rate, parity) are set in the meter's setup menu and must match the
--         gateway; nmakel/sdm_modbus assumes 2400 baud for the SDM120.
-- Wiring: RS485 A/B to a Modbus TCP gateway, 120 ohm termination at the bus
--         ends; energy_meters.slave_address is the meter's RS485 address.
-- Request limits: Eastron's protocol documents limit one request to a number of
--         parameters (40 on the SDM630, 30 on the SDM72D-M); the SDM120 limit
--         is not stated in the copy checked, so max_block is a conservative 60
--         registers (30 float32 values). Gaps up to 16 registers inside the
--         documented range are read and discarded (the meter answers them).
-- Counters: every energy_* total is kind 'counter'. counter_max_rate: the SDM120
--         is direct connected, 45 A maximum (Imax; "SDM120-Modbus MID, 1 Fase kWh
--         meter met Modbus RS485 45A" in ilseh/Oppleo src/nl/oppleo/utils/modbus/SDM120.py);
--         at 1.2 x 230 V = 276 V: 276 V * 45 A = 12.4 kW = 0.00345 kWh/s; twice that
--         as the limit: 0.007 kWh/s (the same for kvarh: |Q| <= S).
-- Signature: holding register 0xFC02 (464515) "Meter code = 00 20" (protocol V2.5,
--         page 8), with L1 voltage and frequency in mains ranges. The SDM230 has no
--         documented meter code; it is told apart by this code (an SDM230 does not
--         answer 0x0020 there) and by its tariff register (eastron_sdm230.sql).
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/eastron_sdm120.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('eastron_sdm120',
        'Eastron SDM120-Modbus single-phase meter (input registers, float32), Protocol V2.5',
        60, 16, 3, 0)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'eastron_sdm120';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code,
                       byte_order, scale, not_available, kind, counter_max_rate) VALUES
    ('eastron_sdm120', 0, 'voltage_l1', 'V', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                      -- 0x0000
    ('eastron_sdm120', 6, 'current_l1', 'A', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                      -- 0x0006
    ('eastron_sdm120', 12, 'active_power', 'W', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                   -- 0x000C
    ('eastron_sdm120', 18, 'apparent_power', 'VA', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                -- 0x0012
    ('eastron_sdm120', 24, 'reactive_power', 'var', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),               -- 0x0018
    ('eastron_sdm120', 30, 'power_factor', NULL, 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                  -- 0x001E
    ('eastron_sdm120', 36, 'phase_angle', '°', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                    -- 0x0024
    ('eastron_sdm120', 70, 'frequency', 'Hz', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                     -- 0x0046
    ('eastron_sdm120', 72, 'energy_import', 'kWh', 3, 4, 'ABCD', 1, NULL, 'counter', 0.007),             -- 0x0048
    ('eastron_sdm120', 74, 'energy_export', 'kWh', 3, 4, 'ABCD', 1, NULL, 'counter', 0.007),             -- 0x004A
    ('eastron_sdm120', 76, 'energy_reactive_import', 'kvarh', 3, 4, 'ABCD', 1, NULL, 'counter', 0.007),  -- 0x004C
    ('eastron_sdm120', 78, 'energy_reactive_export', 'kvarh', 3, 4, 'ABCD', 1, NULL, 'counter', 0.007),  -- 0x004E
    ('eastron_sdm120', 342, 'energy_total', 'kWh', 3, 4, 'ABCD', 1, NULL, 'counter', 0.007),             -- 0x0156 import + export
    ('eastron_sdm120', 344, 'energy_reactive_total', 'kvarh', 3, 4, 'ABCD', 1, NULL, 'counter', 0.007);  -- 0x0158

DELETE FROM device_signatures WHERE type = 'eastron_sdm120';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('eastron_sdm120', 64514, 3, 4, 'ABCD', 1, 32, 32, 'meter code 0x0020 = SDM120 (holding 464515, FC02h)'),
    ('eastron_sdm120', 0, 4, 3, 'ABCD', 1, 100, 300, 'voltage L1-N, V (30001), plausible mains 100..300 V'),
    ('eastron_sdm120', 70, 4, 3, 'ABCD', 1, 45, 65, 'frequency, Hz (30071), plausible 45..65 Hz');

COMMIT;
