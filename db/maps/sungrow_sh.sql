-- Sungrow SH hybrid inverters (SH-RS single phase, SH-RT/-20/-V112/-V122 and
-- SH-T three phase; SH3K6/SH4K6/SH5K and MG5RL/MG6RL), read-only (input)
-- registers. Not for the SG string inverters: they follow Sungrow's other
-- protocol, "Communication Protocol of PV Grid-Connected String Inverters"
-- (evcc's sungrow-inverter template: total yield at 5003, meter at 5082..), and
-- this map's signature accepts only the SH range of device type codes.
--
-- Source: Sungrow Power Supply, "Communication Protocol of Residential Hybrid
--         Inverter" (V1.0.20, with the 2016..2019 version history; later
--         TI_20240924 V1.1.5), distributed by Sungrow support (sungrowpower.com;
--         a copy of V1.0.20 is on manuals.plus):
--         "Read-only register type supports the command code of 0x04", port 502,
--         address 1..247; 4990..4999 SN, 5000 device type code (SH5K-20 0xD09 ..
--         SH10RT 0xE03), 5001 nominal output power (0.1 kW), 5002 output type
--         (0 single phase, 1 3P4L, 2 3P3L).
-- Cross-checked: github.com/mkaiser/Sungrow-SHx-Inverter-Modbus-Home-Assistant
--         modbus_sungrow.yaml (it cites TI_20240924 V1.1.5; every entry
--         gives the wire address and the protocol's register number: "address:
--         4999 # reg 5000"; device type codes 0x0D03..0x0E28; U32/S32 with
--         "swap: word"); evcc-io/evcc templates/definition/meter/sungrow-hybrid.yaml
--         (input 5016 "Total DC power" uint32s, 13002 "Total PV Generation, 0.1kWh"
--         uint32s, 13036 "Total Import Energy, 0.1kWh", 13009 export power int32s,
--         5018..5020 phase voltages x 0.1).
-- Function code: 4 (read input registers).
-- Addresses: Sungrow numbers registers from 1: register_address = the protocol's
--         register number - 1 (device type code: register 5000 -> 4999; total
--         PV generation: 13003..13004 -> 13002).
-- Data types: 16-bit values big-endian; 32-bit values low word first (CDAB:
--         "swap: word" in mkaiser's map, "uint32s"/"int32s" in evcc's); V, A,
--         kWh and deg C x 10, frequency x 100, power factor x 1000, power in W.
--         Values a model lacks read 0xFFFF (mkaiser: MPPT3 and the phase B/C
--         voltages on single-phase models), so uint16 values carry 65535 as
--         not_available.
-- Unit id: 1 (mkaiser: "Default is '1'"). Port 502.
-- Connection: the inverter's own LAN port is the reliable one; the WiNet-S
--         dongle needs current firmware (evcc: older versions do not deliver all
--         values). mkaiser waits 5 ms between messages on LAN and "30 or higher
--         for WiNet-S": request_pause_ms 30; and answers are slow after
--         connecting (mkaiser sets a delay after connecting and a 30 s timeout):
--         timeout_s 10.
-- Request limits: four requests, 5007..5034, 5241, 12999..13003 and
--         13030..13046 (none near the Modbus maximum; max_block 100).
-- Omitted: battery values, backup (EPS) outputs, meter phase powers (5600..).
-- Counters: energy_yield (total PV generation), energy_import and energy_export
--         (the grid meter's totals) are kind 'counter'; energy_yield_today,
--         energy_import_today, energy_export_today are reset every day and stay
--         'gauge'.
--         energy_yield: counter_max_rate 0.2 kWh/s, the larger of two limits:
--         power: the largest SH is 25 kW (SH25T), with PV up to 1.5 x that:
--         2 x 37.5 kW = 75 kWh / 3600 s = 0.021 kWh/s; resolution: the register
--         counts 0.1 kWh steps, and one step between two polls a second apart must
--         pass, with margin: 2 x 0.1 kWh/s = 0.2 kWh/s.
--         energy_import / energy_export: NULL: the grid connection, not the
--         inverter, limits them, and the meter measures through transformers.
-- Signature: device type code (4999) in 0x0D00..0x0EFF (the SH codes of
--         Sungrow's table and mkaiser's list), output type (5001) 0..2 and
--         nominal output power (5000) 3..25 kW. Not told apart: the SH models
--         among themselves (one map serves them).
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/sungrow_sh.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('sungrow_sh',
        'Sungrow SH hybrid inverter (RS, RT, T), input registers 5000.. and 13000.., 32-bit low word first',
        100, 16, 10, 30)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'sungrow_sh';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code,
                       byte_order, scale, not_available, kind, counter_max_rate) VALUES
    ('sungrow_sh', 5007,  'temperature',         '°C',  1, 4, 'ABCD', 0.1,   NULL,  'gauge',   NULL),  -- reg 5008 inverter temperature
    ('sungrow_sh', 5010,  'dc_voltage_1',        'V',   4, 4, 'ABCD', 0.1,   65535, 'gauge',   NULL),  -- reg 5011 MPPT1 voltage
    ('sungrow_sh', 5011,  'dc_current_1',        'A',   4, 4, 'ABCD', 0.1,   65535, 'gauge',   NULL),  -- reg 5012 MPPT1 current
    ('sungrow_sh', 5012,  'dc_voltage_2',        'V',   4, 4, 'ABCD', 0.1,   65535, 'gauge',   NULL),  -- reg 5013 MPPT2 voltage
    ('sungrow_sh', 5013,  'dc_current_2',        'A',   4, 4, 'ABCD', 0.1,   65535, 'gauge',   NULL),  -- reg 5014 MPPT2 current
    ('sungrow_sh', 5016,  'dc_power',            'W',   5, 4, 'CDAB', 1,     NULL,  'gauge',   NULL),  -- reg 5017-5018 total DC power
    ('sungrow_sh', 5018,  'voltage_l1',          'V',   4, 4, 'ABCD', 0.1,   65535, 'gauge',   NULL),  -- reg 5019 phase A voltage
    ('sungrow_sh', 5019,  'voltage_l2',          'V',   4, 4, 'ABCD', 0.1,   65535, 'gauge',   NULL),  -- reg 5020 phase B voltage
    ('sungrow_sh', 5020,  'voltage_l3',          'V',   4, 4, 'ABCD', 0.1,   65535, 'gauge',   NULL),  -- reg 5021 phase C voltage
    ('sungrow_sh', 5032,  'reactive_power',      'var', 2, 4, 'CDAB', 1,     NULL,  'gauge',   NULL),  -- reg 5033-5034 reactive power
    ('sungrow_sh', 5034,  'power_factor',        NULL,  1, 4, 'ABCD', 0.001, NULL,  'gauge',   NULL),  -- reg 5035 power factor
    ('sungrow_sh', 5241,  'frequency',           'Hz',  4, 4, 'ABCD', 0.01,  65535, 'gauge',   NULL),  -- reg 5242 grid frequency
    ('sungrow_sh', 12999, 'operating_state',     NULL,  4, 4, 'ABCD', 1,     NULL,  'gauge',   NULL),  -- reg 13000 running state (bits)
    ('sungrow_sh', 13001, 'energy_yield_today',  'kWh', 4, 4, 'ABCD', 0.1,   NULL,  'gauge',   NULL),  -- reg 13002 daily PV generation (reset daily)
    ('sungrow_sh', 13002, 'energy_yield',        'kWh', 5, 4, 'CDAB', 0.1,   NULL,  'counter', 0.2),   -- reg 13003-13004 total PV generation
    ('sungrow_sh', 13030, 'current_l1',          'A',   1, 4, 'ABCD', 0.1,   NULL,  'gauge',   NULL),  -- reg 13031 phase A current
    ('sungrow_sh', 13031, 'current_l2',          'A',   1, 4, 'ABCD', 0.1,   NULL,  'gauge',   NULL),  -- reg 13032 phase B current
    ('sungrow_sh', 13032, 'current_l3',          'A',   1, 4, 'ABCD', 0.1,   NULL,  'gauge',   NULL),  -- reg 13033 phase C current
    ('sungrow_sh', 13033, 'active_power',        'W',   2, 4, 'CDAB', 1,     NULL,  'gauge',   NULL),  -- reg 13034-13035 total active power
    ('sungrow_sh', 13035, 'energy_import_today', 'kWh', 4, 4, 'ABCD', 0.1,   NULL,  'gauge',   NULL),  -- reg 13036 daily imported energy (reset daily)
    ('sungrow_sh', 13036, 'energy_import',       'kWh', 5, 4, 'CDAB', 0.1,   NULL,  'counter', NULL),  -- reg 13037-13038 total imported energy
    ('sungrow_sh', 13044, 'energy_export_today', 'kWh', 4, 4, 'ABCD', 0.1,   NULL,  'gauge',   NULL),  -- reg 13045 daily exported energy (reset daily)
    ('sungrow_sh', 13045, 'energy_export',       'kWh', 5, 4, 'CDAB', 0.1,   NULL,  'counter', NULL);  -- reg 13046-13047 total exported energy

DELETE FROM device_signatures WHERE type = 'sungrow_sh';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('sungrow_sh', 4999, 4, 4, 'ABCD', 1, 3328, 3839, 'device type code (reg 5000) 0x0D00..0x0EFF: SH hybrid'),
    ('sungrow_sh', 5000, 4, 4, 'ABCD', 100, 3000, 25000, 'nominal output power (reg 5001, 0.1 kW), 3..25 kW'),
    ('sungrow_sh', 5001, 4, 4, 'ABCD', 1, 0, 2, 'output type (reg 5002): 0 single phase, 1 3P4L, 2 3P3L');

COMMIT;
