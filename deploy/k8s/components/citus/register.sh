#!/bin/bash
# Registers the coordinator and every worker in the coordinator's metadata. Idempotent:
# citus_set_coordinator_host updates the coordinator's row, citus_add_node returns the
# existing node of a registered worker; so the Job may run again (after adding workers).
# Retries while the nodes start: a worker that does not answer yet fails citus_add_node.
set -euo pipefail
domain="$POD_NAMESPACE.svc"
coordinator="$CITUS_COORDINATOR_SERVICE-0.$CITUS_COORDINATOR_SERVICE.$domain"
on_coordinator() {
    psql "host=$coordinator port=5432 dbname=$DATABASE user=postgres sslmode=require connect_timeout=5" \
        -v ON_ERROR_STOP=1 -qAt "$@"
}
retry() {
    for attempt in $(seq 1 60); do
        if "$@"; then return 0; fi
        echo "not yet ($attempt/60): $*" >&2
        sleep 5
    done
    return 1
}
# The coordinator connects to the workers as the role of each session: the superuser
# with the PGPASSWORD of its environment, the app role with this password (nodeid 0:
# every worker; -1: the coordinator's connections to itself).
set_app_password() {
    on_coordinator -v app_user="$APP_USER" -v app_password="$APP_PASSWORD" <<'SQL'
BEGIN;
DELETE FROM pg_dist_authinfo WHERE rolename = :'app_user' AND nodeid IN (0, -1);
INSERT INTO pg_dist_authinfo (nodeid, rolename, authinfo)
SELECT n, :'app_user',
       'password=''' || replace(replace(:'app_password', '\', '\\'), '''', '\''') || ''''
FROM (VALUES (0), (-1)) AS nodes (n);
COMMIT;
SQL
}
retry on_coordinator -c "SELECT citus_set_coordinator_host('$coordinator', 5432)"
retry set_app_password
for i in $(seq 0 $((CITUS_WORKERS - 1))); do
    worker="$CITUS_WORKER_SERVICE-$i.$CITUS_WORKER_SERVICE.$domain"
    retry on_coordinator -c "SELECT citus_add_node('$worker', 5432)"
done
on_coordinator -c "SELECT nodename, nodeport, isactive FROM pg_dist_node ORDER BY nodeid"
