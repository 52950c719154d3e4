-- SunSpec inverter: common model 1 + inverter model 103 (three-phase, integer
-- + scale factor); also fits models 101 (single-phase) and 102 (split-phase).
--
-- Source: SunSpec Alliance, "SunSpec Information Model Specification" and the
--         machine-readable model definitions json/model_1.json and
--         json/model_103.json (models 101/102 share the 103 point layout) in
--         github.com/sunspec/models; SunSpec Alliance, "SunSpec Modbus
--         Specification" (base address 40000, "SunS" marker).
-- Device placement (verified, and different from the SunSpec spec's own
--         66-register model 1): Fronius and SolarEdge publish a common model of
--         length 65 (no Pad register), so the inverter model starts at protocol
--         address 40069, not 40070:
--           * SolarEdge, "SunSpec Implementation Technical Note" (solaredge.com,
--             Modbus over TCP): 40000 C_SunSpec_ID "SunS", 40002 C_SunSpec_DID 1,
--             40003 C_SunSpec_Length 65, 40004 C_Manufacturer ...,
--             40069 C_SunSpec_DID 101/102/103, 40071 I_AC_Current.
--           * Fronius, "Fronius Datamanager Modbus TCP & RTU" operating
--             instructions 42,0410,2049 (fronius.com): register numbers are
--             1-based (40001 SID, 40003 ID, 40004 L = 65, 40070 ID = 101..103);
--             protocol address = register number - 1, so model 103's ID is at
--             40069 here too.
--         Devices whose model 1 has L = 66 (with the Pad) put model 10x one
--         register later: check sunspec_model_id, which must read 101, 102 or
--         103; if it does not, this map is off by one for that device.
--         SMA inverters put models 11/12 before 10x: not this map.
-- Addresses: register_address is the 0-based protocol address (40000 holds
--         "SunS"); documents that number registers from 40001 (Fronius) are
--         converted by subtracting 1.
-- Function code: 3 (read holding registers), the only read SunSpec uses.
-- Data types: uint16 / int16 values with a sunssf (int16 power of ten) register
--         each, referenced through registers.scale_factor; acc32 energy as
--         uint32. Big-endian (ABCD). PF is in percent per SunSpec ("Pct"); the
--         scale 0.01 stores it as a ratio (-1..1) like the meters' power_factor.
-- Not available (SunSpec): int16 / sunssf -32768 (0x8000), uint16 65535
--         (0xFFFF), acc32 0; such readings are not written.
-- Omitted: the common model's Mn/Md/Opt/Vr/SN strings (manufacturer, model,
--         serial) are text, not numbers; event bitfields (Evt1, Evt2, EvtVnd*).
-- Unit id: SolarEdge: 1 (port 502 or 1502, enable "Modbus TCP" in SetApp/LCD);
--         Fronius Datamanager: the inverter number (usually 1), enable "Data
--         export via Modbus: tcp" and set "SunSpec Model Type: int + SF" (the
--         default "float" serves models 111..113 instead: fronius_inverter_float.sql).
-- Counters: energy_yield (WH, lifetime AC energy) is kind 'counter'. counter_max_rate
--         60 Wh/s: the largest inverters this map is written for are 100 kW class
--         (Fronius Tauro 100 kW, SolarEdge SE100K); 2 x 100 kW = 200 kW
--         = 200000 Wh / 3600 s = 55.6 Wh/s, rounded up to 60. This assumes WH_SF
--         = 0 (1 Wh steps, as Fronius and SolarEdge report): a device with a
--         coarser WH_SF (kWh steps) may have one step per poll held back.
-- Signature: "SunS" at 40000, model id 101..103 at 40069 and model length 50 at
--         40070 (models 101/102/103 are all 50 registers long). emm scan also
--         walks the SunSpec chain; the signature places the model at 40069, where
--         this map reads it. Not told apart: Fronius and SolarEdge inverters
--         (one map serves both). A SolarEdge inverter with a meter also matches
--         solaredge_meter (five rows, which win over these three): add this map
--         for the same unit id by hand.
-- Load:   psql -v ON_ERROR_STOP=1 -d DB -f db/maps/sunspec_inverter.sql

BEGIN;

INSERT INTO device_types (name, description, max_block, max_gap, timeout_s, request_pause_ms)
VALUES ('sunspec_inverter',
        'SunSpec inverter, model 101/102/103 (int+SF) at 40069 after a 65-register common model (Fronius, SolarEdge)',
        125, 16, 3, 0)
ON CONFLICT (name) DO UPDATE SET
    description      = EXCLUDED.description,
    max_block        = EXCLUDED.max_block,
    max_gap          = EXCLUDED.max_gap,
    timeout_s        = EXCLUDED.timeout_s,
    request_pause_ms = EXCLUDED.request_pause_ms;

DELETE FROM registers WHERE type = 'sunspec_inverter';

-- One statement, so each scale_factor reference finds its register.
INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code, byte_order, scale, scale_factor, not_available, kind, counter_max_rate) VALUES
    ('sunspec_inverter', 40069, 'sunspec_model_id',        NULL,  4, 3, 'ABCD', 1,    NULL,                65535, 'gauge',   NULL),   -- ID: 101/102/103
    ('sunspec_inverter', 40071, 'current_total',           'A',   4, 3, 'ABCD', 1,    'sf_current',        65535, 'gauge',   NULL),   -- A
    ('sunspec_inverter', 40072, 'current_l1',              'A',   4, 3, 'ABCD', 1,    'sf_current',        65535, 'gauge',   NULL),   -- AphA
    ('sunspec_inverter', 40073, 'current_l2',              'A',   4, 3, 'ABCD', 1,    'sf_current',        65535, 'gauge',   NULL),   -- AphB
    ('sunspec_inverter', 40074, 'current_l3',              'A',   4, 3, 'ABCD', 1,    'sf_current',        65535, 'gauge',   NULL),   -- AphC
    ('sunspec_inverter', 40075, 'sf_current',              NULL,  1, 3, 'ABCD', 1,    NULL,                -32768, 'gauge',   NULL),  -- A_SF
    ('sunspec_inverter', 40076, 'voltage_l1_l2',           'V',   4, 3, 'ABCD', 1,    'sf_voltage',        65535, 'gauge',   NULL),   -- PPVphAB
    ('sunspec_inverter', 40077, 'voltage_l2_l3',           'V',   4, 3, 'ABCD', 1,    'sf_voltage',        65535, 'gauge',   NULL),   -- PPVphBC
    ('sunspec_inverter', 40078, 'voltage_l3_l1',           'V',   4, 3, 'ABCD', 1,    'sf_voltage',        65535, 'gauge',   NULL),   -- PPVphCA
    ('sunspec_inverter', 40079, 'voltage_l1',              'V',   4, 3, 'ABCD', 1,    'sf_voltage',        65535, 'gauge',   NULL),   -- PhVphA
    ('sunspec_inverter', 40080, 'voltage_l2',              'V',   4, 3, 'ABCD', 1,    'sf_voltage',        65535, 'gauge',   NULL),   -- PhVphB
    ('sunspec_inverter', 40081, 'voltage_l3',              'V',   4, 3, 'ABCD', 1,    'sf_voltage',        65535, 'gauge',   NULL),   -- PhVphC
    ('sunspec_inverter', 40082, 'sf_voltage',              NULL,  1, 3, 'ABCD', 1,    NULL,                -32768, 'gauge',   NULL),  -- V_SF
    ('sunspec_inverter', 40083, 'active_power',            'W',   1, 3, 'ABCD', 1,    'sf_power',          -32768, 'gauge',   NULL),  -- W
    ('sunspec_inverter', 40084, 'sf_power',                NULL,  1, 3, 'ABCD', 1,    NULL,                -32768, 'gauge',   NULL),  -- W_SF
    ('sunspec_inverter', 40085, 'frequency',               'Hz',  4, 3, 'ABCD', 1,    'sf_frequency',      65535, 'gauge',   NULL),   -- Hz
    ('sunspec_inverter', 40086, 'sf_frequency',            NULL,  1, 3, 'ABCD', 1,    NULL,                -32768, 'gauge',   NULL),  -- Hz_SF
    ('sunspec_inverter', 40087, 'apparent_power',          'VA',  1, 3, 'ABCD', 1,    'sf_apparent_power', -32768, 'gauge',   NULL),  -- VA
    ('sunspec_inverter', 40088, 'sf_apparent_power',       NULL,  1, 3, 'ABCD', 1,    NULL,                -32768, 'gauge',   NULL),  -- VA_SF
    ('sunspec_inverter', 40089, 'reactive_power',          'var', 1, 3, 'ABCD', 1,    'sf_reactive_power', -32768, 'gauge',   NULL),  -- VAr
    ('sunspec_inverter', 40090, 'sf_reactive_power',       NULL,  1, 3, 'ABCD', 1,    NULL,                -32768, 'gauge',   NULL),  -- VAr_SF
    ('sunspec_inverter', 40091, 'power_factor',            NULL,  1, 3, 'ABCD', 0.01, 'sf_power_factor',   -32768, 'gauge',   NULL),  -- PF (Pct -> ratio)
    ('sunspec_inverter', 40092, 'sf_power_factor',         NULL,  1, 3, 'ABCD', 1,    NULL,                -32768, 'gauge',   NULL),  -- PF_SF
    ('sunspec_inverter', 40093, 'energy_yield',            'Wh',  5, 3, 'ABCD', 1,    'sf_energy',         0, 'counter', 60),       -- WH (acc32, lifetime AC energy)
    ('sunspec_inverter', 40095, 'sf_energy',               NULL,  1, 3, 'ABCD', 1,    NULL,                -32768, 'gauge',   NULL),  -- WH_SF
    ('sunspec_inverter', 40096, 'dc_current',              'A',   4, 3, 'ABCD', 1,    'sf_dc_current',     65535, 'gauge',   NULL),   -- DCA
    ('sunspec_inverter', 40097, 'sf_dc_current',           NULL,  1, 3, 'ABCD', 1,    NULL,                -32768, 'gauge',   NULL),  -- DCA_SF
    ('sunspec_inverter', 40098, 'dc_voltage',              'V',   4, 3, 'ABCD', 1,    'sf_dc_voltage',     65535, 'gauge',   NULL),   -- DCV
    ('sunspec_inverter', 40099, 'sf_dc_voltage',           NULL,  1, 3, 'ABCD', 1,    NULL,                -32768, 'gauge',   NULL),  -- DCV_SF
    ('sunspec_inverter', 40100, 'dc_power',                'W',   1, 3, 'ABCD', 1,    'sf_dc_power',       -32768, 'gauge',   NULL),  -- DCW
    ('sunspec_inverter', 40101, 'sf_dc_power',             NULL,  1, 3, 'ABCD', 1,    NULL,                -32768, 'gauge',   NULL),  -- DCW_SF
    ('sunspec_inverter', 40102, 'temperature',             '°C',  1, 3, 'ABCD', 1,    'sf_temperature',    -32768, 'gauge',   NULL),  -- TmpCab
    ('sunspec_inverter', 40103, 'temperature_heatsink',    '°C',  1, 3, 'ABCD', 1,    'sf_temperature',    -32768, 'gauge',   NULL),  -- TmpSnk
    ('sunspec_inverter', 40104, 'temperature_transformer', '°C',  1, 3, 'ABCD', 1,    'sf_temperature',    -32768, 'gauge',   NULL),  -- TmpTrns
    ('sunspec_inverter', 40105, 'temperature_other',       '°C',  1, 3, 'ABCD', 1,    'sf_temperature',    -32768, 'gauge',   NULL),  -- TmpOt
    ('sunspec_inverter', 40106, 'sf_temperature',          NULL,  1, 3, 'ABCD', 1,    NULL,                -32768, 'gauge',   NULL),  -- Tmp_SF
    ('sunspec_inverter', 40107, 'operating_state',         NULL,  4, 3, 'ABCD', 1,    NULL,                65535, 'gauge',   NULL),   -- St (enum16: 1 off .. 4 MPPT .. 7 fault, 8 standby)
    ('sunspec_inverter', 40108, 'operating_state_vendor',  NULL,  4, 3, 'ABCD', 1,    NULL,                65535, 'gauge',   NULL);   -- StVnd

DELETE FROM device_signatures WHERE type = 'sunspec_inverter';

INSERT INTO device_signatures (type, register_address, function_code, data_type, byte_order, scale,
                               min_value, max_value, description) VALUES
    ('sunspec_inverter', 40000, 3, 5, 'ABCD', 1, 1400204883, 1400204883, 'SunSpec marker "SunS" (0x53756E53) at 40000'),
    ('sunspec_inverter', 40069, 3, 4, 'ABCD', 1, 101, 103, 'SunSpec model id 101/102/103 (inverter, int+SF) after a 65-register common model'),
    ('sunspec_inverter', 40070, 3, 4, 'ABCD', 1, 50, 50, 'SunSpec model length 50 (models 101..103)');

COMMIT;
