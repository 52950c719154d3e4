-- Growatt grid-tied and hybrid inverters speaking the Growatt "Modbus RTU
-- Protocol II" (MIC, MIN TL-X/XE, MOD TL3-X, MID, MAX, and the PV part of
-- SPH/SPA): the common input-register block 0..124.
--
-- Source: Growatt, "Growatt Inverter Modbus RTU Protocol" V1.20 and "Modbus RTU
--         Protocol II" V1.24 (Growatt New Energy; distributed by Growatt to
--         installers and widely republished), input registers 0..124 ("Protocol
--         II" keeps the V1.20 layout for this block and adds 3000..3124 for
--         TL-X/TL-XH and 1000.. for storage, not used here); holding registers 43
--         (device type code) and 44 (MPPT trackers and grid phases).
-- Cross-checked: github.com/WouterTuinstra/Homeassistant-Growatt-Local-Modbus
--         custom_components/growatt_local/API/device_type/inverter_120.py
--         (INPUT_REGISTERS_120: status 0, input power 1 (2 registers), PV1 3/4/5,
--         PV2 7/8/9, output power 35, grid frequency 37 (scale 100), output
--         1..3 voltage/current 38/39, 42/43, 46/47, energy today 53, energy total
--         55, temperature 93, IPM temperature 94; default scale 10) and
--         .../device_type/base.py (DEVICE_TYPE_CODE_REGISTER 43,
--         NUMBER_OF_TRACKERS_AND_PHASES_REGISTER 44: trackers in the high byte,
--         phases in the low byte; codes 0x100..0xA00, 0x1500); evcc-io/evcc
--         templates growatt-min-tlxe.yaml (input 35 int32 x 0.1 W, input 55
--         uint32 x 0.1 kWh) and growatt-hybrid.yaml (input 1 Ppv uint32 x 0.1).
-- Function code: 4 (read input registers) for the values; 3 for the two
--         identification registers of the signature.
-- Data types: 16-bit values unsigned, 32-bit values two registers high word
--         first (ABCD); fixed point: V, A, W, kWh and deg C x 10 (scale 0.1),
--         frequency x 100 (scale 0.01).
-- Addresses: the protocol's register numbers are the 0-based addresses sent on
--         the wire (input register 35 is sent as 35; evcc and growatt_local use
--         them unchanged).
-- Unit id: the inverter's Modbus address, default 1. RS485 at 9600 baud 8N1
--         (growatt_local's defaults); over a serial-to-Ethernet gateway use
--         transport tcp (Modbus TCP gateway) or rtuovertcp (transparent).
-- Request limits: growatt_local reads at most 100 registers per request for this
--         protocol and 45 for the older protocol 3.15; max_block 45 so every
--         generation answers. Three requests: 0..10, 35..56, 93..94.
-- Omitted: per-phase output power (40, 44, 48), energy per string, fault codes.
-- Counters: energy_yield (Eac total) is kind 'counter'; energy_yield_today (Eac
--         today) is reset every day and stays 'gauge'. counter_max_rate
--         0.2 kWh/s, the larger of two limits: power: the largest MAX models are
--         in the 250 kW class (MAX 253KTL3-X HV); 2 x 250 kW = 500 kWh / 3600 s = 0.139 kWh/s;
--         resolution: the register counts 0.1 kWh steps and a whole step must pass
--         between two polls a second apart (the guard's shortest interval), with
--         margin for rounding: 2 x 0.1 kWh/s = 0.2 kWh/s.
-- Signature: holding register 43 (device type code, 0x0100..0x15FF: the codes
--         of the protocol's table), holding register 44 (MPPT trackers 1..8 in the
--         high byte, grid phases 1..3 in the low byte: 0x0101..0x0803) and input
--         register 37 (grid frequency 45..65 Hz). Not told apart: the model
--         series among themselves (MIN, MOD, MID, MAX, SPH share this block and
--         this map).
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/growatt_inverter.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('growatt_inverter',
        'Growatt inverter, Modbus RTU Protocol V1.20/II input registers 0..124 (MIN, MOD, MID, MAX, SPH)',
        45, 16, 3, 0)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'growatt_inverter';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code,
                       byte_order, scale, not_available, kind, counter_max_rate) VALUES
    ('growatt_inverter', 0,  'operating_state',    NULL,  4, 4, 'ABCD', 1,    NULL, 'gauge',   NULL),  -- status: 0 waiting, 1 normal, 3 fault
    ('growatt_inverter', 1,  'dc_power',           'W',   5, 4, 'ABCD', 0.1,  NULL, 'gauge',   NULL),  -- Ppv, input power
    ('growatt_inverter', 3,  'dc_voltage_1',       'V',   4, 4, 'ABCD', 0.1,  NULL, 'gauge',   NULL),  -- Vpv1
    ('growatt_inverter', 4,  'dc_current_1',       'A',   4, 4, 'ABCD', 0.1,  NULL, 'gauge',   NULL),  -- PV1 input current
    ('growatt_inverter', 5,  'dc_power_1',         'W',   5, 4, 'ABCD', 0.1,  NULL, 'gauge',   NULL),  -- PV1 input power
    ('growatt_inverter', 7,  'dc_voltage_2',       'V',   4, 4, 'ABCD', 0.1,  NULL, 'gauge',   NULL),  -- Vpv2
    ('growatt_inverter', 8,  'dc_current_2',       'A',   4, 4, 'ABCD', 0.1,  NULL, 'gauge',   NULL),  -- PV2 input current
    ('growatt_inverter', 9,  'dc_power_2',         'W',   5, 4, 'ABCD', 0.1,  NULL, 'gauge',   NULL),  -- PV2 input power
    ('growatt_inverter', 35, 'active_power',       'W',   2, 4, 'ABCD', 0.1,  NULL, 'gauge',   NULL),  -- Pac, output power
    ('growatt_inverter', 37, 'frequency',          'Hz',  4, 4, 'ABCD', 0.01, NULL, 'gauge',   NULL),  -- Fac, grid frequency
    ('growatt_inverter', 38, 'voltage_l1',         'V',   4, 4, 'ABCD', 0.1,  NULL, 'gauge',   NULL),  -- Vac1
    ('growatt_inverter', 39, 'current_l1',         'A',   4, 4, 'ABCD', 0.1,  NULL, 'gauge',   NULL),  -- Iac1
    ('growatt_inverter', 42, 'voltage_l2',         'V',   4, 4, 'ABCD', 0.1,  NULL, 'gauge',   NULL),  -- Vac2 (three-phase models)
    ('growatt_inverter', 43, 'current_l2',         'A',   4, 4, 'ABCD', 0.1,  NULL, 'gauge',   NULL),  -- Iac2
    ('growatt_inverter', 46, 'voltage_l3',         'V',   4, 4, 'ABCD', 0.1,  NULL, 'gauge',   NULL),  -- Vac3
    ('growatt_inverter', 47, 'current_l3',         'A',   4, 4, 'ABCD', 0.1,  NULL, 'gauge',   NULL),  -- Iac3
    ('growatt_inverter', 53, 'energy_yield_today', 'kWh', 5, 4, 'ABCD', 0.1,  NULL, 'gauge',   NULL),  -- Eac today (reset daily)
    ('growatt_inverter', 55, 'energy_yield',       'kWh', 5, 4, 'ABCD', 0.1,  NULL, 'counter', 0.2),   -- Eac total
    ('growatt_inverter', 93, 'temperature',        '°C',  1, 4, 'ABCD', 0.1,  NULL, 'gauge',   NULL),  -- inverter temperature
    ('growatt_inverter', 94, 'temperature_ipm',    '°C',  1, 4, 'ABCD', 0.1,  NULL, 'gauge',   NULL);  -- IPM (power module) temperature

DELETE FROM device_signatures WHERE type = 'growatt_inverter';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('growatt_inverter', 43, 3, 4, 'ABCD', 1, 256, 5631, 'device type code (holding 43), 0x0100..0x15FF'),
    ('growatt_inverter', 44, 3, 4, 'ABCD', 1, 257, 2051, 'MPPT trackers (high byte) and grid phases (low byte), holding 44'),
    ('growatt_inverter', 37, 4, 4, 'ABCD', 0.01, 45, 65, 'grid frequency, Hz (input 37), plausible 45..65 Hz');

COMMIT;
