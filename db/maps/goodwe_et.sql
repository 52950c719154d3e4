-- GoodWe hybrid inverters of the ET family (ET, EH, BT, BH, ET-Plus; the goodwe
-- library's "platform 205/745/753"), running data block 35100..35224.
-- Not for the DT/SDT/MS string inverters: they use another block (30100..,
-- goodwe/dt.py) and need another map.
--
-- Source: no GoodWe register document for the ET series was at hand to cite;
--         every register, type and scale here is taken from the open
--         implementations below, which read these inverters with them
--         (marcelblijleven/goodwe, github.com/marcelblijleven/goodwe, is the
--         library Home Assistant's GoodWe integration uses).
-- Cross-checked: marcelblijleven/goodwe goodwe/et.py (class ET: "Modbus registers
--         from offset 0x891c (35100), count 0x7d (125)": vpv1 35103, ipv1 35104,
--         ppv1 35105 (4 bytes), vpv2/ipv2/ppv2 35107..35109, vgrid/igrid/fgrid/pgrid
--         35121/35122/35123/35125 and the same for L2 (35126..35130) and L3
--         (35131..35135), total_inverter_power 35138, temperature_air 35174,
--         temperature (radiator) 35176, e_total 35191, e_day 35193, e_total_exp
--         35195, e_day_exp 35199, e_total_imp 35200, e_day_imp 35202;
--         read_device_info 35000..35032: 35001 rated power, 35002 AC output type)
--         and goodwe/sensor.py (Voltage/Current: U16 / 10, Frequency: S16 / 100,
--         PowerS: S16 W, Power4: U32 W, Temp: S16 / 10, Energy4: U32 / 10 kWh,
--         Energy: U16 / 10 kWh; 0xFFFF / 0xFFFFFFFF mean "no value");
--         evcc-io/evcc templates/definition/meter/goodwe-hybrid.yaml (id 247,
--         35105.. PV powers uint32, 35191 "PV Energy-Total" uint32 x 0.1).
-- Function code: 3 (read holding registers), as the goodwe library reads.
-- Data types: big-endian; 32-bit values high word first (ABCD).
-- Addresses: GoodWe's register numbers are the 0-based addresses on the wire
--         (the library sends 0x891C = 35100 for register 35100).
-- Unit id: 247 (0xF7), the goodwe library's and evcc's default.
-- Port: standard Modbus TCP on 502 (goodwe README: "Since v0.4.x the library
--         also supports standard Modbus/TCP over port 502"). The dongles' UDP
--         port 8899 speaks RTU frames over UDP, which is none of this poller's
--         transports; RS485 (9600 baud) through a gateway works as rtuovertcp.
-- Request limits: the library reads the whole block, 125 registers from 35100,
--         in one request, so gaps may be read: max_gap 40 makes this map one
--         request, 35103..35202. The library waits 1 s for a reply (timeout 1,
--         retries 3); timeout_s 3 leaves room for the WiFi dongles.
-- Omitted: PV3/PV4 (present on some models only), per-phase frequencies, backup
--         (EPS) outputs, battery values (35180.., 37000..), meter block (36000..).
-- Counters: energy_yield (e_total, total PV generation), energy_export
--         (e_total_exp) and energy_import (e_total_imp) are kind 'counter';
--         energy_yield_today, energy_export_today and energy_import_today are
--         reset every day and stay 'gauge'.
--         energy_yield: counter_max_rate 0.2 kWh/s, the larger of two limits:
--         power: the largest models of the family are 25..30 kW (the library
--         treats rated power >= 25000 W as its top class), with PV up to 1.5 x
--         that: 2 x 45 kW = 90 kWh / 3600 s = 0.025 kWh/s; resolution: the register
--         counts 0.1 kWh steps, and one step between two polls a second apart
--         must pass, with margin: 2 x 0.1 kWh/s = 0.2 kWh/s.
--         energy_import / energy_export: NULL: they are the grid meter's totals
--         (GoodWe smart meter with current transformers); the grid connection, not
--         the inverter, limits them.
-- Signature: 35001 rated power (1..50 kW), 35002 AC output type (0 single
--         phase, 1 three phase 4 wire, 2 three phase 3 wire) and 35123 grid
--         frequency 45..65 Hz. Not told apart: the ET, EH, BT, BH and ET-Plus
--         models among themselves (one map serves them).
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/goodwe_et.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('goodwe_et',
        'GoodWe ET/EH/BT/BH hybrid inverter, running data 35100.. (holding registers, unit id 247)',
        125, 40, 3, 0)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'goodwe_et';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code,
                       byte_order, scale, not_available, kind, counter_max_rate) VALUES
    ('goodwe_et', 35103, 'dc_voltage_1',        'V',   4, 3, 'ABCD', 0.1,  65535,      'gauge',   NULL),  -- vpv1
    ('goodwe_et', 35104, 'dc_current_1',        'A',   4, 3, 'ABCD', 0.1,  65535,      'gauge',   NULL),  -- ipv1
    ('goodwe_et', 35105, 'dc_power_1',          'W',   5, 3, 'ABCD', 1,    4294967295, 'gauge',   NULL),  -- ppv1
    ('goodwe_et', 35107, 'dc_voltage_2',        'V',   4, 3, 'ABCD', 0.1,  65535,      'gauge',   NULL),  -- vpv2
    ('goodwe_et', 35108, 'dc_current_2',        'A',   4, 3, 'ABCD', 0.1,  65535,      'gauge',   NULL),  -- ipv2
    ('goodwe_et', 35109, 'dc_power_2',          'W',   5, 3, 'ABCD', 1,    4294967295, 'gauge',   NULL),  -- ppv2
    ('goodwe_et', 35121, 'voltage_l1',          'V',   4, 3, 'ABCD', 0.1,  65535,      'gauge',   NULL),  -- vgrid, on-grid L1
    ('goodwe_et', 35122, 'current_l1',          'A',   4, 3, 'ABCD', 0.1,  65535,      'gauge',   NULL),  -- igrid
    ('goodwe_et', 35123, 'frequency',           'Hz',  1, 3, 'ABCD', 0.01, NULL,       'gauge',   NULL),  -- fgrid
    ('goodwe_et', 35125, 'active_power_l1',     'W',   1, 3, 'ABCD', 1,    NULL,       'gauge',   NULL),  -- pgrid, on-grid L1 power
    ('goodwe_et', 35126, 'voltage_l2',          'V',   4, 3, 'ABCD', 0.1,  65535,      'gauge',   NULL),  -- vgrid2
    ('goodwe_et', 35127, 'current_l2',          'A',   4, 3, 'ABCD', 0.1,  65535,      'gauge',   NULL),  -- igrid2
    ('goodwe_et', 35130, 'active_power_l2',     'W',   1, 3, 'ABCD', 1,    NULL,       'gauge',   NULL),  -- pgrid2
    ('goodwe_et', 35131, 'voltage_l3',          'V',   4, 3, 'ABCD', 0.1,  65535,      'gauge',   NULL),  -- vgrid3
    ('goodwe_et', 35132, 'current_l3',          'A',   4, 3, 'ABCD', 0.1,  65535,      'gauge',   NULL),  -- igrid3
    ('goodwe_et', 35135, 'active_power_l3',     'W',   1, 3, 'ABCD', 1,    NULL,       'gauge',   NULL),  -- pgrid3
    ('goodwe_et', 35138, 'active_power',        'W',   1, 3, 'ABCD', 1,    NULL,       'gauge',   NULL),  -- total_inverter_power
    ('goodwe_et', 35174, 'temperature_air',     '°C',  1, 3, 'ABCD', 0.1,  32767,      'gauge',   NULL),  -- inverter temperature (air)
    ('goodwe_et', 35176, 'temperature',         '°C',  1, 3, 'ABCD', 0.1,  32767,      'gauge',   NULL),  -- inverter temperature (radiator)
    ('goodwe_et', 35191, 'energy_yield',        'kWh', 5, 3, 'ABCD', 0.1,  4294967295, 'counter', 0.2),   -- e_total, total PV generation
    ('goodwe_et', 35193, 'energy_yield_today',  'kWh', 5, 3, 'ABCD', 0.1,  4294967295, 'gauge',   NULL),  -- e_day (reset daily)
    ('goodwe_et', 35195, 'energy_export',       'kWh', 5, 3, 'ABCD', 0.1,  4294967295, 'counter', NULL),  -- e_total_exp
    ('goodwe_et', 35199, 'energy_export_today', 'kWh', 4, 3, 'ABCD', 0.1,  65535,      'gauge',   NULL),  -- e_day_exp (reset daily)
    ('goodwe_et', 35200, 'energy_import',       'kWh', 5, 3, 'ABCD', 0.1,  4294967295, 'counter', NULL),  -- e_total_imp
    ('goodwe_et', 35202, 'energy_import_today', 'kWh', 4, 3, 'ABCD', 0.1,  65535,      'gauge',   NULL);  -- e_day_imp (reset daily)

DELETE FROM device_signatures WHERE type = 'goodwe_et';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('goodwe_et', 35001, 3, 4, 'ABCD', 1, 1000, 50000, 'rated power, W (35001), 1..50 kW'),
    ('goodwe_et', 35002, 3, 4, 'ABCD', 1, 0, 2, 'AC output type (35002): 0 single phase, 1 3P4W, 2 3P3W'),
    ('goodwe_et', 35123, 3, 1, 'ABCD', 0.01, 45, 65, 'grid frequency L1, Hz (35123), plausible 45..65 Hz');

COMMIT;
