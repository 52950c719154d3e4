#!/usr/bin/env bash
# Creates the poller's PostgreSQL login: a member of emm_reader (db/init.sql),
# which can only SELECT the configuration tables, and can write nothing anywhere,
# even in a session that turns its read-only default off. Runs after init.sql:
#   - postgres image: from /docker-entrypoint-initdb.d (mounted as 10-poller-role.sh,
#     after 00-init.sql), once, when the data volume is empty;
#   - scripts/run-native: right after init.sql, same environment.
# Takes its name and password from the environment (.dev.env):
#   POSTGRES_READER_USER, POSTGRES_READER_PASSWORD; connects as POSTGRES_USER to
#   POSTGRES_DB (PGHOST/PGPORT/PGPASSWORD are honoured by psql when set).
# Running it again only resets the password (idempotent).
#
# What it takes away, and from whom: PUBLIC (every login that is not a superuser)
# loses TEMPORARY and CREATE on this database and CREATE on its schemas, EXECUTE on the
# functions that create or write large objects or write WAL messages, and CONNECT on the
# server's other databases (in each of those a login could otherwise create temporary
# tables or large objects). Meant for the database server of this stack (the postgres
# container, run-native's cluster); on a shared server, grant CONNECT back where needed.
# What no script can take away in stock PostgreSQL: a login may change its own
# password and its own role settings (README.md, "Gaps").
set -euo pipefail

: "${POSTGRES_READER_USER:?set POSTGRES_READER_USER (the poller login role) in .dev.env}"
: "${POSTGRES_READER_PASSWORD:?set POSTGRES_READER_PASSWORD in .dev.env}"
: "${POSTGRES_USER:?}" "${POSTGRES_DB:?}"

psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet \
     --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     --set reader="$POSTGRES_READER_USER" --set password="$POSTGRES_READER_PASSWORD" \
     --set dbname="$POSTGRES_DB" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'reader')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'reader') \gexec
-- Only what the group grants: no superuser, no DDL, no role or database creation.
SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION '
              'NOBYPASSRLS INHERIT CONNECTION LIMIT 20 PASSWORD %L',
              :'reader', :'password') \gexec
SELECT format('GRANT emm_reader TO %I', :'reader') \gexec
SELECT format('GRANT CONNECT ON DATABASE %I TO %I', :'dbname', :'reader') \gexec
-- A read-only session by default: a bug or a leaked password cannot change data.
SELECT format('ALTER ROLE %I SET default_transaction_read_only = on', :'reader') \gexec

-- Nothing to write into even when a session turns that off (SET default_transaction_read_only
-- = off is every session's right). No temporary tables, no new schemas, here ...
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'dbname') \gexec
SELECT format('REVOKE TEMPORARY, CREATE ON DATABASE %I FROM %I', :'dbname', :'reader') \gexec
SELECT format('GRANT CONNECT ON DATABASE %I TO %I', :'dbname', :'reader') \gexec
-- ... no object in any schema (PUBLIC had CREATE on `public` before PostgreSQL 15) ...
SELECT format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC, %I', nspname, :'reader')
  FROM pg_namespace WHERE nspname !~ '^pg_(toast|temp_|toast_temp_)' \gexec
-- ... no large objects (they belong to no table: lo_create and friends are PUBLIC's by
-- default), no WAL messages ...
SELECT format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', p.oid::regprocedure)
  FROM pg_proc p
 WHERE p.pronamespace = 'pg_catalog'::regnamespace
   AND p.proname IN ('lo_create', 'lo_creat', 'lo_from_bytea', 'lo_import', 'lo_export', 'lo_put',
                     'lowrite', 'lo_open', 'lo_truncate', 'lo_truncate64', 'lo_unlink',
                     'pg_logical_emit_message') \gexec
-- ... and no other database to do it in.
SELECT format('REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM PUBLIC', datname)
  FROM pg_database WHERE datname <> current_database() AND datallowconn \gexec
SQL
echo "10-poller-role.sh: login role '$POSTGRES_READER_USER' is a member of emm_reader (SELECT on the configuration only; no write anywhere)"
