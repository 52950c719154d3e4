#!/usr/bin/env bash
# Runs once, at the first start of the influxdb container (official influxdb:2
# image, after DOCKER_INFLUXDB_INIT_* setup; the image exports the bucket's id as
# DOCKER_INFLUXDB_INIT_BUCKET_ID and the influx CLI is logged in as the admin).
# Creates the two tokens the other services use, each limited to the EMM bucket,
# and leaves each in its own volume, mounted read-only by that service only:
#   - the poller's, which can only WRITE the bucket (INFLUXDB_TOKEN_FILE);
#   - Grafana's, which can only READ it (the datasource reads the file).
# InfluxDB OSS generates token values itself: these cannot be set in .dev.env.
# EMM_TOKEN_ROOT (tests only) puts both files under another directory.
set -euo pipefail

root=${EMM_TOKEN_ROOT:-}

# store_token <service> <write|read> <file>: create the token and write it to <file>
store_token() {
    local service=$1 access=$2 out=$3 json token
    json=$(influx auth create \
        --org "$DOCKER_INFLUXDB_INIT_ORG" \
        "--$access-bucket" "$DOCKER_INFLUXDB_INIT_BUCKET_ID" \
        --description "emm $service: $access bucket $DOCKER_INFLUXDB_INIT_BUCKET only" \
        --json)
    token=$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"token":[[:space:]]*"\([^"]*\)".*/\1/p' | head -n 1)
    [[ -n $token ]] || { echo "10-service-tokens.sh: no token in: $json" >&2; exit 1; }
    mkdir -p "$(dirname "$out")"
    umask 022
    printf '%s' "$token" > "$out.tmp"
    chmod 0444 "$out.tmp"   # read by the service's non-root user; the volume is mounted only there
    mv -f "$out.tmp" "$out"
    echo "10-service-tokens.sh: $service's $access-only token for bucket $DOCKER_INFLUXDB_INIT_BUCKET stored in $out"
}

store_token poller write "$root/var/lib/emm-poller-token/influxdb-write.token"
store_token grafana read "$root/var/lib/emm-grafana-token/influxdb-read.token"
