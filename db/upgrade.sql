-- Energy Monitoring Management: bring a configuration database made by an earlier
-- db/init.sql up to the current schema. Idempotent: running it again changes nothing,
-- and on a database made by the current db/init.sql it changes nothing either.
-- docker compose runs it at every `up` (service db-upgrade, before the poller starts);
-- by hand: psql -v ON_ERROR_STOP=1 -d energy -f db/upgrade.sql
-- tests/test_upgrade.py checks that the first release's schema, upgraded, equals init.sql's.

BEGIN;

-- The change counter (since the second release): every change to the configuration
-- tables bumps it, so the poller reloads the tables only when it moved.
CREATE TABLE IF NOT EXISTS config_version (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    version    bigint      NOT NULL DEFAULT 0,
    changed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO config_version DEFAULT VALUES ON CONFLICT (singleton) DO NOTHING;

CREATE OR REPLACE FUNCTION bump_config_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE config_version SET version = version + 1, changed_at = now();
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER device_types_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON device_types
    FOR EACH STATEMENT EXECUTE FUNCTION bump_config_version();
CREATE OR REPLACE TRIGGER registers_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON registers
    FOR EACH STATEMENT EXECUTE FUNCTION bump_config_version();
CREATE OR REPLACE TRIGGER energy_meters_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON energy_meters
    FOR EACH STATEMENT EXECUTE FUNCTION bump_config_version();
GRANT SELECT ON config_version TO emm_reader;

-- 2026-11: transports (README, "Transports") and device quirks (README, "Device quirks")

CREATE TABLE IF NOT EXISTS transports (
    name        text PRIMARY KEY,
    description text NOT NULL
);
COMMENT ON TABLE transports IS 'energy_meters.transport: how a meter''s requests reach it';
INSERT INTO transports (name, description) VALUES
    ('tcp',        'Modbus TCP to host:port (a meter or a Modbus TCP gateway)'),
    ('rtuovertcp', 'RTU frames with CRC over TCP to host:port (a transparent serial server)'),
    ('udp',        'Modbus UDP to host:port'),
    ('serial',     'RTU on a local serial device: host is its path, e.g. /dev/ttyUSB0')
ON CONFLICT (name) DO NOTHING;

ALTER TABLE device_types
    ADD COLUMN IF NOT EXISTS connect_pause_ms integer NOT NULL DEFAULT 0
        CONSTRAINT device_types_connect_pause_ms_check CHECK (connect_pause_ms BETWEEN 0 AND 60000),
    ADD COLUMN IF NOT EXISTS close_after_poll boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS single_value_reads boolean NOT NULL DEFAULT false;

ALTER TABLE energy_meters
    ADD COLUMN IF NOT EXISTS transport text NOT NULL DEFAULT 'tcp'
        CONSTRAINT energy_meters_transport_fkey REFERENCES transports (name) ON UPDATE CASCADE,
    ADD COLUMN IF NOT EXISTS baudrate integer NOT NULL DEFAULT 9600
        CONSTRAINT energy_meters_baudrate_check CHECK (baudrate BETWEEN 50 AND 4000000),
    ADD COLUMN IF NOT EXISTS parity text NOT NULL DEFAULT 'N'
        CONSTRAINT energy_meters_parity_check CHECK (parity IN ('N', 'E', 'O')),
    ADD COLUMN IF NOT EXISTS stopbits smallint NOT NULL DEFAULT 1
        CONSTRAINT energy_meters_stopbits_check CHECK (stopbits IN (1, 2)),
    ADD COLUMN IF NOT EXISTS bytesize smallint NOT NULL DEFAULT 8
        CONSTRAINT energy_meters_bytesize_check CHECK (bytesize IN (7, 8));

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conname = 'energy_meters_serial_host_check') THEN
        ALTER TABLE energy_meters ADD CONSTRAINT energy_meters_serial_host_check
            CHECK (transport <> 'serial' OR host LIKE '/%');
    END IF;
END
$$;
COMMENT ON COLUMN energy_meters.host IS 'host name or address; for transport serial, the device path';

GRANT SELECT ON transports TO emm_reader;

-- 2026-11: coordination of several pollers (README, "Several pollers")
CREATE TABLE IF NOT EXISTS poller_instances (
    instance   text        PRIMARY KEY,  -- host:pid:random
    started_at timestamptz NOT NULL DEFAULT now(),
    seen_at    timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL       -- live while in the future
);
COMMENT ON TABLE poller_instances IS 'pollers sharing the fleet (POLL_COORDINATION=postgres): one row per instance, renewed at each heartbeat';
CREATE TABLE IF NOT EXISTS bus_leases (
    bus        text        PRIMARY KEY,  -- ''tcp host:502'', ''udp host:502'', ''serial /dev/ttyUSB0''
    owner      text,                     -- poller_instances.instance; NULL: given back
    epoch      bigint      NOT NULL DEFAULT 1,  -- grows with every change of owner
    expires_at timestamptz NOT NULL       -- nobody else may poll the bus before this
);
COMMENT ON TABLE bus_leases IS 'which poller instance polls which bus, until when (poller/lease.py)';
GRANT SELECT, INSERT, UPDATE, DELETE ON poller_instances, bus_leases TO emm_reader;
-- 2026-11: the ticks a bus misses while it changes instance are counted (README, "Several pollers")
ALTER TABLE bus_leases ADD COLUMN IF NOT EXISTS polled_through timestamptz;

-- 2026-11: the counter guard (README, "Counters that never lie") and scan signatures
-- (README, "Onboarding")
ALTER TABLE registers
    ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'gauge'
        CONSTRAINT registers_kind_check CHECK (kind IN ('gauge', 'counter')),
    ADD COLUMN IF NOT EXISTS counter_max_rate double precision
        CONSTRAINT registers_counter_max_rate_check CHECK (counter_max_rate IS NULL
                                                         OR (counter_max_rate > 0 AND counter_max_rate < 'Infinity'));
CREATE TABLE IF NOT EXISTS device_signatures (
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
    description      text     NOT NULL,
    CHECK (min_value <= max_value),
    CONSTRAINT device_signatures_16bit_byte_order
        CHECK (data_type NOT IN (1, 4) OR byte_order IN ('ABCD', 'BADC'))
);
CREATE INDEX IF NOT EXISTS device_signatures_type_idx ON device_signatures (type);
COMMENT ON TABLE device_signatures IS 'how `emm scan` recognises a device family: registers whose values must fall in a range';
GRANT SELECT ON device_signatures TO emm_reader;

-- ALTER TABLE fires no trigger: tell running pollers to read the configuration again.
UPDATE config_version SET version = version + 1, changed_at = now();

COMMIT;
