#!/usr/bin/env bash
# Runs once, at the first start of the influxdb container (official influxdb:2
# image, after DOCKER_INFLUXDB_INIT_* setup; the image exports the bucket's id as
# DOCKER_INFLUXDB_INIT_BUCKET_ID and the influx CLI is logged in as the admin).
# Creates the poller's token, which can only WRITE the EMM bucket, and leaves it in
# the poller-token volume, where the poller reads it (INFLUXDB_TOKEN_FILE).
# InfluxDB OSS generates token values itself: this one cannot be set in .dev.env.
set -euo pipefail

out_dir=/var/lib/emm-poller-token
out=$out_dir/influxdb-write.token

json=$(influx auth create \
    --org "$DOCKER_INFLUXDB_INIT_ORG" \
    --write-bucket "$DOCKER_INFLUXDB_INIT_BUCKET_ID" \
    --description "emm poller: write bucket $DOCKER_INFLUXDB_INIT_BUCKET only" \
    --json)
token=$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"token":[[:space:]]*"\([^"]*\)".*/\1/p' | head -n 1)
[[ -n $token ]] || { echo "10-poller-token.sh: no token in: $json" >&2; exit 1; }

mkdir -p "$out_dir"
umask 022
printf '%s' "$token" > "$out.tmp"
chmod 0444 "$out.tmp"   # read by the poller's non-root user; the volume is mounted only there
mv -f "$out.tmp" "$out"
echo "10-poller-token.sh: write-only token for bucket $DOCKER_INFLUXDB_INIT_BUCKET stored in $out"
