-- Saia-Burgess Controls (SBC) ALE3 (three-phase energy meter, direct up to 65 A,
-- integrated RS485 Modbus RTU; ALE3D5FD10C2A00 standard, ALE3D5FD10C3A00 MID)
--
-- Source: SBC, "Energy meter ALE3 with integrated Serial Modbus interface | Datasheet"
--         (document 26-527 ENG, sbc-support.com; the register table read here in a
--         web copy of the datasheet's page 6, ".../saia-burgess-controls/ale3d5fd10c3a00/
--         datasheet-english/page-6", the technical data in the scribd / pdfslide copies
--         of "26-527_ENG_DS_EnergyMeter-ALE3-with-Modbus"):
--         "3 x 230/400 VAC 50 Hz", "Iref = 10 A, Imax = 65 A";
--         registers numbered from 1: 2 "Number of supported registers: Will give 52";
--         7..14 "Type / ASN function": 7 "AL", 8 "E3", 9 "D5", 10 "FD", 11 "10",
--         12 "C2" (non MID) / "C3" (MID), 13 "A0" (the order number ALE3D5FD10C.A00 two
--         characters per register; the sister ALD1's datasheet gives "AL", "D1" the same
--         way); 28-29 "WT1 total, Counter Energy Total Tariff 1, 10^-2 kWh", 32-33 WT2
--         total (tariff 2); "For double registers ... the high register is sent first
--         (big-Endian)"; 36.. URMS (V), IRMS (10^-1 A), PRMS (10^-2 kW), QRMS (10^-2 kvar),
--         cos phi (10^-2) per phase (L1 36..40, L2 41..45, L3 46..50), 51 PRMS total,
--         52 QRMS total.
-- Cross-checked: volkszaehler/mbmd meters/rs485/sbc.go (SBCProducer, "Saia Burgess
--         Controls ALE3 meters": the same register numbers and divisors, sent as
--         "p.Opcode(iec) - 1 // adjust according to docs"); aggsoft.com's "SAIA Energy
--         Meter ALD1-ALE3-AWD3" register list (same numbering 1..52). evcc's template
--         sbc-axx3.yaml uses mbmd's producer for the ALE3 and the AWD3.
-- Disagreement: mbmd reads register 32-33 as "Export"; the datasheet calls it WT2, the
--         tariff-2 total of a meter that counts one direction. It is not mapped (the
--         shared vocabulary has no tariff names). energy_import is WT1, which holds all
--         of the energy while the tariff input selects tariff 1 (register 27 = 0).
--         mbmd decodes every value as unsigned; this file reads the powers and cos phi
--         as int16: SBC's S-Bus datasheet of the ALD1 gives the active power "positive:
--         consumption, negative: feeding back", and a reactive power can be capacitive.
--         Every value the ALE3 can reach as a positive number (at most 3 x 276 V x 65 A
--         = 53.8 kW = 5382 x 0.01 kW) reads the same either way.
-- Function code: 3 (read holding registers).
-- Addresses: the datasheet's register number - 1 (register 36 "URMS phase 1" -> 35),
--         as mbmd sends them.
-- Data types: uint16 (V, 0.1 A), int16 (0.01 kW, 0.01 kvar, 0.01 cos phi), uint32 ABCD
--         (0.01 kWh). Powers are stored in W / var (scale 10 = 0.01 kW).
-- No frequency: the ALE3 has no frequency register (52 registers, none is a frequency);
--         tests/test_register_maps.py lists it as the one meter without one.
-- Unit id: the meter's Modbus address, register 24 (1..247).
-- Serial: set on the meter (register 4-5 reads the baud rate, e.g. 115200); the poller
--         needs only the gateway's settings.
-- Request limits: the meter supports registers 1..52 (register 2) and every register in
--         28..52 is documented, so the map reads in one request, fc3 27..51 (registers
--         28..52, 25 registers; the partial and tariff-2 counters 30..35 are read and
--         discarded, max_gap 8). mbmd reads one value per request; no source states a limit.
-- Counters: energy_import is kind 'counter'. counter_max_rate: direct connection,
--         Imax 65 A (datasheet); 3 x 276 V x 65 A = 53.8 kW = 0.0150 kWh/s, twice that:
--         0.030 kWh/s. (The AWD3, the CT-connected sister, is read by the same mbmd
--         producer but answers "AW" "D3" in registers 7-8, so it does not match this
--         family's signature; attached to this type it would need the rate removed.)
-- Signature: the type registers 7 and 8 (wire 6 and 7) = "AL" (0x414C) and "E3"
--         (0x4533), and L1 voltage (register 36) 100..300 V.
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/saia_burgess_ale3.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('saia_burgess_ale3',
        'Saia-Burgess Controls ALE3 three-phase meter (holding registers 28..52, 16-bit scaled integers)',
        125, 8, 3, 0)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'saia_burgess_ale3';

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code,
                       byte_order, scale, not_available, kind, counter_max_rate) VALUES
    ('saia_burgess_ale3', 27, 'energy_import', 'kWh', 5, 3, 'ABCD', 0.01, NULL, 'counter', 0.03),    -- reg 28-29 WT1 total, 0.01 kWh
    ('saia_burgess_ale3', 35, 'voltage_l1', 'V', 4, 3, 'ABCD', 1, NULL, 'gauge', NULL),              -- reg 36 URMS phase 1, V
    ('saia_burgess_ale3', 36, 'current_l1', 'A', 4, 3, 'ABCD', 0.1, NULL, 'gauge', NULL),            -- reg 37 IRMS phase 1, 0.1 A
    ('saia_burgess_ale3', 37, 'active_power_l1', 'W', 1, 3, 'ABCD', 10, NULL, 'gauge', NULL),        -- reg 38 PRMS phase 1, 0.01 kW
    ('saia_burgess_ale3', 38, 'reactive_power_l1', 'var', 1, 3, 'ABCD', 10, NULL, 'gauge', NULL),    -- reg 39 QRMS phase 1, 0.01 kvar
    ('saia_burgess_ale3', 39, 'power_factor_l1', NULL, 1, 3, 'ABCD', 0.01, NULL, 'gauge', NULL),     -- reg 40 cos phi phase 1, 0.01
    ('saia_burgess_ale3', 40, 'voltage_l2', 'V', 4, 3, 'ABCD', 1, NULL, 'gauge', NULL),              -- reg 41
    ('saia_burgess_ale3', 41, 'current_l2', 'A', 4, 3, 'ABCD', 0.1, NULL, 'gauge', NULL),            -- reg 42
    ('saia_burgess_ale3', 42, 'active_power_l2', 'W', 1, 3, 'ABCD', 10, NULL, 'gauge', NULL),        -- reg 43
    ('saia_burgess_ale3', 43, 'reactive_power_l2', 'var', 1, 3, 'ABCD', 10, NULL, 'gauge', NULL),    -- reg 44
    ('saia_burgess_ale3', 44, 'power_factor_l2', NULL, 1, 3, 'ABCD', 0.01, NULL, 'gauge', NULL),     -- reg 45
    ('saia_burgess_ale3', 45, 'voltage_l3', 'V', 4, 3, 'ABCD', 1, NULL, 'gauge', NULL),              -- reg 46
    ('saia_burgess_ale3', 46, 'current_l3', 'A', 4, 3, 'ABCD', 0.1, NULL, 'gauge', NULL),            -- reg 47
    ('saia_burgess_ale3', 47, 'active_power_l3', 'W', 1, 3, 'ABCD', 10, NULL, 'gauge', NULL),        -- reg 48
    ('saia_burgess_ale3', 48, 'reactive_power_l3', 'var', 1, 3, 'ABCD', 10, NULL, 'gauge', NULL),    -- reg 49
    ('saia_burgess_ale3', 49, 'power_factor_l3', NULL, 1, 3, 'ABCD', 0.01, NULL, 'gauge', NULL),     -- reg 50
    ('saia_burgess_ale3', 50, 'active_power', 'W', 1, 3, 'ABCD', 10, NULL, 'gauge', NULL),           -- reg 51 PRMS total, 0.01 kW
    ('saia_burgess_ale3', 51, 'reactive_power', 'var', 1, 3, 'ABCD', 10, NULL, 'gauge', NULL);       -- reg 52 QRMS total, 0.01 kvar

DELETE FROM device_signatures WHERE type = 'saia_burgess_ale3';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('saia_burgess_ale3', 6, 3, 4, 'ABCD', 1, 16716, 16716, 'type register 7 = ''AL'' (0x414C)'),
    ('saia_burgess_ale3', 7, 3, 4, 'ABCD', 1, 17715, 17715, 'type register 8 = ''E3'' (0x4533): ALE3'),
    ('saia_burgess_ale3', 35, 3, 4, 'ABCD', 1, 100, 300, 'voltage L1, V (register 36), plausible mains 100..300 V');

COMMIT;
