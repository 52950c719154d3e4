-- Victron GX device (Cerbo GX, Venus GX, CCGX, Ekrano; Venus OS) Modbus TCP
-- server: the grid meter service com.victronenergy.grid (an energy meter the GX
-- reads: Victron VM-3P75CT, Carlo Gavazzi ET/EM340 via ET340 kit, etc.).
--
-- Source: Victron Energy, "CCGX Modbus-TCP register list" (CCGX-Modbus-TCP-
--         register-list.xlsx, published on victronenergy.com with the GX
--         Modbus-TCP manual, and in github.com/victronenergy/dbus_modbustcp);
--         its machine-readable twin attributes.csv in the same repository:
--         com.victronenergy.grid 2600..2650: /Ac/L1..L3/Voltage 2616/2618/2620
--         uint16 scale 10, /Ac/L1..L3/Current 2617/2619/2621 int16 scale 10,
--         /Ac/L1..L3/Energy/Forward 2622/2624/2626 uint32 scale 100 (kWh),
--         /Ac/L1..L3/Energy/Reverse 2628/2630/2632, /Ac/Energy/Forward 2634 and
--         /Ac/Energy/Reverse 2636 uint32 scale 100, /Ac/L1..L3/Power 2638/2640/2642
--         int32 W, /Ac/Frequency 2644 uint16 scale 100, /Ac/L1..L3/PowerFactor
--         2645..2647 and /Ac/PowerFactor 2648 int16 scale 1000. ("scale" there is
--         the divisor: value = register / scale.)
-- Cross-checked: victronenergy/dbus_modbustcp server.cpp (function codes 3 and 4
--         both read, 1..125 registers) and mappings.cpp (a value missing on
--         D-Bus is sent as 0); unitid2di.csv (unit id = D-Bus device instance,
--         except the listed VE.Bus/VE.Direct ports and 100 for instance 0);
--         evcc-io/evcc templates/definition/meter/victron-energy.yaml (grid meter
--         currents at 2617/2619/2621 int16 x 0.1, unit id = the meter's "VRM
--         instance"; system values at unit 100).
-- Function code: 3 (read holding registers); 4 reads the same (server.cpp).
-- Data types: big-endian; 32-bit values high word first (ABCD).
-- Addresses: the list's addresses are sent as they are (2600 is sent as 2600).
-- Unit id: the grid meter's device instance ("VRM instance", e.g. 30 or 31),
--         shown on the GX under Settings > Integrations (Services on older
--         Venus OS) > Modbus TCP server > Available services. Unit id 100 is the
--         system service (com.victronenergy.system: totals such as grid power per
--         phase at 820..822, battery at 840..), which has no voltages, currents or
--         energy counters and is not this map. Port 502; enable the Modbus TCP
--         server on the GX first.
-- Request limits: 2616..2648 (33 registers) in one request.
-- Not available: the GX sends 0 for a value its meter does not provide (e.g. L2
--         and L3 of a single-phase meter); 0 is a real reading for most of
--         these values, so not_available stays NULL. The counter guard holds back
--         a total that drops to 0.
-- Omitted: the 16-bit power and energy registers 2600..2608 (the 32-bit ones
--         here do not overflow at 32 kW / 655 kWh), serial and custom name.
-- Total power: the grid service publishes no total active power register, only
--         the three phases (a total is their sum).
-- Counters: energy_import (Forward, from the grid) and energy_export (Reverse, to
--         the grid) and their phase values are kind 'counter'; counter_max_rate
--         NULL: the GX reads meters of every size (direct ones like the VM-3P75CT
--         and CT meters), so no rise per second follows from the map.
-- Signature: L1 voltage (2616) 80..300 V and grid frequency (2644) 45..65 Hz:
--         the grid service publishes no product id (only the tank, inverter,
--         genset, temperature, EV charger, DC-DC services do). Not told apart: the
--         meters behind the GX (all are served as com.victronenergy.grid).
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/victron_gx_grid.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('victron_gx_grid',
        'Victron GX (Venus OS) Modbus TCP, grid meter service com.victronenergy.grid 2616..2648',
        125, 16, 3, 0)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'victron_gx_grid';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code,
                       byte_order, scale, not_available, kind, counter_max_rate) VALUES
    ('victron_gx_grid', 2616, 'voltage_l1',       'V',   4, 3, 'ABCD', 0.1,   NULL, 'gauge',   NULL),  -- /Ac/L1/Voltage
    ('victron_gx_grid', 2617, 'current_l1',       'A',   1, 3, 'ABCD', 0.1,   NULL, 'gauge',   NULL),  -- /Ac/L1/Current
    ('victron_gx_grid', 2618, 'voltage_l2',       'V',   4, 3, 'ABCD', 0.1,   NULL, 'gauge',   NULL),  -- /Ac/L2/Voltage
    ('victron_gx_grid', 2619, 'current_l2',       'A',   1, 3, 'ABCD', 0.1,   NULL, 'gauge',   NULL),  -- /Ac/L2/Current
    ('victron_gx_grid', 2620, 'voltage_l3',       'V',   4, 3, 'ABCD', 0.1,   NULL, 'gauge',   NULL),  -- /Ac/L3/Voltage
    ('victron_gx_grid', 2621, 'current_l3',       'A',   1, 3, 'ABCD', 0.1,   NULL, 'gauge',   NULL),  -- /Ac/L3/Current
    ('victron_gx_grid', 2622, 'energy_import_l1', 'kWh', 5, 3, 'ABCD', 0.01,  NULL, 'counter', NULL),  -- /Ac/L1/Energy/Forward
    ('victron_gx_grid', 2624, 'energy_import_l2', 'kWh', 5, 3, 'ABCD', 0.01,  NULL, 'counter', NULL),  -- /Ac/L2/Energy/Forward
    ('victron_gx_grid', 2626, 'energy_import_l3', 'kWh', 5, 3, 'ABCD', 0.01,  NULL, 'counter', NULL),  -- /Ac/L3/Energy/Forward
    ('victron_gx_grid', 2628, 'energy_export_l1', 'kWh', 5, 3, 'ABCD', 0.01,  NULL, 'counter', NULL),  -- /Ac/L1/Energy/Reverse
    ('victron_gx_grid', 2630, 'energy_export_l2', 'kWh', 5, 3, 'ABCD', 0.01,  NULL, 'counter', NULL),  -- /Ac/L2/Energy/Reverse
    ('victron_gx_grid', 2632, 'energy_export_l3', 'kWh', 5, 3, 'ABCD', 0.01,  NULL, 'counter', NULL),  -- /Ac/L3/Energy/Reverse
    ('victron_gx_grid', 2634, 'energy_import',    'kWh', 5, 3, 'ABCD', 0.01,  NULL, 'counter', NULL),  -- /Ac/Energy/Forward
    ('victron_gx_grid', 2636, 'energy_export',    'kWh', 5, 3, 'ABCD', 0.01,  NULL, 'counter', NULL),  -- /Ac/Energy/Reverse
    ('victron_gx_grid', 2638, 'active_power_l1',  'W',   2, 3, 'ABCD', 1,     NULL, 'gauge',   NULL),  -- /Ac/L1/Power (int32)
    ('victron_gx_grid', 2640, 'active_power_l2',  'W',   2, 3, 'ABCD', 1,     NULL, 'gauge',   NULL),  -- /Ac/L2/Power (int32)
    ('victron_gx_grid', 2642, 'active_power_l3',  'W',   2, 3, 'ABCD', 1,     NULL, 'gauge',   NULL),  -- /Ac/L3/Power (int32)
    ('victron_gx_grid', 2644, 'frequency',        'Hz',  4, 3, 'ABCD', 0.01,  NULL, 'gauge',   NULL),  -- /Ac/Frequency
    ('victron_gx_grid', 2645, 'power_factor_l1',  NULL,  1, 3, 'ABCD', 0.001, NULL, 'gauge',   NULL),  -- /Ac/L1/PowerFactor
    ('victron_gx_grid', 2646, 'power_factor_l2',  NULL,  1, 3, 'ABCD', 0.001, NULL, 'gauge',   NULL),  -- /Ac/L2/PowerFactor
    ('victron_gx_grid', 2647, 'power_factor_l3',  NULL,  1, 3, 'ABCD', 0.001, NULL, 'gauge',   NULL),  -- /Ac/L3/PowerFactor
    ('victron_gx_grid', 2648, 'power_factor',     NULL,  1, 3, 'ABCD', 0.001, NULL, 'gauge',   NULL);  -- /Ac/PowerFactor

DELETE FROM device_signatures WHERE type = 'victron_gx_grid';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('victron_gx_grid', 2616, 3, 4, 'ABCD', 0.1, 80, 300, 'grid meter L1 voltage, V (/Ac/L1/Voltage), plausible 80..300 V'),
    ('victron_gx_grid', 2644, 3, 4, 'ABCD', 0.01, 45, 65, 'grid frequency, Hz (/Ac/Frequency), plausible 45..65 Hz');

COMMIT;
