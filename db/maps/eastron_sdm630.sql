-- Eastron SDM630-Modbus V2 (three-phase, four-wire DIN-rail energy meter)
--
-- Source: Eastron, "SDM630 Modbus Smart Meter Modbus Protocol Implementation
--         V2.0" (register table "Input Registers, function code 04"), published
--         by Eastron and its distributor B+G e-tech (eastron-germany.de);
--         a copy is kept as documents/sdm630_modbus_protocol_v2.0.pdf in
--         github.com/nmakel/sdm_modbus.
-- Cross-checked: nmakel/sdm_modbus src/sdm_modbus/sdm.py (class SDM630) and
--         volkszaehler/mbmd meters/rs485/sdm.go (SDMProducer).
-- Function code: 4 (read input registers) for every value here. The holding
--         registers (function 3) are settings only and are not mapped.
-- Data type: IEEE-754 float32, big-endian (ABCD), in the unit the meter shows
--         (V, A, W, VA, var, Hz; energies in kWh / kvarh). No scaling.
-- Addresses: the protocol document lists "30001" style register numbers next
--         to the hex start address; register_address below is the hex start
--         address, i.e. the 0-based address sent on the wire
--         (30001 -> 0x0000 = 0, 30343 -> 0x0156 = 342).
-- Unit id: the meter's MODBUS address (front-panel setting, default 001,
--         1..247). Serial settings (baud rate, parity) are set in the
--         meter's setup menu and must match the gateway (nmakel/sdm_modbus
--         assumes 9600 baud).
-- Wiring: RS485 A/B (terminals marked A and B) to a Modbus TCP gateway; 120 ohm
--         termination at both ends of the bus; the poller talks Modbus TCP to
--         the gateway and energy_meters.slave_address is the meter's RS485
--         address.
-- Request limits: the protocol document states "each request for data must be
--         restricted to 40 parameters or less" (40 float32 = 80 registers), so
--         max_block is 80.
--         Inside its map the SDM630 answers the undefined registers between
--         documented values (sdm_modbus reads 0x00..0x4E and 0xC8..0x10C as
--         single requests), so a wide max_gap is safe and lets the planner
--         read this whole map in three requests:
--             fc4 0..79 (80 registers), fc4 200..251 (52), fc4 342..363 (22).
--         Values this map deliberately leaves out (demand values 0x54..0x6A)
--         would push the first block past 80 registers and cost a fourth
--         request.
-- Version: the map is Protocol V2.0, the SDM630-Modbus V2 (the V1.8 document
--         of the first SDM630 gives the same input addresses for every value here).
-- Counters: energy_* totals are kind 'counter'. counter_max_rate: direct
--         connection, 100 A ("SDM630-Modbus MID V2, 3 Fase kWh meter met Modbus
--         RS485 100A", ilseh/Oppleo src/nl/oppleo/utils/modbus/SDM360v2.py);
--         system totals 3 * 276 V * 100 A = 82.8 kW = 0.023 kWh/s, twice that:
--         0.046; per phase 276 V * 100 A = 0.0077 kWh/s, twice that: 0.016.
-- Signature: holding register 0xFC02, the Eastron "meter code" (not listed in
--         the V2.0 document; documented for the SDM120 and SDM72D-M v2 at the same
--         address), = 0x0070 for the SDM630 V2 as Tinkerforge evse-v2-bricklet
--         software/src/meter_eastron.c reads it ("case 0x0070: METER_TYPE_SDM630";
--         0x0079 is the SDM630MCT V2, a CT meter whose counters need no rate limit:
--         it is deliberately NOT matched here; early SDM630 units answer 0x0000 and
--         are not matched either). Plus L1 voltage and frequency in mains ranges.
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/eastron_sdm630.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('eastron_sdm630',
        'Eastron SDM630-Modbus V2 three-phase meter (input registers, float32), Protocol V2.0',
        80, 32, 3, 0)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'eastron_sdm630';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code,
                       byte_order, scale, not_available, kind, counter_max_rate) VALUES
    ('eastron_sdm630', 0, 'voltage_l1', 'V', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                      -- 0x0000
    ('eastron_sdm630', 2, 'voltage_l2', 'V', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                      -- 0x0002
    ('eastron_sdm630', 4, 'voltage_l3', 'V', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                      -- 0x0004
    ('eastron_sdm630', 6, 'current_l1', 'A', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                      -- 0x0006
    ('eastron_sdm630', 8, 'current_l2', 'A', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                      -- 0x0008
    ('eastron_sdm630', 10, 'current_l3', 'A', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                     -- 0x000A
    ('eastron_sdm630', 12, 'active_power_l1', 'W', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                -- 0x000C
    ('eastron_sdm630', 14, 'active_power_l2', 'W', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                -- 0x000E
    ('eastron_sdm630', 16, 'active_power_l3', 'W', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                -- 0x0010
    ('eastron_sdm630', 18, 'apparent_power_l1', 'VA', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),             -- 0x0012
    ('eastron_sdm630', 20, 'apparent_power_l2', 'VA', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),             -- 0x0014
    ('eastron_sdm630', 22, 'apparent_power_l3', 'VA', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),             -- 0x0016
    ('eastron_sdm630', 24, 'reactive_power_l1', 'var', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),            -- 0x0018
    ('eastron_sdm630', 26, 'reactive_power_l2', 'var', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),            -- 0x001A
    ('eastron_sdm630', 28, 'reactive_power_l3', 'var', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),            -- 0x001C
    ('eastron_sdm630', 30, 'power_factor_l1', NULL, 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),               -- 0x001E
    ('eastron_sdm630', 32, 'power_factor_l2', NULL, 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),               -- 0x0020
    ('eastron_sdm630', 34, 'power_factor_l3', NULL, 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),               -- 0x0022
    ('eastron_sdm630', 36, 'phase_angle_l1', '°', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                 -- 0x0024
    ('eastron_sdm630', 38, 'phase_angle_l2', '°', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                 -- 0x0026
    ('eastron_sdm630', 40, 'phase_angle_l3', '°', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                 -- 0x0028
    ('eastron_sdm630', 42, 'voltage_ln_average', 'V', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),             -- 0x002A
    ('eastron_sdm630', 46, 'current_average', 'A', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                -- 0x002E
    ('eastron_sdm630', 48, 'current_total', 'A', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                  -- 0x0030 sum of line currents
    ('eastron_sdm630', 52, 'active_power', 'W', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                   -- 0x0034
    ('eastron_sdm630', 56, 'apparent_power', 'VA', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                -- 0x0038
    ('eastron_sdm630', 60, 'reactive_power', 'var', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),               -- 0x003C
    ('eastron_sdm630', 62, 'power_factor', NULL, 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                  -- 0x003E
    ('eastron_sdm630', 66, 'phase_angle', '°', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                    -- 0x0042
    ('eastron_sdm630', 70, 'frequency', 'Hz', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                     -- 0x0046
    ('eastron_sdm630', 72, 'energy_import', 'kWh', 3, 4, 'ABCD', 1, NULL, 'counter', 0.046),             -- 0x0048
    ('eastron_sdm630', 74, 'energy_export', 'kWh', 3, 4, 'ABCD', 1, NULL, 'counter', 0.046),             -- 0x004A
    ('eastron_sdm630', 76, 'energy_reactive_import', 'kvarh', 3, 4, 'ABCD', 1, NULL, 'counter', 0.046),  -- 0x004C
    ('eastron_sdm630', 78, 'energy_reactive_export', 'kvarh', 3, 4, 'ABCD', 1, NULL, 'counter', 0.046),  -- 0x004E
    ('eastron_sdm630', 200, 'voltage_l1_l2', 'V', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                 -- 0x00C8
    ('eastron_sdm630', 202, 'voltage_l2_l3', 'V', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                 -- 0x00CA
    ('eastron_sdm630', 204, 'voltage_l3_l1', 'V', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                 -- 0x00CC
    ('eastron_sdm630', 206, 'voltage_ll_average', 'V', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),            -- 0x00CE
    ('eastron_sdm630', 224, 'current_neutral', 'A', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),               -- 0x00E0
    ('eastron_sdm630', 234, 'voltage_thd_l1', '%', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                -- 0x00EA
    ('eastron_sdm630', 236, 'voltage_thd_l2', '%', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                -- 0x00EC
    ('eastron_sdm630', 238, 'voltage_thd_l3', '%', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                -- 0x00EE
    ('eastron_sdm630', 240, 'current_thd_l1', '%', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                -- 0x00F0
    ('eastron_sdm630', 242, 'current_thd_l2', '%', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                -- 0x00F2
    ('eastron_sdm630', 244, 'current_thd_l3', '%', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),                -- 0x00F4
    ('eastron_sdm630', 248, 'voltage_thd_average', '%', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),           -- 0x00F8
    ('eastron_sdm630', 250, 'current_thd_average', '%', 3, 4, 'ABCD', 1, NULL, 'gauge', NULL),           -- 0x00FA
    ('eastron_sdm630', 342, 'energy_total', 'kWh', 3, 4, 'ABCD', 1, NULL, 'counter', 0.046),             -- 0x0156 import + export
    ('eastron_sdm630', 344, 'energy_reactive_total', 'kvarh', 3, 4, 'ABCD', 1, NULL, 'counter', 0.046),  -- 0x0158
    ('eastron_sdm630', 346, 'energy_import_l1', 'kWh', 3, 4, 'ABCD', 1, NULL, 'counter', 0.016),         -- 0x015A
    ('eastron_sdm630', 348, 'energy_import_l2', 'kWh', 3, 4, 'ABCD', 1, NULL, 'counter', 0.016),         -- 0x015C
    ('eastron_sdm630', 350, 'energy_import_l3', 'kWh', 3, 4, 'ABCD', 1, NULL, 'counter', 0.016),         -- 0x015E
    ('eastron_sdm630', 352, 'energy_export_l1', 'kWh', 3, 4, 'ABCD', 1, NULL, 'counter', 0.016),         -- 0x0160
    ('eastron_sdm630', 354, 'energy_export_l2', 'kWh', 3, 4, 'ABCD', 1, NULL, 'counter', 0.016),         -- 0x0162
    ('eastron_sdm630', 356, 'energy_export_l3', 'kWh', 3, 4, 'ABCD', 1, NULL, 'counter', 0.016),         -- 0x0164
    ('eastron_sdm630', 358, 'energy_total_l1', 'kWh', 3, 4, 'ABCD', 1, NULL, 'counter', 0.016),          -- 0x0166
    ('eastron_sdm630', 360, 'energy_total_l2', 'kWh', 3, 4, 'ABCD', 1, NULL, 'counter', 0.016),          -- 0x0168
    ('eastron_sdm630', 362, 'energy_total_l3', 'kWh', 3, 4, 'ABCD', 1, NULL, 'counter', 0.016);          -- 0x016A

DELETE FROM device_signatures WHERE type = 'eastron_sdm630';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('eastron_sdm630', 64514, 3, 4, 'ABCD', 1, 112, 112, 'meter code 0x0070 = SDM630-Modbus V2 (holding FC02h)'),
    ('eastron_sdm630', 0, 4, 3, 'ABCD', 1, 100, 300, 'voltage L1-N, V (30001), plausible mains 100..300 V'),
    ('eastron_sdm630', 70, 4, 3, 'ABCD', 1, 45, 65, 'frequency, Hz (30071), plausible 45..65 Hz');

COMMIT;
