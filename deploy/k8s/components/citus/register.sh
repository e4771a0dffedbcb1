#!/bin/bash
# Registers the coordinator and every worker in the coordinator's metadata. Idempotent:
# citus_set_coordinator_host updates the coordinator's row, citus_add_node returns the
# existing node of a registered worker; so the Job may run again (after adding workers).
# Retries while the nodes start: a worker that does not answer yet fails citus_add_node.
#   CITUS_COORDINATOR  host:port of the coordinator, as the workers reach it
#   CITUS_WORKERS      host:port of each worker, space-separated
set -euo pipefail
attempts="${REGISTER_ATTEMPTS:-60}"
coordinator_host="${CITUS_COORDINATOR%:*}"
coordinator_port="${CITUS_COORDINATOR##*:}"
on_coordinator() {
    psql "host=$coordinator_host port=$coordinator_port dbname=$DATABASE user=postgres
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
# The coordinator connects to the workers as the role of each session: the superuser
# with the PGPASSWORD of its environment, the app role with this password (nodeid 0:
# every worker; -1: the coordinator's connections to itself). A libpq value in single
# quotes, its quotes and backslashes escaped.
set_app_password() {
    on_coordinator -v app_user="$APP_USER" -v app_password="$APP_PASSWORD" <<'SQL'
BEGIN;
DELETE FROM pg_dist_authinfo WHERE rolename = :'app_user' AND nodeid IN (0, -1);
INSERT INTO pg_dist_authinfo (nodeid, rolename, authinfo)
SELECT node, :'app_user',
       'password=''' || replace(replace(:'app_password', '\', '\\'), '''', '\''') || ''''
FROM (VALUES (0), (-1)) AS nodes (node);
COMMIT;
SQL
}
add_node() {
    on_coordinator -v host="${1%:*}" -v port="${1##*:}" <<'SQL'
SELECT citus_add_node(:'host', :'port'::int);
SQL
}
set_coordinator() {
    on_coordinator -v host="$coordinator_host" -v port="$coordinator_port" <<'SQL'
SELECT citus_set_coordinator_host(:'host', :'port'::int);
SQL
}
retry set_coordinator
retry set_app_password
for worker in $CITUS_WORKERS; do
    retry add_node "$worker"
done
on_coordinator -c "SELECT nodename, nodeport, isactive FROM pg_dist_node ORDER BY nodeid"
