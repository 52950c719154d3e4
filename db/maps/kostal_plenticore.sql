-- KOSTAL PLENTICORE plus / PLENTICORE G2 / G3 / MP G3 and PIKO IQ inverters,
-- KOSTAL's own Modbus TCP register table (not the SunSpec part), float32 in the
-- factory byte order "little-endian (CDAB)".
--
-- Source: KOSTAL Solar Electric, "PIKO IQ/PLENTICORE KOSTAL Interface
--         description MODBUS (TCP) & SunSpec with control information", Revision
--         2.x, valid from PIKO/PLENTICORE G1 UI 01.30, G2 SW 02.15, G3 SW 3.06
--         (kostal-solar-electric.com, Downloads > Interfaces protocols; e.g.
--         ba_kostal-interface-description-modbus-tcp_sunspec_hybrid.pdf):
--         3.1 "TCP-Port 1502, Unit-ID 71 (modifiable)"; 2.1.2 "The MODBUS
--         communication can be set to 'little-endian (CDAB) Standard Modbus'
--         (default) or 'big-endian (ABCD) Sunspec'"; 2.1.3 Read Holding
--         Registers 0x03, 1 to 125 registers; 3.2 "Query the operating data":
--         4 MODBUS Unit-ID U16, 5 MODBUS Byte Order U16 (0x00 little-endian CDAB,
--         0x01 big-endian ABCD), 32 Number of AC phases U16, 34 Number of PV
--         strings U16, 56 Inverter state U32, 98 Temperature of controller PCB,
--         100 Total DC power, 150 Actual cos phi, 152 Grid frequency, 154/156/158
--         current/active power/voltage phase 1 (160.. phase 2, 166.. phase 3),
--         172 Total AC active power, 174 reactive, 178 apparent, 258/260/266
--         current/power/voltage DC1 (268.. DC2, 278.. DC3), 320 Total yield Wh,
--         322 Daily yield Wh (all Float, 2 registers).
-- Cross-checked: kilianknoll/kostal-modbusquery kostal-modbusquery.py (the same
--         addresses; ReadFloat: byteorder Big, wordorder Little, unit 71, port
--         1502); openHAB modbus.kostal binding KostalInverterConstants.java (reads
--         the ranges 98..125, 172..179, 320..328 in single requests, gaps
--         included); evcc-io/evcc templates/definition/meter/kostal-plenticore-gen2.yaml
--         (id 71, port 1502, "float32s" = CDAB for the default "little" setting).
-- Function code: 3 (read holding registers), the only read KOSTAL supports.
-- Data types: float32 with the words swapped (CDAB) in the default setting;
--         U16/U32 likewise (56 Inverter state: U32, CDAB). With the setting
--         "big-endian (ABCD) Sunspec" this map reads garbage: its signature then
--         does not match (register 5 must read 0).
-- Addresses: the table's "Addr (dec)" is sent as it is (100 is sent as 100), as
--         kostal-modbusquery, the openHAB binding and evcc do. (The example frame
--         in 2.1.4, "registers 108 - 110" at starting address 0x006B, is the
--         generic one of the Modbus specification, not the table's numbering.)
-- Unit id: 71 (modifiable in the inverter's web UI). Port 1502. Modbus must be
--         enabled (Settings > Modbus/SunSpec (TCP)); evcc notes "Only a single
--         system may access the inverter".
-- Request limits: 1..125 registers per read (2.1.3); gaps between documented
--         values are read as the openHAB binding reads them. Five requests:
--         56..57, 98..101, 150..179, 258..287, 320..323.
-- Omitted: battery, home-consumption and power-meter (KSEM) values, SunSpec part.
-- Counters: energy_yield (Total yield) is kind 'counter'; energy_yield_today
--         (Daily yield) is reset every day and stays 'gauge'. counter_max_rate
--         64 Wh/s, the larger of two limits: power: the largest models are about
--         20 kW (PLENTICORE G3 L); 2 x 20 kW = 40000 Wh / 3600 s = 11.1 Wh/s;
--         resolution: the total is a float32 in Wh, whose step grows with the
--         value: 64 Wh from 2^29 Wh (537 MWh) on. A whole step must pass in one
--         second (the guard's shortest interval): 64 Wh/s covers totals up to
--         2^30 Wh (1.07 GWh), some 50 years of a 20 kW inverter.
-- Signature: 5 byte order = 0 (CDAB, the map's setting), 4 unit id 1..247,
--         32 number of AC phases 1..3, 34 number of PV strings 1..3 (all U16, not
--         affected by the word order) and 152 grid frequency 45..65 Hz (float32
--         CDAB). Not told apart: PLENTICORE and PIKO IQ generations among
--         themselves (one table serves them).
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/kostal_plenticore.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('kostal_plenticore',
        'KOSTAL PLENTICORE / PIKO IQ, KOSTAL Modbus TCP table, float32 CDAB (port 1502, unit id 71)',
        125, 16, 3, 0)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'kostal_plenticore';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code,
                       byte_order, scale, not_available, kind, counter_max_rate) VALUES
    ('kostal_plenticore', 56,  'operating_state',    NULL,  5, 3, 'CDAB', 1, NULL, 'gauge',   NULL),  -- Inverter state (0 off .. 6 FeedIn, 7 Throttled .. 18)
    ('kostal_plenticore', 98,  'temperature',        '°C',  3, 3, 'CDAB', 1, NULL, 'gauge',   NULL),  -- Temperature of controller PCB
    ('kostal_plenticore', 100, 'dc_power',           'W',   3, 3, 'CDAB', 1, NULL, 'gauge',   NULL),  -- Total DC power
    ('kostal_plenticore', 150, 'power_factor',       NULL,  3, 3, 'CDAB', 1, NULL, 'gauge',   NULL),  -- Actual cos phi
    ('kostal_plenticore', 152, 'frequency',          'Hz',  3, 3, 'CDAB', 1, NULL, 'gauge',   NULL),  -- Grid frequency
    ('kostal_plenticore', 154, 'current_l1',         'A',   3, 3, 'CDAB', 1, NULL, 'gauge',   NULL),  -- Current Phase 1
    ('kostal_plenticore', 156, 'active_power_l1',    'W',   3, 3, 'CDAB', 1, NULL, 'gauge',   NULL),  -- Active power Phase 1
    ('kostal_plenticore', 158, 'voltage_l1',         'V',   3, 3, 'CDAB', 1, NULL, 'gauge',   NULL),  -- Voltage Phase 1
    ('kostal_plenticore', 160, 'current_l2',         'A',   3, 3, 'CDAB', 1, NULL, 'gauge',   NULL),  -- Current Phase 2
    ('kostal_plenticore', 162, 'active_power_l2',    'W',   3, 3, 'CDAB', 1, NULL, 'gauge',   NULL),  -- Active power Phase 2
    ('kostal_plenticore', 164, 'voltage_l2',         'V',   3, 3, 'CDAB', 1, NULL, 'gauge',   NULL),  -- Voltage Phase 2
    ('kostal_plenticore', 166, 'current_l3',         'A',   3, 3, 'CDAB', 1, NULL, 'gauge',   NULL),  -- Current Phase 3
    ('kostal_plenticore', 168, 'active_power_l3',    'W',   3, 3, 'CDAB', 1, NULL, 'gauge',   NULL),  -- Active power Phase 3
    ('kostal_plenticore', 170, 'voltage_l3',         'V',   3, 3, 'CDAB', 1, NULL, 'gauge',   NULL),  -- Voltage Phase 3
    ('kostal_plenticore', 172, 'active_power',       'W',   3, 3, 'CDAB', 1, NULL, 'gauge',   NULL),  -- Total AC active power
    ('kostal_plenticore', 174, 'reactive_power',     'var', 3, 3, 'CDAB', 1, NULL, 'gauge',   NULL),  -- Total AC reactive power
    ('kostal_plenticore', 178, 'apparent_power',     'VA',  3, 3, 'CDAB', 1, NULL, 'gauge',   NULL),  -- Total AC apparent power
    ('kostal_plenticore', 258, 'dc_current_1',       'A',   3, 3, 'CDAB', 1, NULL, 'gauge',   NULL),  -- Current DC1
    ('kostal_plenticore', 260, 'dc_power_1',         'W',   3, 3, 'CDAB', 1, NULL, 'gauge',   NULL),  -- Power DC1
    ('kostal_plenticore', 266, 'dc_voltage_1',       'V',   3, 3, 'CDAB', 1, NULL, 'gauge',   NULL),  -- Voltage DC1
    ('kostal_plenticore', 268, 'dc_current_2',       'A',   3, 3, 'CDAB', 1, NULL, 'gauge',   NULL),  -- Current DC2
    ('kostal_plenticore', 270, 'dc_power_2',         'W',   3, 3, 'CDAB', 1, NULL, 'gauge',   NULL),  -- Power DC2
    ('kostal_plenticore', 276, 'dc_voltage_2',       'V',   3, 3, 'CDAB', 1, NULL, 'gauge',   NULL),  -- Voltage DC2
    ('kostal_plenticore', 278, 'dc_current_3',       'A',   3, 3, 'CDAB', 1, NULL, 'gauge',   NULL),  -- Current DC3
    ('kostal_plenticore', 280, 'dc_power_3',         'W',   3, 3, 'CDAB', 1, NULL, 'gauge',   NULL),  -- Power DC3
    ('kostal_plenticore', 286, 'dc_voltage_3',       'V',   3, 3, 'CDAB', 1, NULL, 'gauge',   NULL),  -- Voltage DC3
    ('kostal_plenticore', 320, 'energy_yield',       'Wh',  3, 3, 'CDAB', 1, NULL, 'counter', 64),    -- Total yield
    ('kostal_plenticore', 322, 'energy_yield_today', 'Wh',  3, 3, 'CDAB', 1, NULL, 'gauge',   NULL);  -- Daily yield (reset daily)

DELETE FROM device_signatures WHERE type = 'kostal_plenticore';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('kostal_plenticore', 5,   3, 4, 'ABCD', 1, 0, 0, 'MODBUS byte order (5): 0 = little-endian (CDAB), the map''s setting'),
    ('kostal_plenticore', 4,   3, 4, 'ABCD', 1, 1, 247, 'MODBUS Unit-ID (4), default 71'),
    ('kostal_plenticore', 32,  3, 4, 'ABCD', 1, 1, 3, 'number of AC phases (32)'),
    ('kostal_plenticore', 34,  3, 4, 'ABCD', 1, 1, 3, 'number of PV strings (34)'),
    ('kostal_plenticore', 152, 3, 3, 'CDAB', 1, 45, 65, 'grid frequency, Hz (152, float32 CDAB), plausible 45..65 Hz');

COMMIT;
