-- Carlo Gavazzi EM340 / EM330 / ET340 / ET330 (EM300/ET300 series, three-phase)
--
-- Source: Carlo Gavazzi, "EM300 Series and ET300 Series COMMUNICATION PROTOCOL,
--         Version 2 Revision 17 (July 05, 2021)", table "Instantaneous variables
--         and meters"; published by Carlo Gavazzi (gavazziautomation.com,
--         document EM330_EM340_ET330_ET340_CP.pdf; the copy cited by mbmd is
--         github.com/volkszaehler/mbmd/files/10538388/EM330_EM340_ET330_ET340_CP.pdf).
-- Cross-checked: volkszaehler/mbmd meters/rs485/carlogavazzi-ex3x0.go
--         (CarloGavazziEx3xProducer), nmakel/sdm_modbus
--         src/sdm_modbus/carlogavazzi.py (same layout), Victron dbus-cgwacs EM340
--         (0x0028 W sys s32, 0x0033 Hz, 0x0034 kWh(+)).
-- Function code: 4 (read input registers). The document: "The functions 03h
--         and 04h have exactly the same effect and can be used indifferently."
-- Data types and word order: INT32 values are sent least significant word
--         first ("LSW->MSW"), i.e. byte_order CDAB; 16-bit values are plain
--         big-endian. Values are fixed-point integers, hence the scales:
--         V 0.1 (value weight Volt*10), A 0.001 (Ampere*1000), W/VA/var 0.1
--         (Watt*10), PF 0.001, Hz 0.1, kWh/kvarh 0.1.
-- Addresses: the document gives a "Modicon address" (300001 = function 04,
--         400001 = function 03) and the "physical address" 0000h sent on the
--         wire; register_address is the physical address (300001 -> 0x0000,
--         300053 -> 0x0034 = 52).
-- Unit id: the meter's address set on the front (default 1, range 1..247).
--         Default serial settings 9600 baud, 8N1.
-- Wiring: RS485 terminals A-, B+ and GND/T; 120 ohm termination between A and B
--         on the last meter (the EM340 has a T terminal for it); shield to
--         ground on the master side only.
-- Request limits: Revision 11 of the same document allows 1..20 registers per
--         request (1..14h); a later revision is reported to allow 50. max_block
--         is 20 so every revision answers. The only gap bridged (max_gap 2) is
--         0x0032, the documented phase-sequence register.
-- Counters: energy_* totals are kind 'counter', counter_max_rate NULL: the
--         family includes the EM330 / ET330, connected through current transformers
--         whose ratio is set on the meter (the EM340 itself is direct, 65 A).
-- Signature: the sources give no identification code for these models (victron
--         lists codes at 0x000B for the EM24 Ethernet only); V L1-N (int32 LSW first,
--         0x0000) and frequency (int16, 0x0033) in mains ranges. The EM24 Ethernet
--         (E1) models use this same layout and are matched by this family (same map);
--         the EM24-DIN RS485 models are carlo_gavazzi_em24.sql (frequency at 0x0037).
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/carlo_gavazzi_em340.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('carlo_gavazzi_em340',
        'Carlo Gavazzi EM340/EM330/ET340/ET330 three-phase meter (input registers, int32 LSW first, scaled)',
        20, 2, 3, 0)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'carlo_gavazzi_em340';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code,
                       byte_order, scale, not_available, kind, counter_max_rate) VALUES
    ('carlo_gavazzi_em340', 0, 'voltage_l1', 'V', 2, 4, 'CDAB', 0.1, NULL, 'gauge', NULL),                     -- 0x0000 V L1-N
    ('carlo_gavazzi_em340', 2, 'voltage_l2', 'V', 2, 4, 'CDAB', 0.1, NULL, 'gauge', NULL),                     -- 0x0002 V L2-N
    ('carlo_gavazzi_em340', 4, 'voltage_l3', 'V', 2, 4, 'CDAB', 0.1, NULL, 'gauge', NULL),                     -- 0x0004 V L3-N
    ('carlo_gavazzi_em340', 6, 'voltage_l1_l2', 'V', 2, 4, 'CDAB', 0.1, NULL, 'gauge', NULL),                  -- 0x0006 V L1-L2
    ('carlo_gavazzi_em340', 8, 'voltage_l2_l3', 'V', 2, 4, 'CDAB', 0.1, NULL, 'gauge', NULL),                  -- 0x0008 V L2-L3
    ('carlo_gavazzi_em340', 10, 'voltage_l3_l1', 'V', 2, 4, 'CDAB', 0.1, NULL, 'gauge', NULL),                 -- 0x000A V L3-L1
    ('carlo_gavazzi_em340', 12, 'current_l1', 'A', 2, 4, 'CDAB', 0.001, NULL, 'gauge', NULL),                  -- 0x000C A L1
    ('carlo_gavazzi_em340', 14, 'current_l2', 'A', 2, 4, 'CDAB', 0.001, NULL, 'gauge', NULL),                  -- 0x000E A L2
    ('carlo_gavazzi_em340', 16, 'current_l3', 'A', 2, 4, 'CDAB', 0.001, NULL, 'gauge', NULL),                  -- 0x0010 A L3
    ('carlo_gavazzi_em340', 18, 'active_power_l1', 'W', 2, 4, 'CDAB', 0.1, NULL, 'gauge', NULL),               -- 0x0012 W L1
    ('carlo_gavazzi_em340', 20, 'active_power_l2', 'W', 2, 4, 'CDAB', 0.1, NULL, 'gauge', NULL),               -- 0x0014 W L2
    ('carlo_gavazzi_em340', 22, 'active_power_l3', 'W', 2, 4, 'CDAB', 0.1, NULL, 'gauge', NULL),               -- 0x0016 W L3
    ('carlo_gavazzi_em340', 24, 'apparent_power_l1', 'VA', 2, 4, 'CDAB', 0.1, NULL, 'gauge', NULL),            -- 0x0018 VA L1
    ('carlo_gavazzi_em340', 26, 'apparent_power_l2', 'VA', 2, 4, 'CDAB', 0.1, NULL, 'gauge', NULL),            -- 0x001A VA L2
    ('carlo_gavazzi_em340', 28, 'apparent_power_l3', 'VA', 2, 4, 'CDAB', 0.1, NULL, 'gauge', NULL),            -- 0x001C VA L3
    ('carlo_gavazzi_em340', 30, 'reactive_power_l1', 'var', 2, 4, 'CDAB', 0.1, NULL, 'gauge', NULL),           -- 0x001E var L1
    ('carlo_gavazzi_em340', 32, 'reactive_power_l2', 'var', 2, 4, 'CDAB', 0.1, NULL, 'gauge', NULL),           -- 0x0020 var L2
    ('carlo_gavazzi_em340', 34, 'reactive_power_l3', 'var', 2, 4, 'CDAB', 0.1, NULL, 'gauge', NULL),           -- 0x0022 var L3
    ('carlo_gavazzi_em340', 36, 'voltage_ln_average', 'V', 2, 4, 'CDAB', 0.1, NULL, 'gauge', NULL),            -- 0x0024 V L-N sys
    ('carlo_gavazzi_em340', 38, 'voltage_ll_average', 'V', 2, 4, 'CDAB', 0.1, NULL, 'gauge', NULL),            -- 0x0026 V L-L sys
    ('carlo_gavazzi_em340', 40, 'active_power', 'W', 2, 4, 'CDAB', 0.1, NULL, 'gauge', NULL),                  -- 0x0028 W sys
    ('carlo_gavazzi_em340', 42, 'apparent_power', 'VA', 2, 4, 'CDAB', 0.1, NULL, 'gauge', NULL),               -- 0x002A VA sys
    ('carlo_gavazzi_em340', 44, 'reactive_power', 'var', 2, 4, 'CDAB', 0.1, NULL, 'gauge', NULL),              -- 0x002C var sys
    ('carlo_gavazzi_em340', 46, 'power_factor_l1', NULL, 1, 4, 'ABCD', 0.001, NULL, 'gauge', NULL),            -- 0x002E PF L1 (int16)
    ('carlo_gavazzi_em340', 47, 'power_factor_l2', NULL, 1, 4, 'ABCD', 0.001, NULL, 'gauge', NULL),            -- 0x002F PF L2
    ('carlo_gavazzi_em340', 48, 'power_factor_l3', NULL, 1, 4, 'ABCD', 0.001, NULL, 'gauge', NULL),            -- 0x0030 PF L3
    ('carlo_gavazzi_em340', 49, 'power_factor', NULL, 1, 4, 'ABCD', 0.001, NULL, 'gauge', NULL),               -- 0x0031 PF sys
    ('carlo_gavazzi_em340', 51, 'frequency', 'Hz', 1, 4, 'ABCD', 0.1, NULL, 'gauge', NULL),                    -- 0x0033 Hz (int16)
    ('carlo_gavazzi_em340', 52, 'energy_import', 'kWh', 2, 4, 'CDAB', 0.1, NULL, 'counter', NULL),             -- 0x0034 kWh (+) TOT
    ('carlo_gavazzi_em340', 54, 'energy_reactive_import', 'kvarh', 2, 4, 'CDAB', 0.1, NULL, 'counter', NULL),  -- 0x0036 kvarh (+) TOT
    ('carlo_gavazzi_em340', 64, 'energy_import_l1', 'kWh', 2, 4, 'CDAB', 0.1, NULL, 'counter', NULL),          -- 0x0040 kWh (+) L1
    ('carlo_gavazzi_em340', 66, 'energy_import_l2', 'kWh', 2, 4, 'CDAB', 0.1, NULL, 'counter', NULL),          -- 0x0042 kWh (+) L2
    ('carlo_gavazzi_em340', 68, 'energy_import_l3', 'kWh', 2, 4, 'CDAB', 0.1, NULL, 'counter', NULL),          -- 0x0044 kWh (+) L3
    ('carlo_gavazzi_em340', 78, 'energy_export', 'kWh', 2, 4, 'CDAB', 0.1, NULL, 'counter', NULL),             -- 0x004E kWh (-) TOT
    ('carlo_gavazzi_em340', 80, 'energy_reactive_export', 'kvarh', 2, 4, 'CDAB', 0.1, NULL, 'counter', NULL);  -- 0x0050 kvarh (-) TOT

DELETE FROM device_signatures WHERE type = 'carlo_gavazzi_em340';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('carlo_gavazzi_em340', 0, 4, 2, 'CDAB', 0.1, 100, 300, 'voltage L1-N, 0.1 V, int32 LSW first (0x0000), plausible 100..300 V'),
    ('carlo_gavazzi_em340', 51, 4, 1, 'ABCD', 0.1, 45, 65, 'frequency, 0.1 Hz, int16 (0x0033), plausible 45..65 Hz');

COMMIT;
