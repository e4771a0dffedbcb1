#!/bin/bash
# Registers the coordinator and every worker in the coordinator's metadata. Idempotent:
# citus_set_coordinator_host updates the coordinator's row, citus_add_node returns the
# existing node of a registered worker; so the Job may run again (after adding workers).
# Retries while the nodes start: a node that does not answer yet fails its step.
#   CITUS_COORDINATOR  host:port of the coordinator, as the workers reach it
#   CITUS_WORKERS      host:port of each worker, space-separated
set -euo pipefail
attempts="${REGISTER_ATTEMPTS:-60}"
on_node() {
    local node="$1"
    shift
    psql "host=${node%:*} port=${node##*:} dbname=$DATABASE user=postgres
          sslmode=${CITUS_SSLMODE:-require} connect_timeout=5" -X -v ON_ERROR_STOP=1 -qAt "$@"
}
retry() {
    for attempt in $(seq 1 "$attempts"); do
        if "$@"; then return 0; fi
        echo "not yet ($attempt/$attempts): $*" >&2
        sleep "${REGISTER_INTERVAL_S:-5}"
    done
    return 1
}
# A node connects to the others as the role of the session: the app role (queries),
# the superuser (registration, shard moves). pg_dist_authinfo gives it their passwords
# (nodeid 0: any other node, -1: itself); it is not copied between nodes, so every node
# gets it. Values as libpq reads them: in single quotes, quotes and backslashes escaped.
set_passwords() {
    on_node "$1" -v app_user="$APP_USER" -v app_password="$APP_PASSWORD" \
        -v superuser_password="$PGPASSWORD" <<'SQL'
BEGIN;
WITH credentials (rolename) AS (VALUES (:'app_user'), ('postgres'))
DELETE FROM pg_dist_authinfo a USING credentials c
WHERE a.rolename = c.rolename AND a.nodeid IN (0, -1);
WITH credentials (rolename, password) AS (
    VALUES (:'app_user', :'app_password'), ('postgres', :'superuser_password')
)
INSERT INTO pg_dist_authinfo (nodeid, rolename, authinfo)
SELECT node, rolename,
       'password=''' || replace(replace(password, '\', '\\'), '''', '\''') || ''''
FROM credentials, (VALUES (0), (-1)) AS nodes (node);
COMMIT;
SQL
}
set_coordinator() {
    on_node "$CITUS_COORDINATOR" -v host="${CITUS_COORDINATOR%:*}" \
        -v port="${CITUS_COORDINATOR##*:}" <<'SQL'
SELECT citus_set_coordinator_host(:'host', :'port'::int);
SQL
}
add_worker() {
    on_node "$CITUS_COORDINATOR" -v host="${1%:*}" -v port="${1##*:}" <<'SQL'
SELECT citus_add_node(:'host', :'port'::int);
SQL
}
for node in "$CITUS_COORDINATOR" $CITUS_WORKERS; do
    retry set_passwords "$node"
done
retry set_coordinator
for worker in $CITUS_WORKERS; do
    retry add_worker "$worker"
done
on_node "$CITUS_COORDINATOR" -c "SELECT nodename, nodeport, isactive FROM pg_dist_node ORDER BY nodeid"
