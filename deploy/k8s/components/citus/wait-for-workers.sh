#!/bin/bash
# The search pods' init container: their migrations distribute the tables over the
# workers registered at that moment, so they start only once the Job registered all
# of CITUS_WORKERS (host:port, space-separated).
set -euo pipefail
read -r -a workers <<< "$CITUS_WORKERS"
coordinator="host=${CITUS_COORDINATOR%:*} port=${CITUS_COORDINATOR##*:}"
dsn="$coordinator dbname=$DATABASE sslmode=${CITUS_SSLMODE:-require} connect_timeout=5"
active() {
    psql "$dsn" -X -qAt -c 'SELECT count(*) FROM citus_get_active_worker_nodes()' || echo 0
}
until [ "$(active)" -ge "${#workers[@]}" ]; do
    echo "waiting for ${#workers[@]} Citus workers" >&2
    sleep "${WAIT_INTERVAL_S:-5}"
done
