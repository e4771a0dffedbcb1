#!/bin/bash
# The search pods' init container: their migrations distribute the tables over the
# workers registered at that moment, so they start only once the Job registered all.
set -euo pipefail
dsn="host=$CITUS_COORDINATOR_SERVICE port=5432 dbname=$DATABASE sslmode=require connect_timeout=5"
active() { psql "$dsn" -qAt -c 'SELECT count(*) FROM citus_get_active_worker_nodes()' || echo 0; }
until [ "$(active)" -ge "$CITUS_WORKERS" ]; do
    echo "waiting for $CITUS_WORKERS Citus workers" >&2
    sleep 5
done
