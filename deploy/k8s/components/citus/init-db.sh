#!/bin/bash
# Runs once per node, when the image's entrypoint creates the data directory, after the
# image's own script created the citus extension in $POSTGRES_DB. Every node gets the
# same app role and database owner, so the coordinator finds them on each worker.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v app_user="$APP_USER" -v app_password="$APP_PASSWORD" -v db="$POSTGRES_DB" <<'SQL'
CREATE ROLE :"app_user" LOGIN PASSWORD :'app_password';
ALTER DATABASE :"db" OWNER TO :"app_user";
-- Made by the app role (cube is trusted: the database's owner may), because on Citus
-- even the service's CREATE EXTENSION IF NOT EXISTS cube fails for a role that does
-- not own the extension.
SET ROLE :"app_user";
CREATE EXTENSION IF NOT EXISTS cube;
SQL
