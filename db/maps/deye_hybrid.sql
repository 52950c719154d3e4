-- Deye single-phase low-voltage hybrid inverters SUN-xK-SG01LP1 / -SG03LP1 / -SG05LP1
-- (3.6..8 kW) and their Sunsynk twins (Sunsynk 3.6/5/8 kW), holding registers 0..300.
-- Not the three-phase hybrids (SUN-xK-SG04LP3, -SG01HP3: device type 0x0005/0x0006,
-- their values at 500..700, kellerza's three_phase_*.py, evcc's deye-hybrid-3p) and not
-- the 16 kW single-phase models with three MPPTs (device type 0x0200, kellerza's
-- single_phase_16kw.py): this family's signature refuses their device type codes.
--
-- Source: Deye's "Modbus RTU protocol" for the hybrids is not published by Deye; the
--         "MODBUS RTU" documents in circulation (github.com/gardiol/ha-solarman-wiki
--         links those of the SG04LP3 and the SG01HP3, three-phase models) were not read
--         here. Every address below is in the two
--         independent implementations that follow and agrees between them.
-- Cross-checked: github.com/kellerza/sunsynk src/sunsynk/definitions/single_phase.py ("Sunsynk
--         5kW&8kW hybrid inverter sensor definitions": 60.. energies, 79 grid frequency
--         x0.01, (81, 82) total grid export x0.1, (96, 97) total PV energy x0.1, 108 day PV
--         energy x0.1, 109..112 PV1/PV2 voltage and current x0.1, 150 grid voltage x0.1,
--         164 inverter current x0.01, 175 inverter power (signed), 186/187 PV1/PV2 power,
--         90/91 DC transformer / radiator temperature as TempSensor: raw x 0.1 - 100) and
--         src/sunsynk/identity.py (register 0 device type: 0x0003 and 0x0103 "Single-phase
--         hybrid", 0x0002 string, 0x0004 micro, 0x0005/0x0500 LV three-phase, 0x0006/0x0601/
--         0x0602 HV three-phase, 0x0200 single-phase 16 kW); github.com/StephanJoubert/
--         home_assistant_solarman inverter_definitions/deye_hybrid.yaml (the same
--         addresses in hex: 0x4F grid frequency, 0x51/0x52 total energy sold, 0x60/0x61
--         total production, 0x6C daily production, 0x6D..0x70 PV1/PV2, 0x96 grid voltage
--         L1, 0xA4 "Current L1" x0.01 signed, 0xAF "Total Power" signed, 0xBA/0xBB PV
--         power, 0x5A/0x5B DC/AC temperature x0.1 offset 1000); evcc
--         templates/definition/meter/deye-storage.yaml (81 "uint32s", 96 "uint32s" x0.1,
--         186..189 PV power, 190 battery power).
-- Disagreement: the inverter current (164) is unsigned in kellerza's table and signed in
--         solarman's; this file reads int16 (a battery inverter's current changes sign).
-- Function code: 3 (read holding registers).
-- Addresses: the register number of both implementations, sent unchanged.
-- Data types: 16-bit big-endian; 32-bit totals LOW word first (CDAB: kellerza
--         unpack_value "All inverters are little-endian", solarman rule 3 with the low
--         register first, evcc "uint32s"). Energies 0.1 kWh, voltages 0.1 V, PV current
--         0.1 A, AC current 0.01 A, frequency 0.01 Hz, power 1 W, temperatures raw x 0.1
--         - 100 degC (value_offset -100).
-- Left out: total grid import (words at 78 and 80, around the frequency at 79: not one
--         register run, so not one row); grid, load and CT powers (169, 172, 176..178: the
--         shared vocabulary names the device's own power only); battery values (no
--         battery names in the vocabulary); 63-64 "Total active energy" (kellerza: "signed?").
-- Unit id: 1 (evcc: "id: 1"), set on the inverter. Serial: 9600 baud, 8N1 (evcc: "baudrate:
--         9600") on the inverter's RS485 Modbus port through a Modbus TCP gateway; the
--         Solarman Wi-Fi logger speaks Solarman V5, not Modbus TCP.
-- Request limits: solarman reads 0x0003..0x0070 (110 registers) and 0x0096..0x00F9 (100)
--         in single requests, so the inverter answers the undocumented registers inside
--         those ranges. max_block 100, max_gap 16: two requests, fc3 76..112 and
--         fc3 150..187. timeout 3 s, no pause: no source needs more.
-- Counters: energy_yield (total PV energy) and energy_export (total grid export) are kind
--         'counter'; energy_yield_today, energy_import_today and energy_export_today reset
--         every day and stay 'gauge'.
--         energy_yield: counter_max_rate 0.2 kWh/s, the larger of two limits: power: the
--         largest model of the family is 8 kW AC; with PV oversized 1.3 x that is 10.4 kW,
--         twice that 20.8 kWh / 3600 s = 0.006 kWh/s; resolution: the register counts 0.1 kWh
--         steps and one step between two readings a second apart must pass, with margin:
--         2 x 0.1 kWh/s = 0.2 kWh/s.
--         energy_export: NULL: measured at the grid connection through the external CT,
--         where other generation may feed in too.
-- Signature: register 0, the device type, read byte-swapped (BADC) so that its low byte
--         leads: 0x0003 reads 768, 0x0103 reads 769, and the row accepts 768..769, exactly
--         kellerza's two "Single-phase hybrid" codes (every other code in its table reads
--         outside: 0x0002 512, 0x0004 1024, 0x0005 1280, 0x0006 1536, 0x0200 2, 0x0500 5,
--         0x0601 262, 0x0602 518). Plus grid frequency (79) 45..65 Hz and grid voltage
--         (150) 100..300 V.
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/deye_hybrid.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('deye_hybrid',
        'Deye SUN-xK-SG01LP1/SG03LP1/SG05LP1 / Sunsynk single-phase hybrid inverter (holding registers 76..187)',
        100, 16, 3, 0)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'deye_hybrid';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code,
                       byte_order, scale, value_offset, not_available, kind, counter_max_rate) VALUES
    ('deye_hybrid', 76,  'energy_import_today', 'kWh', 4, 3, 'ABCD', 0.1,  0,    NULL, 'gauge',   NULL),  -- day grid import (reset daily)
    ('deye_hybrid', 77,  'energy_export_today', 'kWh', 4, 3, 'ABCD', 0.1,  0,    NULL, 'gauge',   NULL),  -- day grid export (reset daily)
    ('deye_hybrid', 79,  'frequency',           'Hz',  4, 3, 'ABCD', 0.01, 0,    NULL, 'gauge',   NULL),  -- grid frequency
    ('deye_hybrid', 81,  'energy_export',       'kWh', 5, 3, 'CDAB', 0.1,  0,    NULL, 'counter', NULL),  -- 81-82 total grid export
    ('deye_hybrid', 90,  'temperature_dc',      '°C',  4, 3, 'ABCD', 0.1,  -100, NULL, 'gauge',   NULL),  -- DC transformer temperature
    ('deye_hybrid', 91,  'temperature',         '°C',  4, 3, 'ABCD', 0.1,  -100, NULL, 'gauge',   NULL),  -- radiator (AC) temperature
    ('deye_hybrid', 96,  'energy_yield',        'kWh', 5, 3, 'CDAB', 0.1,  0,    NULL, 'counter', 0.2),   -- 96-97 total PV energy
    ('deye_hybrid', 108, 'energy_yield_today',  'kWh', 4, 3, 'ABCD', 0.1,  0,    NULL, 'gauge',   NULL),  -- day PV energy (reset daily)
    ('deye_hybrid', 109, 'dc_voltage_1',        'V',   4, 3, 'ABCD', 0.1,  0,    NULL, 'gauge',   NULL),  -- PV1 voltage
    ('deye_hybrid', 110, 'dc_current_1',        'A',   4, 3, 'ABCD', 0.1,  0,    NULL, 'gauge',   NULL),  -- PV1 current
    ('deye_hybrid', 111, 'dc_voltage_2',        'V',   4, 3, 'ABCD', 0.1,  0,    NULL, 'gauge',   NULL),  -- PV2 voltage
    ('deye_hybrid', 112, 'dc_current_2',        'A',   4, 3, 'ABCD', 0.1,  0,    NULL, 'gauge',   NULL),  -- PV2 current
    ('deye_hybrid', 150, 'voltage_l1',          'V',   4, 3, 'ABCD', 0.1,  0,    NULL, 'gauge',   NULL),  -- grid voltage L1
    ('deye_hybrid', 164, 'current_l1',          'A',   1, 3, 'ABCD', 0.01, 0,    NULL, 'gauge',   NULL),  -- inverter current
    ('deye_hybrid', 175, 'active_power',        'W',   1, 3, 'ABCD', 1,    0,    NULL, 'gauge',   NULL),  -- inverter power
    ('deye_hybrid', 186, 'dc_power_1',          'W',   4, 3, 'ABCD', 1,    0,    NULL, 'gauge',   NULL),  -- PV1 power
    ('deye_hybrid', 187, 'dc_power_2',          'W',   4, 3, 'ABCD', 1,    0,    NULL, 'gauge',   NULL);  -- PV2 power

DELETE FROM device_signatures WHERE type = 'deye_hybrid';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('deye_hybrid', 0,   3, 4, 'BADC', 1,    768, 769, 'device type (0) 0x0003 or 0x0103 = single-phase hybrid, read byte-swapped (low byte first)'),
    ('deye_hybrid', 79,  3, 4, 'ABCD', 0.01, 45, 65,   'grid frequency, Hz (79, 0.01 Hz), plausible 45..65 Hz'),
    ('deye_hybrid', 150, 3, 4, 'ABCD', 0.1,  100, 300, 'grid voltage L1, V (150, 0.1 V), plausible 100..300 V');

COMMIT;
