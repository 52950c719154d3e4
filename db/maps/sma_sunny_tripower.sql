-- SMA Sunny Tripower (STP 5000TL-20 .. 25000TL-30, STP 8.0-10.0-3AV-40,
-- STP x.0-3SE-40) via the SMA Modbus profile (native, not SunSpec)
--
-- Source: SMA Solar Technology AG, "SMA Modbus® Interface - Technical
--         Information" (SMA-Modbus-TI-en) and the device's register list
--         "MODBUS-HTML_<device>" (e.g. MODBUS-HTML_STP8.0-10.0-3AV-40_GG10_V10),
--         published on sma.de under Downloads for each inverter.
-- Cross-checked: hasenradball/SMA-SunnyTripower-Modbus sma_modbus/sma_modbus.py
--         (30513 U64 total yield Wh, 30517 U64 daily yield, 30769/30771/30773
--         DC A/V/W input A, 30957/30959/30961 input B, 30775..30781 S32 active
--         power total/L1..L3, 30977..30981 S32 currents /1000); evcc template
--         "sma-inverter-modbus" (unit id 3, 30775 decoded as int32 with NaN);
--         modbuscloud.com SMA template (30783..30787 grid voltages L1..L3);
--         an SMA C header (30803 grid frequency, 30805 reactive power,
--         30813 apparent power, 30953 internal temperature).
-- Function code: 3 (read holding registers); SMA's profile also answers the
--         30xxx measured values with function 4 (evcc uses 4).
-- Addresses: the SMA register lists give the protocol address directly
--         (30775 is sent as 30775).
-- Data types / scaling (SMA "FIX n" = n decimals): S32 FIX0 W/var/VA; S32 FIX3
--         A (scale 0.001); S32 FIX2 DC V (0.01); U32 FIX2 grid V and Hz (0.01);
--         S32 FIX1 °C (0.1); U64 FIX0 Wh. Big-endian (ABCD).
-- Not available (SMA NaN): S32 0x80000000 = -2147483648, U32 0xFFFFFFFF =
--         4294967295, U64 0xFFFFFFFFFFFFFFFF; at night most values are NaN.
-- Unit id: 3 (SMA default for the device itself; 1 addresses the "device
--         information" of the Speedwire/Webconnect interface). The Modbus TCP
--         server must be enabled (installer access) in the inverter's web UI;
--         port 502.
-- Request limits: max_gap 0: requests start and end on documented values only,
--         as SMA devices may refuse a request that touches unassigned
--         registers (and 32-bit values must be read whole). Seven requests.
-- Counters: energy_yield (Metering.TotWhOut) is kind 'counter'; energy_yield_today
--         (Metering.DyWhOut) is reset every day and stays 'gauge'.
--         counter_max_rate 62 Wh/s: the largest Sunny Tripower in the SMA Modbus
--         profile is the 110 kW class (STP 110-60, CORE2); 2 x 110 kW = 220 kW
--         = 220000 Wh / 3600 s = 61.1 Wh/s, rounded up to 62.
-- Signature: 30051 Nameplate.MainModel (device class, U32) = 8001 "Solar
--         Inverters" and 30231 WMaxOutRtg (rated active power, U32) in 1..150 kW,
--         both static (the measured values are NaN at night). Sources: the SMA
--         register lists; cross-checked with python SMA Modbus libraries
--         ("Sunny Tripower and Sunny Boy share device class 8001 ... distinguish by
--         device model (Nameplate.Model, register 30053)"). Not told apart: Sunny
--         Boy inverters (same class 8001, same 30xxx measurement registers, their
--         30053 type codes interleave with the Tripower's, so no range separates
--         them). This map reads a Sunny Boy correctly; L2/L3 then read NaN.
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/sma_sunny_tripower.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('sma_sunny_tripower',
        'SMA Sunny Tripower, SMA Modbus profile (unit id 3, 30xxx registers)',
        125, 0, 3, 0)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'sma_sunny_tripower';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code, byte_order, scale, not_available, kind, counter_max_rate) VALUES
    ('sma_sunny_tripower', 30513, 'energy_yield',       'Wh',  7, 3, 'ABCD', 1,     18446744073709551615, 'counter', 62), -- Metering.TotWhOut, U64
    ('sma_sunny_tripower', 30517, 'energy_yield_today', 'Wh',  7, 3, 'ABCD', 1,     18446744073709551615, 'gauge',   NULL), -- Metering.DyWhOut, U64
    ('sma_sunny_tripower', 30769, 'dc_current_1',       'A',   2, 3, 'ABCD', 0.001, -2147483648, 'gauge',   NULL),          -- DcMs.Amp input A, S32 FIX3
    ('sma_sunny_tripower', 30771, 'dc_voltage_1',       'V',   2, 3, 'ABCD', 0.01,  -2147483648, 'gauge',   NULL),          -- DcMs.Vol input A, S32 FIX2
    ('sma_sunny_tripower', 30773, 'dc_power_1',         'W',   2, 3, 'ABCD', 1,     -2147483648, 'gauge',   NULL),          -- DcMs.Watt input A, S32 FIX0
    ('sma_sunny_tripower', 30775, 'active_power',       'W',   2, 3, 'ABCD', 1,     -2147483648, 'gauge',   NULL),          -- GridMs.TotW, S32 FIX0
    ('sma_sunny_tripower', 30777, 'active_power_l1',    'W',   2, 3, 'ABCD', 1,     -2147483648, 'gauge',   NULL),          -- GridMs.W.phsA
    ('sma_sunny_tripower', 30779, 'active_power_l2',    'W',   2, 3, 'ABCD', 1,     -2147483648, 'gauge',   NULL),          -- GridMs.W.phsB
    ('sma_sunny_tripower', 30781, 'active_power_l3',    'W',   2, 3, 'ABCD', 1,     -2147483648, 'gauge',   NULL),          -- GridMs.W.phsC
    ('sma_sunny_tripower', 30783, 'voltage_l1',         'V',   5, 3, 'ABCD', 0.01,  4294967295, 'gauge',   NULL),           -- GridMs.PhV.phsA, U32 FIX2
    ('sma_sunny_tripower', 30785, 'voltage_l2',         'V',   5, 3, 'ABCD', 0.01,  4294967295, 'gauge',   NULL),           -- GridMs.PhV.phsB
    ('sma_sunny_tripower', 30787, 'voltage_l3',         'V',   5, 3, 'ABCD', 0.01,  4294967295, 'gauge',   NULL),           -- GridMs.PhV.phsC
    ('sma_sunny_tripower', 30803, 'frequency',          'Hz',  5, 3, 'ABCD', 0.01,  4294967295, 'gauge',   NULL),           -- GridMs.Hz, U32 FIX2
    ('sma_sunny_tripower', 30805, 'reactive_power',     'var', 2, 3, 'ABCD', 1,     -2147483648, 'gauge',   NULL),          -- GridMs.TotVAr, S32 FIX0
    ('sma_sunny_tripower', 30813, 'apparent_power',     'VA',  2, 3, 'ABCD', 1,     -2147483648, 'gauge',   NULL),          -- GridMs.TotVA, S32 FIX0
    ('sma_sunny_tripower', 30953, 'temperature',        '°C',  2, 3, 'ABCD', 0.1,   -2147483648, 'gauge',   NULL),          -- Coolsys.Cab.TmpVal, S32 FIX1
    ('sma_sunny_tripower', 30957, 'dc_current_2',       'A',   2, 3, 'ABCD', 0.001, -2147483648, 'gauge',   NULL),          -- DcMs.Amp input B
    ('sma_sunny_tripower', 30959, 'dc_voltage_2',       'V',   2, 3, 'ABCD', 0.01,  -2147483648, 'gauge',   NULL),          -- DcMs.Vol input B
    ('sma_sunny_tripower', 30961, 'dc_power_2',         'W',   2, 3, 'ABCD', 1,     -2147483648, 'gauge',   NULL),          -- DcMs.Watt input B
    ('sma_sunny_tripower', 30977, 'current_l1',         'A',   2, 3, 'ABCD', 0.001, -2147483648, 'gauge',   NULL),          -- GridMs.A.phsA, S32 FIX3
    ('sma_sunny_tripower', 30979, 'current_l2',         'A',   2, 3, 'ABCD', 0.001, -2147483648, 'gauge',   NULL),          -- GridMs.A.phsB
    ('sma_sunny_tripower', 30981, 'current_l3',         'A',   2, 3, 'ABCD', 0.001, -2147483648, 'gauge',   NULL);          -- GridMs.A.phsC

DELETE FROM device_signatures WHERE type = 'sma_sunny_tripower';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('sma_sunny_tripower', 30051, 3, 5, 'ABCD', 1, 8001, 8001, 'Nameplate.MainModel, device class 8001 = Solar Inverters (U32)'),
    ('sma_sunny_tripower', 30231, 3, 5, 'ABCD', 1, 1000, 150000, 'WMaxOutRtg, rated active power, W (U32): 1 kW .. 150 kW');

COMMIT;
