-- Huawei SUN2000 inverters (KTL-M0/M1/M2, L1 and similar) via SDongle or the
-- inverter's own Modbus TCP
--
-- Source: Huawei Technologies, "SUN2000 Solar Inverter Modbus Interface
--         Definitions" (register table "Running information"), published on
--         support.huawei.com (FusionSolar / SUN2000 documentation).
-- Cross-checked: wlcrs/huawei-solar-lib src/huawei_solar/registers.py
--         (REGISTERS and PV_REGISTERS: e.g. ACTIVE_POWER I32Register("W", 1,
--         32080), INPUT_POWER I32Register("W", 1, 32064), PV_01_VOLTAGE
--         I16Register("V", 10, 32016), ACCUMULATED_YIELD_ENERGY
--         U32Register("kWh", 100, 32106)); its gain G becomes scale 1/G here.
-- Function code: 3 (read holding registers) for everything, including these
--         read-only 3xxxx values.
-- Addresses: Huawei's register numbers are already the 0-based protocol
--         addresses (32080 is sent as 32080); no 30001/40001 offset applies.
-- Data types: big-endian (ABCD) 16- and 32-bit integers.
-- Not available: huawei-solar-lib treats the maximum value of each type as
--         "invalid": int16 32767, int32 2147483647, uint16 65535,
--         uint32 4294967295; those raw values are not written.
-- Unit id: 1 for the inverter behind an SDongle (port 502; "Modbus TCP" must
--         be enabled, unrestricted, in the FusionSolar app); the inverter's
--         built-in WLAN access point answers on port 6607 with unit id 0.
--         Only one Modbus client at a time is reliable.
-- Request limits: huawei-solar-lib batches at most 64 registers per request
--         (MAX_BATCHED_REGISTERS_COUNT) and bridges gaps up to 16
--         (MAX_BATCHED_REGISTERS_GAP); the SDongle answers slowly (users report
--         seconds per reply), hence a 10 s timeout and a pause between requests.
--         This map reads in two requests: 32016..32023 and 32064..32115.
-- Strings: PV inputs 1..4 are mapped; inverters with fewer inputs report 0 on
--         the unused ones, more inputs continue at 32024 (PV5) in steps of 2.
-- Counters: energy_yield (accumulated yield) is kind 'counter'; energy_yield_today
--         is reset at midnight and stays 'gauge'. counter_max_rate 0.2 kWh/s: the
--         largest SUN2000 is rated 300 kW (SUN2000-330KTL, 330 kVA maximum);
--         2 x 330 kW = 660 kW = 660 kWh / 3600 s = 0.183 kWh/s, rounded up to 0.2.
--         (One 0.01 kWh step per second would need only 0.01.)
-- Connect pause: huawei-solar-lib sleeps 1 s after connecting "to prevent a
--         timeout on the first request" (huawei_solar.py); connect_pause_ms 1000.
-- Signature: the equipment block huawei-solar-lib reads first (registers.py):
--         30071 number of PV strings (U16), 30072 number of MPP trackers (U16) and
--         30073 rated power (U32, W), in plausible ranges. Model ids (30070) are
--         not listed anywhere public as a range, so they are not used.
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/huawei_sun2000.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms, connect_pause_ms)
VALUES ('huawei_sun2000',
        'Huawei SUN2000 inverter (holding registers 32xxx) via SDongle / Modbus TCP',
        64, 16, 10, 200, 1000)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms,
    connect_pause_ms = EXCLUDED.connect_pause_ms;

DELETE FROM registers WHERE type = 'huawei_sun2000';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code, byte_order, scale, not_available, kind, counter_max_rate) VALUES
    ('huawei_sun2000', 32016, 'dc_voltage_1',       'V',   1, 3, 'ABCD', 0.1,   32767, 'gauge',   NULL),       -- PV1 voltage, I16 gain 10
    ('huawei_sun2000', 32017, 'dc_current_1',       'A',   1, 3, 'ABCD', 0.01,  32767, 'gauge',   NULL),       -- PV1 current, I16 gain 100
    ('huawei_sun2000', 32018, 'dc_voltage_2',       'V',   1, 3, 'ABCD', 0.1,   32767, 'gauge',   NULL),       -- PV2 voltage
    ('huawei_sun2000', 32019, 'dc_current_2',       'A',   1, 3, 'ABCD', 0.01,  32767, 'gauge',   NULL),       -- PV2 current
    ('huawei_sun2000', 32020, 'dc_voltage_3',       'V',   1, 3, 'ABCD', 0.1,   32767, 'gauge',   NULL),       -- PV3 voltage
    ('huawei_sun2000', 32021, 'dc_current_3',       'A',   1, 3, 'ABCD', 0.01,  32767, 'gauge',   NULL),       -- PV3 current
    ('huawei_sun2000', 32022, 'dc_voltage_4',       'V',   1, 3, 'ABCD', 0.1,   32767, 'gauge',   NULL),       -- PV4 voltage
    ('huawei_sun2000', 32023, 'dc_current_4',       'A',   1, 3, 'ABCD', 0.01,  32767, 'gauge',   NULL),       -- PV4 current
    ('huawei_sun2000', 32064, 'dc_power',           'W',   2, 3, 'ABCD', 1,     2147483647, 'gauge',   NULL),  -- input power, I32
    ('huawei_sun2000', 32066, 'voltage_l1_l2',      'V',   4, 3, 'ABCD', 0.1,   65535, 'gauge',   NULL),       -- line voltage A-B (grid voltage on single-phase models), U16 gain 10
    ('huawei_sun2000', 32067, 'voltage_l2_l3',      'V',   4, 3, 'ABCD', 0.1,   65535, 'gauge',   NULL),       -- line voltage B-C
    ('huawei_sun2000', 32068, 'voltage_l3_l1',      'V',   4, 3, 'ABCD', 0.1,   65535, 'gauge',   NULL),       -- line voltage C-A
    ('huawei_sun2000', 32069, 'voltage_l1',         'V',   4, 3, 'ABCD', 0.1,   65535, 'gauge',   NULL),       -- phase A voltage
    ('huawei_sun2000', 32070, 'voltage_l2',         'V',   4, 3, 'ABCD', 0.1,   65535, 'gauge',   NULL),       -- phase B voltage
    ('huawei_sun2000', 32071, 'voltage_l3',         'V',   4, 3, 'ABCD', 0.1,   65535, 'gauge',   NULL),       -- phase C voltage
    ('huawei_sun2000', 32072, 'current_l1',         'A',   2, 3, 'ABCD', 0.001, 2147483647, 'gauge',   NULL),  -- phase A current, I32 gain 1000
    ('huawei_sun2000', 32074, 'current_l2',         'A',   2, 3, 'ABCD', 0.001, 2147483647, 'gauge',   NULL),  -- phase B current
    ('huawei_sun2000', 32076, 'current_l3',         'A',   2, 3, 'ABCD', 0.001, 2147483647, 'gauge',   NULL),  -- phase C current
    ('huawei_sun2000', 32080, 'active_power',       'W',   2, 3, 'ABCD', 1,     2147483647, 'gauge',   NULL),  -- active power, I32
    ('huawei_sun2000', 32082, 'reactive_power',     'var', 2, 3, 'ABCD', 1,     2147483647, 'gauge',   NULL),  -- reactive power, I32
    ('huawei_sun2000', 32084, 'power_factor',       NULL,  1, 3, 'ABCD', 0.001, 32767, 'gauge',   NULL),       -- power factor, I16 gain 1000
    ('huawei_sun2000', 32085, 'frequency',          'Hz',  4, 3, 'ABCD', 0.01,  65535, 'gauge',   NULL),       -- grid frequency, U16 gain 100
    ('huawei_sun2000', 32086, 'efficiency',         '%',   4, 3, 'ABCD', 0.01,  65535, 'gauge',   NULL),       -- efficiency, U16 gain 100
    ('huawei_sun2000', 32087, 'temperature',        '°C',  1, 3, 'ABCD', 0.1,   32767, 'gauge',   NULL),       -- internal temperature, I16 gain 10
    ('huawei_sun2000', 32089, 'operating_state',    NULL,  4, 3, 'ABCD', 1,     65535, 'gauge',   NULL),       -- device status (0x0200 on-grid, 0xA000 no irradiation ...)
    ('huawei_sun2000', 32106, 'energy_yield',       'kWh', 5, 3, 'ABCD', 0.01,  4294967295, 'counter', 0.2),  -- accumulated energy yield, U32 gain 100
    ('huawei_sun2000', 32114, 'energy_yield_today', 'kWh', 5, 3, 'ABCD', 0.01,  4294967295, 'gauge',   NULL);  -- daily energy yield, U32 gain 100

DELETE FROM device_signatures WHERE type = 'huawei_sun2000';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('huawei_sun2000', 30071, 3, 4, 'ABCD', 1, 1, 32, 'number of PV strings (NB_PV_STRINGS, U16)'),
    ('huawei_sun2000', 30072, 3, 4, 'ABCD', 1, 1, 16, 'number of MPP trackers (NB_MPP_TRACKS, U16)'),
    ('huawei_sun2000', 30073, 3, 5, 'ABCD', 1, 1000, 400000, 'rated power, W (RATED_POWER, U32): 1 kW .. 400 kW');

COMMIT;
