#!/bin/sh
# The StatefulSet passes mongod's arguments (--wiredTigerCacheSizeGB 0.25): they tune a
# storage engine FerretDB does not have, so they are ignored. FerretDB's flags come from
# the FERRETDB_* environment (Containerfile).
[ "$#" -eq 0 ] || echo "mongod substitute: ignoring mongod arguments: $*" >&2

# Like mongo's entrypoint, MONGO_INITDB_ROOT_USERNAME/PASSWORD (the mongodb-credentials Secret)
# turn authentication on with that user in `admin`. FerretDB 1.24 authenticates with SCRAM (what
# the drivers use) only under its experimental "new auth", which keeps its users in its own
# store, whatever the backend; its setup creates the user on an empty volume.
if [ -n "${MONGO_INITDB_ROOT_USERNAME:-}" ] && [ -n "${MONGO_INITDB_ROOT_PASSWORD:-}" ]; then
  export FERRETDB_TEST_ENABLE_NEW_AUTH=true \
         FERRETDB_SETUP_DATABASE=admin \
         FERRETDB_SETUP_USERNAME="$MONGO_INITDB_ROOT_USERNAME" \
         FERRETDB_SETUP_PASSWORD="$MONGO_INITDB_ROOT_PASSWORD"
fi
# PostgreSQL (data in /data/db/postgresql) and FerretDB in front of it, stopped together.
exec /usr/local/bin/ferretdb_store.sh
