-- Inepro Metering PRO380-Mod (three-phase DIN-rail energy meter, RS485 Modbus RTU),
-- register map of the current firmware (user manual V2.18)
--
-- Source: Inepro Metering, "PRO380 user manual V2.18"
--         (ineprometering.com/wp-content/uploads/2018/09/PRO380-user-manual-V2-18.pdf,
--         and the V2.18v6 revision of 2019/04), the document both implementations
--         below cite. It was not read directly here: every address below is taken
--         from those implementations. Section 5.5 of the manual, "RS485 communication
--         specifications (PRO380-Mod only)" (page 8, read on easymanua.ls), gives
--         "MODBUS RTU with 16 bit CRC", baud rate 1200..9600 (default 9600), address
--         range 0-247.
-- Cross-checked: volkszaehler/mbmd meters/rs485/inepro.go (IneproProducer: every
--         address below, all float32 read with function 3, powers divided by 0.001)
--         and victronenergy/dbus-modbus-client inepro.py (commit 2ebf7d5, "add driver
--         for the PRO380 meter family": 0x5002.. voltages, 0x5008 frequency, 0x500C..
--         currents, 0x5012.. powers with scale 0.001, 0x502A power factor, 0x600C and
--         0x6018 import/export, 0x6012.. import L1..L3, all Reg_f32b). A third reading
--         of the same 0x5000 layout: the PRO380 emulation of smart-stuff.nl's P1 Modbus
--         dongle ("Inepro / KLEFR 6924 emulation": 0x5002 voltage_l1 .. 0x5008 frequency
--         .. 0x5012 active_power_total "kW-like").
-- Disagreement: per-phase export energies. mbmd has export L1/L2/L3 at 0x601E/0x6020/
--         0x6022 (after export total 0x6018, T1 0x601A, T2 0x601C); the victronenergy
--         driver reads 0x601C/0x601E/0x6020. This file follows mbmd: every energy group
--         in mbmd's table is the same six values (total, T1, T2, L1, L2, L3: 0x6000..,
--         0x600C.., 0x6018.., 0x6024.., 0x6030.., 0x603C..), and on the import side,
--         where both implementations agree, L1 sits at total + 6 (0x600C -> 0x6012);
--         victronenergy's export L1 at 0x601C would be export tariff 2.
-- Older firmware: the "PRO380 series" manual product version 1.02 (2015) documents a
--         different register matrix (serial number 1000h, L1 voltage 2008h, grid
--         frequency 2020h ...). Meters with that firmware do not answer this map, and
--         this file's signature does not match them.
-- Function code: 3 (read holding registers) for every value.
-- Data types: IEEE-754 float32 big-endian (ABCD), as the meter shows it: V, A, Hz, kWh,
--         kvarh; powers in kW / kvar / kVA, hence scale 1000 to store W / var / VA (both
--         implementations multiply by 1000). T1/T2 tariff registers are not mapped (the
--         shared vocabulary has no tariff names). 0x5000 and 0x500A (mbmd "Voltage" and
--         "Current", the emulation: "placeholder") are not mapped: no source says what
--         they aggregate.
-- Addresses: the hexadecimal register of the manual, sent unchanged (0x5002 = 20482).
-- Unit id: the meter's Modbus address (0-247, set on the meter; victronenergy probes 1).
-- Serial: 9600 baud default (manual 5.5); the older manual gives 8 data bits, even
--         parity, 1 stop bit. The RS485 terminal has no ground pin; victronenergy's
--         driver notes it needs an insulated RS485 adapter.
-- Request limits: none is documented (mbmd reads one value per request, victronenergy
--         packs the registers itself), so the planner's maximum applies; gaps of up to
--         16 registers inside the documented 0x6000.. table (tariff values) are read and
--         discarded. Two requests: fc3 20482..20529 (0x5002..0x5031) and
--         fc3 24576..24637 (0x6000..0x603D).
-- Counters: energy_* totals are kind 'counter'. counter_max_rate is NULL: the PRO380
--         series includes CT-connected models read the same way (TapHome's template
--         "Inepro PRO380-S-CT": FC03, float32 big-endian, 5 A secondary CTs whose ratio
--         is configured on the meter), which this signature cannot tell from the direct
--         PRO380-Mod, and no source bounds their primary current.
-- Signature: no identification register is documented in the sources (victronenergy
--         probes 0x1010 for one OEM-branded unit only, value 0x2007 "SolarLog PRO380-Mod",
--         so it is not used here). Plausibility ranges at this family's own addresses
--         and type: L1 voltage (float32 at holding 0x5002) 100..300 V and frequency
--         (float32 at holding 0x5008) 45..65 Hz. No other family in the library has a
--         float32 at holding 0x5002/0x5008: the ABB 0x5000 block holds uint64
--         energies there (its word pair at 0x5002 decodes as a denormal float).
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/inepro_pro380.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('inepro_pro380',
        'Inepro PRO380-Mod three-phase meter (holding registers, float32, 0x5000/0x6000 tables, manual V2.18)',
        125, 16, 3, 0)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'inepro_pro380';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code,
                       byte_order, scale, not_available, kind, counter_max_rate) VALUES
    ('inepro_pro380', 20482, 'voltage_l1', 'V', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),                         -- 0x5002
    ('inepro_pro380', 20484, 'voltage_l2', 'V', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),                         -- 0x5004
    ('inepro_pro380', 20486, 'voltage_l3', 'V', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),                         -- 0x5006
    ('inepro_pro380', 20488, 'frequency', 'Hz', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),                         -- 0x5008 grid frequency
    ('inepro_pro380', 20492, 'current_l1', 'A', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),                         -- 0x500C
    ('inepro_pro380', 20494, 'current_l2', 'A', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),                         -- 0x500E
    ('inepro_pro380', 20496, 'current_l3', 'A', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),                         -- 0x5010
    ('inepro_pro380', 20498, 'active_power', 'W', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),                    -- 0x5012 total, kW
    ('inepro_pro380', 20500, 'active_power_l1', 'W', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),                 -- 0x5014 kW
    ('inepro_pro380', 20502, 'active_power_l2', 'W', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),                 -- 0x5016
    ('inepro_pro380', 20504, 'active_power_l3', 'W', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),                 -- 0x5018
    ('inepro_pro380', 20506, 'reactive_power', 'var', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),                -- 0x501A total, kvar
    ('inepro_pro380', 20508, 'reactive_power_l1', 'var', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),             -- 0x501C
    ('inepro_pro380', 20510, 'reactive_power_l2', 'var', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),             -- 0x501E
    ('inepro_pro380', 20512, 'reactive_power_l3', 'var', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),             -- 0x5020
    ('inepro_pro380', 20514, 'apparent_power', 'VA', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),                 -- 0x5022 total, kVA
    ('inepro_pro380', 20516, 'apparent_power_l1', 'VA', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),              -- 0x5024
    ('inepro_pro380', 20518, 'apparent_power_l2', 'VA', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),              -- 0x5026
    ('inepro_pro380', 20520, 'apparent_power_l3', 'VA', 3, 3, 'ABCD', 1000, NULL, 'gauge', NULL),              -- 0x5028
    ('inepro_pro380', 20522, 'power_factor', NULL, 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),                      -- 0x502A total
    ('inepro_pro380', 20524, 'power_factor_l1', NULL, 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),                   -- 0x502C
    ('inepro_pro380', 20526, 'power_factor_l2', NULL, 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),                   -- 0x502E
    ('inepro_pro380', 20528, 'power_factor_l3', NULL, 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),                   -- 0x5030
    ('inepro_pro380', 24576, 'energy_total', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),                   -- 0x6000 total (mbmd "Sum")
    ('inepro_pro380', 24588, 'energy_import', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),                  -- 0x600C
    ('inepro_pro380', 24594, 'energy_import_l1', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),               -- 0x6012
    ('inepro_pro380', 24596, 'energy_import_l2', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),               -- 0x6014
    ('inepro_pro380', 24598, 'energy_import_l3', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),               -- 0x6016
    ('inepro_pro380', 24600, 'energy_export', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),                  -- 0x6018
    ('inepro_pro380', 24606, 'energy_export_l1', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),               -- 0x601E (mbmd; victron 0x601C)
    ('inepro_pro380', 24608, 'energy_export_l2', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),               -- 0x6020
    ('inepro_pro380', 24610, 'energy_export_l3', 'kWh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),               -- 0x6022
    ('inepro_pro380', 24612, 'energy_reactive_total', 'kvarh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),       -- 0x6024
    ('inepro_pro380', 24624, 'energy_reactive_import', 'kvarh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),      -- 0x6030
    ('inepro_pro380', 24636, 'energy_reactive_export', 'kvarh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL);      -- 0x603C

DELETE FROM device_signatures WHERE type = 'inepro_pro380';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('inepro_pro380', 20482, 3, 3, 'ABCD', 1, 100, 300, 'voltage L1, V (float32, holding 0x5002), plausible mains 100..300 V'),
    ('inepro_pro380', 20488, 3, 3, 'ABCD', 1, 45, 65, 'grid frequency, Hz (float32, holding 0x5008), plausible 45..65 Hz');

COMMIT;
