-- Carlo Gavazzi EM24-DIN with RS485 Modbus (EM24DINAV53...S / AV93...S: the RS485
-- models). Not the EM24 Ethernet (E1) models: their map is the EM300 layout of
-- carlo_gavazzi_em340.sql (frequency 0x0033, kWh 0x0034), see below.
--
-- Source: Carlo Gavazzi, "EM24 Modbus communication protocol", the copy mbmd cites
--         (ccontrols.com/support/dp/CarloGavazziEM24.pdf). Not read directly here:
--         the addresses and divisors are mbmd's.
-- Cross-checked: volkszaehler/mbmd meters/rs485/carlogavazzi-em24.go
--         (CarloGavazziEM24Producer) against meters/rs485/carlogavazzi-em24_e1.go
--         (the Ethernet model: same 0x0000..0x0028 values, different from 0x002E on)
--         and victronenergy/dbus-modbus-client carlo_gavazzi.py (EM24 Ethernet:
--         frequency 0x0033, kWh 0x0034, the E1 layout). The RS485 layout below is
--         mbmd's alone: one reading of it exists in the sources found.
-- Function code: 4 (read input registers; Carlo Gavazzi meters answer 3 alike).
-- Data types: INT32 least significant word first (CDAB): V / 10, A / 1000, W / 10,
--         kWh / 10; INT16: PF / 1000, Hz / 10.
-- Addresses: the hex addresses are the wire addresses (0x0000 = V L1-N).
-- Unit id: the meter's address (default 1). RS485 9600 8N1 by default.
-- Request limits: not stated in the sources; 20 registers per request, the
--         smallest limit of the EM300 series of the same maker, and gaps of at most 2.
-- Counters: kind 'counter', counter_max_rate NULL: the family includes the
--         CT-connected AV5 models (ratio set on the meter) beside the direct AV9.
-- Signature: no identification code for the RS485 models in the sources (victron
--         lists model codes 1648..1653 at 0x000B for the Ethernet models only); the
--         family is recognised by V L1 (0x0000) and frequency (int16 at 0x0037) in
--         mains ranges. Against the EM340 (frequency at 0x0033): an EM24 reads its
--         PF L2 at 0x0033, an EM340 the high word of a kvarh counter at 0x0037, so
--         each fails the other's frequency row as long as PF L2 is outside 0.45..0.65
--         and the EM340's reactive import is below 6553.6 kvarh (README).
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/carlo_gavazzi_em24.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('carlo_gavazzi_em24',
        'Carlo Gavazzi EM24-DIN RS485 meter (input registers, int32 LSW first, scaled)',
        20, 2, 3, 0)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'carlo_gavazzi_em24';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code,
                       byte_order, scale, not_available, kind, counter_max_rate) VALUES
    ('carlo_gavazzi_em24', 0, 'voltage_l1', 'V', 2, 4, 'CDAB', 0.1, NULL, 'gauge', NULL),             -- 0x0000 V L1-N
    ('carlo_gavazzi_em24', 2, 'voltage_l2', 'V', 2, 4, 'CDAB', 0.1, NULL, 'gauge', NULL),             -- 0x0002
    ('carlo_gavazzi_em24', 4, 'voltage_l3', 'V', 2, 4, 'CDAB', 0.1, NULL, 'gauge', NULL),             -- 0x0004
    ('carlo_gavazzi_em24', 12, 'current_l1', 'A', 2, 4, 'CDAB', 0.001, NULL, 'gauge', NULL),          -- 0x000C A L1
    ('carlo_gavazzi_em24', 14, 'current_l2', 'A', 2, 4, 'CDAB', 0.001, NULL, 'gauge', NULL),          -- 0x000E
    ('carlo_gavazzi_em24', 16, 'current_l3', 'A', 2, 4, 'CDAB', 0.001, NULL, 'gauge', NULL),          -- 0x0010
    ('carlo_gavazzi_em24', 18, 'active_power_l1', 'W', 2, 4, 'CDAB', 0.1, NULL, 'gauge', NULL),       -- 0x0012 W L1
    ('carlo_gavazzi_em24', 20, 'active_power_l2', 'W', 2, 4, 'CDAB', 0.1, NULL, 'gauge', NULL),       -- 0x0014
    ('carlo_gavazzi_em24', 22, 'active_power_l3', 'W', 2, 4, 'CDAB', 0.1, NULL, 'gauge', NULL),       -- 0x0016
    ('carlo_gavazzi_em24', 40, 'active_power', 'W', 2, 4, 'CDAB', 0.1, NULL, 'gauge', NULL),          -- 0x0028 W sys
    ('carlo_gavazzi_em24', 50, 'power_factor_l1', NULL, 1, 4, 'ABCD', 0.001, NULL, 'gauge', NULL),    -- 0x0032 PF L1
    ('carlo_gavazzi_em24', 51, 'power_factor_l2', NULL, 1, 4, 'ABCD', 0.001, NULL, 'gauge', NULL),    -- 0x0033
    ('carlo_gavazzi_em24', 52, 'power_factor_l3', NULL, 1, 4, 'ABCD', 0.001, NULL, 'gauge', NULL),    -- 0x0034
    ('carlo_gavazzi_em24', 53, 'power_factor', NULL, 1, 4, 'ABCD', 0.001, NULL, 'gauge', NULL),       -- 0x0035 PF sys
    ('carlo_gavazzi_em24', 55, 'frequency', 'Hz', 1, 4, 'ABCD', 0.1, NULL, 'gauge', NULL),            -- 0x0037 Hz
    ('carlo_gavazzi_em24', 66, 'energy_import', 'kWh', 2, 4, 'CDAB', 0.1, NULL, 'counter', NULL),     -- 0x0042 kWh (+) TOT
    ('carlo_gavazzi_em24', 70, 'energy_import_l1', 'kWh', 2, 4, 'CDAB', 0.1, NULL, 'counter', NULL),  -- 0x0046
    ('carlo_gavazzi_em24', 72, 'energy_import_l2', 'kWh', 2, 4, 'CDAB', 0.1, NULL, 'counter', NULL),  -- 0x0048
    ('carlo_gavazzi_em24', 74, 'energy_import_l3', 'kWh', 2, 4, 'CDAB', 0.1, NULL, 'counter', NULL),  -- 0x004A
    ('carlo_gavazzi_em24', 92, 'energy_export', 'kWh', 2, 4, 'CDAB', 0.1, NULL, 'counter', NULL);     -- 0x005C kWh (-) TOT

DELETE FROM device_signatures WHERE type = 'carlo_gavazzi_em24';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('carlo_gavazzi_em24', 0, 4, 2, 'CDAB', 0.1, 100, 300, 'voltage L1-N, 0.1 V, int32 LSW first (0x0000), plausible 100..300 V'),
    ('carlo_gavazzi_em24', 55, 4, 1, 'ABCD', 0.1, 45, 65, 'frequency, 0.1 Hz, int16 (0x0037), plausible 45..65 Hz');

COMMIT;
