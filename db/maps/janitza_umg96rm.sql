-- Janitza UMG 96RM (UMG 96RM, 96RM-E and other 96RM variants: the float register
-- block at 19000 is common to them). Not the UMG 96-PA, whose list is not cited here.
--
-- Source: OpenEMS, "Implements the Janitza UMG 96RM-E power analyzer"
--         (MeterJanitzaUmg96rmeImpl.java in github.com/OpenEMS/openems, which points
--         to janitza.com/umg-96rm-e.html); Janitza's own Modbus address list was not
--         read directly here, the addresses are as OpenEMS reads them.
-- Cross-checked: OpenEMS/openems io.openems.edge.meter.janitza umg96rme
--         MeterJanitzaUmg96rmeImpl.java (FC3 float32 19000..19050, energies 19068
--         and 19076) and DF3MS/janiza janitza_methods.py (UMG 96RM: short voltage
--         3530, float energy 19060, frequency read from 800 as float). Where they
--         overlap they agree; this map uses only OpenEMS's float block.
-- Function code: 3 (read holding registers).
-- Data type: IEEE-754 float32, big-endian (ABCD): V, A, W, var, Hz; energies in Wh.
-- Addresses: the address list's numbers are the 0-based wire addresses
--         (19000 = voltage L1-N).
-- Energy direction: 19068 is the energy drawn ("bezogen", import) and 19076 the
--         energy delivered (export); OpenEMS maps 19068 to its "production" channel of
--         a grid meter, which in OpenEMS means energy bought from the grid.
-- Unit id: the device's Modbus address (holding register 0 reads it back, as
--         DF3MS/janiza checks; default 1). RS485 default 9600 8N1 (DF3MS/janiza).
-- Request limits: OpenEMS reads 19000..19051 in one request (52 registers, the
--         unused 19006..19011, 19028..19035 and 19044..19049 read and discarded), so
--         gaps inside the block are answered; with max_gap 16 this map is one
--         request fc3 19000..19077 (78 registers).
-- Counters: energy_import / energy_export are kind 'counter', counter_max_rate
--         NULL: the UMG 96RM measures through current transformers whose ratio is
--         configured on the device, so no physical rate limit is known.
-- Signature: no identification register is documented in the sources cited; the
--         family is recognised by plausibility only: float L1 voltage at 19000 and
--         frequency at 19050 in mains ranges, plus the 16-bit L1 voltage at 3530
--         (V * 10, "2000 < u1 < 2500" in DF3MS/janiza find_janitza.py).
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/janitza_umg96rm.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('janitza_umg96rm',
        'Janitza UMG 96RM power analyser (holding registers, float32 block at 19000)',
        125, 16, 3, 0)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'janitza_umg96rm';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code,
                       byte_order, scale, not_available, kind, counter_max_rate) VALUES
    ('janitza_umg96rm', 19000, 'voltage_l1', 'V', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),           -- U L1-N
    ('janitza_umg96rm', 19002, 'voltage_l2', 'V', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),           -- U L2-N
    ('janitza_umg96rm', 19004, 'voltage_l3', 'V', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),           -- U L3-N
    ('janitza_umg96rm', 19012, 'current_l1', 'A', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),           -- I L1
    ('janitza_umg96rm', 19014, 'current_l2', 'A', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),           -- I L2
    ('janitza_umg96rm', 19016, 'current_l3', 'A', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),           -- I L3
    ('janitza_umg96rm', 19018, 'current_total', 'A', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),        -- I sum L1..L3
    ('janitza_umg96rm', 19020, 'active_power_l1', 'W', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),      -- P L1
    ('janitza_umg96rm', 19022, 'active_power_l2', 'W', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),      -- P L2
    ('janitza_umg96rm', 19024, 'active_power_l3', 'W', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),      -- P L3
    ('janitza_umg96rm', 19026, 'active_power', 'W', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),         -- P sum
    ('janitza_umg96rm', 19036, 'reactive_power_l1', 'var', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),  -- Q L1
    ('janitza_umg96rm', 19038, 'reactive_power_l2', 'var', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),  -- Q L2
    ('janitza_umg96rm', 19040, 'reactive_power_l3', 'var', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),  -- Q L3
    ('janitza_umg96rm', 19042, 'reactive_power', 'var', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),     -- Q sum
    ('janitza_umg96rm', 19050, 'frequency', 'Hz', 3, 3, 'ABCD', 1, NULL, 'gauge', NULL),           -- f
    ('janitza_umg96rm', 19068, 'energy_import', 'Wh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL),     -- real energy drawn, sum L1..L3
    ('janitza_umg96rm', 19076, 'energy_export', 'Wh', 3, 3, 'ABCD', 1, NULL, 'counter', NULL);     -- real energy delivered, sum L1..L3

DELETE FROM device_signatures WHERE type = 'janitza_umg96rm';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('janitza_umg96rm', 19000, 3, 3, 'ABCD', 1, 100, 300, 'voltage L1-N, V (float, 19000), plausible 100..300 V'),
    ('janitza_umg96rm', 19050, 3, 3, 'ABCD', 1, 45, 65, 'frequency, Hz (float, 19050), plausible 45..65 Hz'),
    ('janitza_umg96rm', 3530, 3, 4, 'ABCD', 0.1, 100, 300, 'voltage L1-N, 0.1 V (short, 3530), plausible 100..300 V');

COMMIT;
