-- Shelly Pro 3EM (SPEM-003CEBEU, 120 A clamps; 3CT63 and 400 A variants) in its
-- default "triphase" profile: components EM (em:0) and EMData (emdata:0) over
-- the device's Modbus TCP server.
--
-- Source: Shelly (Allterco Robotics), Gen2 API documentation, pages "Modbus",
--         "EM" and "EMData" (section "Modbus registers"),
--         shelly-api-docs.shelly.cloud/gen2/ComponentsAndServices/Modbus, .../EM,
--         .../EMData: "The Modbus component provides Modbus-TCP communication
--         protocol on tcp port 502"; device info registers 30000 MAC (6),
--         30006 device model (10 registers, zero padded), 30016 name; EM block
--         from 31000, EMData block from 31160. The documentation writes input
--         registers in the 3xxxx notation: 31013 is input register 1013 on the
--         wire.
-- Cross-checked: github.com/victronenergy/dbus-modbus-client shelly.py (Victron's GX
--         driver for this meter: input registers, Reg_f32l = float32 low word
--         first, address = documented number - 30000; triphase: 31013 /Ac/Power,
--         31020/31022/31024 L1 voltage/current/power, 31040.. L2, 31060.. L3,
--         31162 /Ac/Energy/Forward and 31164 /Ac/Energy/Reverse in Wh (the
--         driver divides by 1000 for kWh); model text at 6..15 read with
--         little=True and matched to 'SPEM-003CEBEU'; unit 1);
--         pipelka/dbus-modbus-shelly shelly.py (same addresses 1013, 1020..1064,
--         1162/1164, Reg_f32l). Power factor per phase at 31028/31048/31068: the
--         same repository's shelly.py at commit 9c967b3 (R. Kapsi, "Shelly Pro
--         3EM, EM-50, 3CT63, 3EM-63 Gen3 support": /Ac/L<n>/PowerFactor at 31028
--         + 20 per phase). Frequency per phase at 31033 (phase
--         A): only one open implementation states it (a Shelly Pro 3EM Modbus
--         emulator's register map, phase block offset +13 after voltage 0,
--         current 2, power 4, apparent power 6, power factor 8, errors 10..12);
--         check it against the device once.
-- Function code: 4 (read input registers) ("Shelly uses input registers!").
-- Data types: float32, low word first (CDAB); the model text's bytes are
--         swapped within each register (Victron reads it with little=True), so
--         read as a number it is BADC.
-- Addresses: register_address = the documentation's 3xxxx number - 30000
--         (31013 -> 1013).
-- Unit id: 1 (the Victron driver probes unit 1). Port 502. Enable Modbus in the
--         web UI or with Modbus.SetConfig {"enable": true}.
-- Request limits: 1013..1069 and 1162..1165, two requests.
-- Monophase profile: a device switched to "monophase" serves three EM1
--         components at 32000.. instead; this map then reads nothing.
-- Counters: energy_import (EMData total active energy, 31162) and energy_export
--         (total active returned energy, 31164) are kind 'counter'.
--         counter_max_rate 190 Wh/s: the device's own limits are 280 V
--         ("voltage_limit_v ... set to 280V") and 120 A, or 400 A for the
--         Pro3EM400 ("current_limit_a ... set to 120A or 400A for Pro3EM400");
--         3 x 280 V x 400 A = 336 kW; 2 x 336 kW = 672 kWh / 3600 s = 187 Wh/s,
--         rounded up to 190. The totals are float32 Wh: their step stays at or
--         below 64 Wh up to 2^30 Wh (1.07 GWh), well under 190 Wh per second.
-- Signature: the model text at 6..9 read as two numbers, "SPEM" (0x5350454D) and
--         "-003" (0x2D303033) = a three-phase Shelly Pro EM (SPEM-003CEBEU and its
--         3CT63 / 400 A variants; the two-channel Pro EM-50 is "SPEM-002..." and
--         is not matched), and the L1 voltage (1020) 100..300 V, which also tells
--         that the device is in the triphase profile.
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/shelly_pro_3em.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('shelly_pro_3em',
        'Shelly Pro 3EM (triphase profile), Modbus TCP input registers 31000.. (EM) / 31160.. (EMData), float32 CDAB',
        125, 16, 3, 0)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'shelly_pro_3em';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code,
                       byte_order, scale, not_available, kind, counter_max_rate) VALUES
    ('shelly_pro_3em', 1013, 'active_power',    'W',  3, 4, 'CDAB', 1, NULL, 'gauge',   NULL),  -- 31013 total active power
    ('shelly_pro_3em', 1020, 'voltage_l1',      'V',  3, 4, 'CDAB', 1, NULL, 'gauge',   NULL),  -- 31020 phase A voltage
    ('shelly_pro_3em', 1022, 'current_l1',      'A',  3, 4, 'CDAB', 1, NULL, 'gauge',   NULL),  -- 31022 phase A current
    ('shelly_pro_3em', 1024, 'active_power_l1', 'W',  3, 4, 'CDAB', 1, NULL, 'gauge',   NULL),  -- 31024 phase A active power
    ('shelly_pro_3em', 1028, 'power_factor_l1', NULL, 3, 4, 'CDAB', 1, NULL, 'gauge',   NULL),  -- 31028 phase A power factor
    ('shelly_pro_3em', 1033, 'frequency',       'Hz', 3, 4, 'CDAB', 1, NULL, 'gauge',   NULL),  -- 31033 phase A frequency
    ('shelly_pro_3em', 1040, 'voltage_l2',      'V',  3, 4, 'CDAB', 1, NULL, 'gauge',   NULL),  -- 31040 phase B voltage
    ('shelly_pro_3em', 1042, 'current_l2',      'A',  3, 4, 'CDAB', 1, NULL, 'gauge',   NULL),  -- 31042 phase B current
    ('shelly_pro_3em', 1044, 'active_power_l2', 'W',  3, 4, 'CDAB', 1, NULL, 'gauge',   NULL),  -- 31044 phase B active power
    ('shelly_pro_3em', 1048, 'power_factor_l2', NULL, 3, 4, 'CDAB', 1, NULL, 'gauge',   NULL),  -- 31048 phase B power factor
    ('shelly_pro_3em', 1060, 'voltage_l3',      'V',  3, 4, 'CDAB', 1, NULL, 'gauge',   NULL),  -- 31060 phase C voltage
    ('shelly_pro_3em', 1062, 'current_l3',      'A',  3, 4, 'CDAB', 1, NULL, 'gauge',   NULL),  -- 31062 phase C current
    ('shelly_pro_3em', 1064, 'active_power_l3', 'W',  3, 4, 'CDAB', 1, NULL, 'gauge',   NULL),  -- 31064 phase C active power
    ('shelly_pro_3em', 1068, 'power_factor_l3', NULL, 3, 4, 'CDAB', 1, NULL, 'gauge',   NULL),  -- 31068 phase C power factor
    ('shelly_pro_3em', 1162, 'energy_import',   'Wh', 3, 4, 'CDAB', 1, NULL, 'counter', 190),   -- 31162 total active energy
    ('shelly_pro_3em', 1164, 'energy_export',   'Wh', 3, 4, 'CDAB', 1, NULL, 'counter', 190);   -- 31164 total active returned energy

DELETE FROM device_signatures WHERE type = 'shelly_pro_3em';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('shelly_pro_3em', 6,    4, 5, 'BADC', 1, 1397769549, 1397769549, 'device model text starts "SPEM" (30006..30007, bytes swapped per register)'),
    ('shelly_pro_3em', 8,    4, 5, 'BADC', 1, 758132787, 758132787, 'device model text continues "-003" (30008..30009): three-phase Pro EM'),
    ('shelly_pro_3em', 1020, 4, 3, 'CDAB', 1, 100, 300, 'phase A voltage, V (31020), plausible 100..300 V');

COMMIT;
