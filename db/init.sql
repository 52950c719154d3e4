-- Energy Monitoring Management: configuration schema and seed.
--
-- Run once on an empty database (the postgres image runs it from
-- /docker-entrypoint-initdb.d; by hand: psql -v ON_ERROR_STOP=1 -f db/init.sql).
-- Operators manage meters with any PostgreSQL client; the poller re-reads these
-- tables at every cycle, so a change takes effect by the next cycle.

BEGIN;

-- ---------------------------------------------------------------------------
-- Lookup tables: what the integer codes mean, for a psql user.
-- ---------------------------------------------------------------------------

CREATE TABLE data_types (
    code           smallint PRIMARY KEY,
    name           text     NOT NULL UNIQUE,
    register_count smallint NOT NULL CHECK (register_count IN (1, 2, 4)),
    description    text     NOT NULL
);
COMMENT ON TABLE data_types IS 'registers.data_type codes: how raw 16-bit registers become a number';

INSERT INTO data_types (code, name, register_count, description) VALUES
    (1, 'int',     1, 'signed 16-bit integer (int16)'),
    (2, 'long',    2, 'signed 32-bit integer (int32)'),
    (3, 'float',   2, 'IEEE-754 32-bit float (float32)'),
    (4, 'uint16',  1, 'unsigned 16-bit integer'),
    (5, 'uint32',  2, 'unsigned 32-bit integer'),
    (6, 'int64',   4, 'signed 64-bit integer'),
    (7, 'uint64',  4, 'unsigned 64-bit integer'),
    (8, 'float64', 4, 'IEEE-754 64-bit float (double)');

CREATE TABLE function_codes (
    code        smallint PRIMARY KEY CHECK (code IN (3, 4)),
    name        text     NOT NULL UNIQUE,
    description text     NOT NULL
);
COMMENT ON TABLE function_codes IS 'registers.function_code: the poller only reads; no write function code exists here';

INSERT INTO function_codes (code, name, description) VALUES
    (3, 'read holding registers', 'Modbus function 0x03 (4xxxx registers)'),
    (4, 'read input registers',   'Modbus function 0x04 (3xxxx registers)');

CREATE TABLE byte_orders (
    name        text PRIMARY KEY,
    description text NOT NULL
);
COMMENT ON TABLE byte_orders IS 'registers.byte_order: order of the bytes A (most significant) .. D on the wire';

INSERT INTO byte_orders (name, description) VALUES
    ('ABCD', 'big-endian: high word first, high byte first (Modbus default)'),
    ('CDAB', 'word-swapped: low word first, high byte first'),
    ('BADC', 'byte-swapped: high word first, low byte first'),
    ('DCBA', 'little-endian: low word first, low byte first');

-- ---------------------------------------------------------------------------
-- Device types: one register map each, shared by every meter of that type.
-- ---------------------------------------------------------------------------

CREATE TABLE device_types (
    name             text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]+$'),
    description      text,
    -- Request planning: registers closer than max_gap are read in one request
    -- (the gap is read and discarded); no request is longer than max_block.
    max_block        smallint NOT NULL DEFAULT 125 CHECK (max_block BETWEEN 1 AND 125),
    max_gap          smallint NOT NULL DEFAULT 16  CHECK (max_gap BETWEEN 0 AND 124),
    -- Device quirks: how long to wait for one reply, and a pause between requests
    -- (some gateways need it).
    timeout_s        real     NOT NULL DEFAULT 3   CHECK (timeout_s > 0 AND timeout_s <= 60),
    request_pause_ms integer  NOT NULL DEFAULT 0   CHECK (request_pause_ms BETWEEN 0 AND 10000),
    -- More quirks (README, "Device quirks"); added after the first release, so they come
    -- last here, in the order db/upgrade.sql adds them to an older database:
    -- wait after connecting before the first request (Huawei SDongle, SmartLogger);
    connect_pause_ms   integer NOT NULL DEFAULT 0 CONSTRAINT device_types_connect_pause_ms_check
                           CHECK (connect_pause_ms BETWEEN 0 AND 60000),
    -- close the connection once the bus's meters are read (devices allowing one client);
    close_after_poll   boolean NOT NULL DEFAULT false,
    -- one request per value (devices that refuse multi-register reads).
    single_value_reads boolean NOT NULL DEFAULT false
);

-- ---------------------------------------------------------------------------
-- The two tables of the original system, same column names and meanings.
-- ---------------------------------------------------------------------------

CREATE TABLE transports (
    name        text PRIMARY KEY,
    description text NOT NULL
);
COMMENT ON TABLE transports IS 'energy_meters.transport: how a meter''s requests reach it';

INSERT INTO transports (name, description) VALUES
    ('tcp',        'Modbus TCP to host:port (a meter or a Modbus TCP gateway)'),
    ('rtuovertcp', 'RTU frames with CRC over TCP to host:port (a transparent serial server)'),
    ('udp',        'Modbus UDP to host:port'),
    ('serial',     'RTU on a local serial device: host is its path, e.g. /dev/ttyUSB0');

CREATE TABLE energy_meters (
    id            serial  PRIMARY KEY,
    host          text    NOT NULL CHECK (host <> ''),
    port          integer NOT NULL DEFAULT 502 CHECK (port BETWEEN 1 AND 65535),
    slave_address integer NOT NULL DEFAULT 1   CHECK (slave_address BETWEEN 0 AND 255),
    type          text    NOT NULL REFERENCES device_types (name) ON UPDATE CASCADE,
    description   text,
    -- NULL: the poller's POLL_CRON. Crontab format, a sixth field gives seconds.
    poll_cron     text    CHECK (poll_cron IS NULL OR poll_cron <> ''),
    enabled       boolean NOT NULL DEFAULT true,
    -- How requests reach the meter (README, "Transports"); added after the first release,
    -- so last, in the order db/upgrade.sql adds them. The serial settings count for
    -- transport 'serial' only (host is then the device path).
    transport     text     NOT NULL DEFAULT 'tcp' CONSTRAINT energy_meters_transport_fkey
                               REFERENCES transports (name) ON UPDATE CASCADE,
    baudrate      integer  NOT NULL DEFAULT 9600 CONSTRAINT energy_meters_baudrate_check
                               CHECK (baudrate BETWEEN 50 AND 4000000),
    parity        text     NOT NULL DEFAULT 'N' CONSTRAINT energy_meters_parity_check
                               CHECK (parity IN ('N', 'E', 'O')),
    stopbits      smallint NOT NULL DEFAULT 1 CONSTRAINT energy_meters_stopbits_check CHECK (stopbits IN (1, 2)),
    bytesize      smallint NOT NULL DEFAULT 8 CONSTRAINT energy_meters_bytesize_check CHECK (bytesize IN (7, 8)),
    UNIQUE (host, port, slave_address, type),
    CONSTRAINT energy_meters_serial_host_check CHECK (transport <> 'serial' OR host LIKE '/%')
);
COMMENT ON COLUMN energy_meters.slave_address IS 'Modbus unit id (0..255)';
COMMENT ON COLUMN energy_meters.host IS 'host name or address; for transport serial, the device path';

CREATE TABLE registers (
    id               serial   PRIMARY KEY,
    type             text     NOT NULL REFERENCES device_types (name)
                                  ON UPDATE CASCADE ON DELETE CASCADE,
    register_address integer  NOT NULL CHECK (register_address BETWEEN 0 AND 65535),
    measurement_name text     NOT NULL CHECK (measurement_name ~ '^[A-Za-z_][A-Za-z0-9_.-]*$'),
    data_unit        text,
    data_type        smallint NOT NULL REFERENCES data_types (code),
    function_code    smallint NOT NULL DEFAULT 3 REFERENCES function_codes (code)
                                  CHECK (function_code IN (3, 4)),
    byte_order       text     NOT NULL DEFAULT 'ABCD' REFERENCES byte_orders (name),
    -- stored value = raw * scale * 10^(scale-factor register) + value_offset
    -- ("offset" is an SQL reserved word; this name needs no quoting).
    scale            double precision NOT NULL DEFAULT 1 CHECK (scale <> 'NaN' AND scale <> 0
                                  AND scale > '-Infinity' AND scale < 'Infinity'),
    value_offset     double precision NOT NULL DEFAULT 0 CHECK (value_offset <> 'NaN'
                                  AND value_offset > '-Infinity' AND value_offset < 'Infinity'),
    -- SunSpec-style scale factor: measurement_name of another register of this
    -- type holding a signed power of ten, read in the same cycle.
    scale_factor     text,
    -- Raw value meaning "not available" (SunSpec: -32768 for int16, 65535 for
    -- uint16, -2147483648 int32, 4294967295 uint32); such a reading is not written.
    not_available    numeric,
    UNIQUE (type, measurement_name),
    FOREIGN KEY (type, scale_factor) REFERENCES registers (type, measurement_name)
        ON UPDATE CASCADE,
    CHECK (scale_factor IS NULL OR scale_factor <> measurement_name),
    -- A 16-bit value has no words to swap.
    CONSTRAINT registers_16bit_byte_order
        CHECK (data_type NOT IN (1, 4) OR byte_order IN ('ABCD', 'BADC')),
    -- The last register of the value must exist too.
    CONSTRAINT registers_address_fits
        CHECK (register_address + (CASE WHEN data_type IN (1, 4) THEN 1
                                        WHEN data_type IN (2, 3, 5) THEN 2
                                        ELSE 4 END) - 1 <= 65535),
    -- The counter guard (README, "Counters that never lie"); added after the first release,
    -- so last, in the order db/upgrade.sql adds them. A 'counter' only ever grows (energy
    -- totals): a reading that goes backwards, drops to zero or rises faster than
    -- counter_max_rate (in data_unit per second) is not written. 'gauge': any value.
    kind             text     NOT NULL DEFAULT 'gauge' CONSTRAINT registers_kind_check
                                  CHECK (kind IN ('gauge', 'counter')),
    counter_max_rate double precision CONSTRAINT registers_counter_max_rate_check
                                  CHECK (counter_max_rate IS NULL
                                         OR (counter_max_rate > 0 AND counter_max_rate < 'Infinity'))
);
CREATE INDEX registers_type_idx ON registers (type);

-- ---------------------------------------------------------------------------
-- Signatures (`emm scan`, README "Onboarding"): how a device family is recognised.
-- A device matches a family when every signature row of the family reads and its
-- value (decoded as data_type/byte_order, times scale) lies in [min_value, max_value].
-- Read only by `emm scan`; the poller never reads this table.
-- ---------------------------------------------------------------------------

CREATE TABLE device_signatures (
    id               serial   PRIMARY KEY,
    type             text     NOT NULL REFERENCES device_types (name)
                                  ON UPDATE CASCADE ON DELETE CASCADE,
    register_address integer  NOT NULL CHECK (register_address BETWEEN 0 AND 65535),
    function_code    smallint NOT NULL DEFAULT 3 REFERENCES function_codes (code),
    data_type        smallint NOT NULL REFERENCES data_types (code),
    byte_order       text     NOT NULL DEFAULT 'ABCD' REFERENCES byte_orders (name),
    scale            double precision NOT NULL DEFAULT 1 CHECK (scale <> 'NaN' AND scale <> 0
                                  AND scale > '-Infinity' AND scale < 'Infinity'),
    min_value        double precision NOT NULL CHECK (min_value > '-Infinity' AND min_value < 'Infinity'),
    max_value        double precision NOT NULL CHECK (max_value > '-Infinity' AND max_value < 'Infinity'),
    description      text     NOT NULL,  -- what the register is, e.g. 'line voltage L1, V'
    CHECK (min_value <= max_value),
    CONSTRAINT device_signatures_16bit_byte_order
        CHECK (data_type NOT IN (1, 4) OR byte_order IN ('ABCD', 'BADC'))
);
CREATE INDEX device_signatures_type_idx ON device_signatures (type);
COMMENT ON TABLE device_signatures IS 'how `emm scan` recognises a device family: registers whose values must fall in a range';

-- ---------------------------------------------------------------------------
-- Change counter: every change to the configuration tables bumps it, so the
-- poller reads one row per cycle and reloads the tables only when it moved.
-- ---------------------------------------------------------------------------

CREATE TABLE config_version (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    version    bigint      NOT NULL DEFAULT 0,
    changed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO config_version DEFAULT VALUES;

CREATE FUNCTION bump_config_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE config_version SET version = version + 1, changed_at = now();
    RETURN NULL;
END
$$;

CREATE TRIGGER device_types_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON device_types
    FOR EACH STATEMENT EXECUTE FUNCTION bump_config_version();
CREATE TRIGGER registers_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON registers
    FOR EACH STATEMENT EXECUTE FUNCTION bump_config_version();
CREATE TRIGGER energy_meters_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON energy_meters
    FOR EACH STATEMENT EXECUTE FUNCTION bump_config_version();

-- ---------------------------------------------------------------------------
-- Coordination (POLL_COORDINATION=postgres; poller/lease.py, README "Several
-- pollers"): which instance polls which bus. Written by the pollers, so the
-- poller login may change these two tables and nothing else.
-- ---------------------------------------------------------------------------

CREATE TABLE poller_instances (
    instance   text        PRIMARY KEY,  -- host:pid:random
    started_at timestamptz NOT NULL DEFAULT now(),
    seen_at    timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL       -- live while in the future
);
COMMENT ON TABLE poller_instances IS 'pollers sharing the fleet (POLL_COORDINATION=postgres): one row per instance, renewed at each heartbeat';

CREATE TABLE bus_leases (
    bus        text        PRIMARY KEY,  -- ''tcp host:502'', ''udp host:502'', ''serial /dev/ttyUSB0''
    owner      text,                     -- poller_instances.instance; NULL: given back
    epoch      bigint      NOT NULL DEFAULT 1,  -- grows with every change of owner
    expires_at timestamptz NOT NULL,      -- nobody else may poll the bus before this
    polled_through timestamptz            -- the latest tick polled, as the owner last wrote it (or its claim)
);
COMMENT ON TABLE bus_leases IS 'which poller instance polls which bus, until when (poller/lease.py)';

-- ---------------------------------------------------------------------------
-- Least privilege: the poller only reads the configuration (and writes its coordination tables). A login role is
-- made a member of this group at deployment (see docker-compose / README).
-- ---------------------------------------------------------------------------

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'emm_reader') THEN
        CREATE ROLE emm_reader NOLOGIN;
    END IF;
END
$$;
GRANT SELECT ON data_types, function_codes, byte_orders, transports, device_types,
                energy_meters, registers, config_version, device_signatures TO emm_reader;
-- the only tables the poller writes: its own coordination (POLL_COORDINATION=postgres)
GRANT SELECT, INSERT, UPDATE, DELETE ON poller_instances, bus_leases TO emm_reader;

-- ---------------------------------------------------------------------------
-- Seed: the virtual meter served by `python -m virtual_server`
-- (a three-phase meter in the style of an Eastron SDM630, compact map).
-- ---------------------------------------------------------------------------

INSERT INTO device_types (name, description) VALUES
    ('virtual_meter', 'Simulated three-phase energy meter (python -m virtual_server)');

INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code, scale) VALUES
    -- input registers (function 4): float32 instantaneous values
    ('virtual_meter',  0, 'voltage_l1',        'V',   3, 4, 1),
    ('virtual_meter',  2, 'voltage_l2',        'V',   3, 4, 1),
    ('virtual_meter',  4, 'voltage_l3',        'V',   3, 4, 1),
    ('virtual_meter',  6, 'current_l1',        'A',   3, 4, 1),
    ('virtual_meter',  8, 'current_l2',        'A',   3, 4, 1),
    ('virtual_meter', 10, 'current_l3',        'A',   3, 4, 1),
    ('virtual_meter', 12, 'active_power',      'W',   3, 4, 1),
    ('virtual_meter', 14, 'frequency',         'Hz',  3, 4, 1),
    -- holding registers (function 3): scaled integers and the energy counter
    ('virtual_meter', 100, 'power_factor',     NULL,  1, 3, 0.001),
    ('virtual_meter', 101, 'temperature',      '°C',  1, 3, 0.1),
    ('virtual_meter', 102, 'reactive_power',   'var', 2, 3, 1);
-- the energy total: a counter (README, "Counters that never lie"); the simulator's
-- meter draws about 2.5 kW, 0.7 Wh/s, so 100 Wh/s is far above anything it does
INSERT INTO registers (type, register_address, measurement_name, data_unit, data_type, function_code, scale,
                       kind, counter_max_rate) VALUES
    ('virtual_meter', 104, 'energy_import',    'Wh',  2, 3, 1, 'counter', 100);

INSERT INTO energy_meters (host, port, slave_address, type, description) VALUES
    ('virtual_modbustcp_server', 502, 1, 'virtual_meter', 'Virtual meter (simulator)');

COMMIT;
