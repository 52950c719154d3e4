#!/usr/bin/env bash
# Creates the poller's PostgreSQL login: a member of emm_reader (db/init.sql),
# which can only SELECT the configuration tables. Runs after init.sql:
#   - postgres image: from /docker-entrypoint-initdb.d (mounted as 10-poller-role.sh,
#     after 00-init.sql), once, when the data volume is empty;
#   - scripts/run-native: right after init.sql, same environment.
# Takes its name and password from the environment (.dev.env):
#   POSTGRES_READER_USER, POSTGRES_READER_PASSWORD; connects as POSTGRES_USER to
#   POSTGRES_DB (PGHOST/PGPORT/PGPASSWORD are honoured by psql when set).
# Running it again only resets the password (idempotent).
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
SQL
echo "10-poller-role.sh: login role '$POSTGRES_READER_USER' is a member of emm_reader (SELECT on the configuration only)"
