#!/usr/bin/env bash
# Install and start a local PostgreSQL (Debian) listening on 127.0.0.1 with a `sweep` role
# and the databases `sweeps` (Optuna) and `mlflow` (MLflow tracking). Idempotent.
set -euo pipefail
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
pg_lsclusters -h | grep -q "^$version main" || pg_createcluster "$version" main >/dev/null
# pg_conftool would write 127.0.0.1 unquoted (it takes it for a number), which PostgreSQL rejects.
sed -i "s/^#\?listen_addresses\s*=.*/listen_addresses = '127.0.0.1'/" "/etc/postgresql/$version/main/postgresql.conf"
pg_lsclusters -h | grep "^$version main" | grep -q online || pg_ctlcluster "$version" main start
as_postgres() { su postgres -c "$1"; }
as_postgres "psql -tAc \"SELECT 1 FROM pg_roles WHERE rolname='sweep'\"" | grep -q 1 ||
    as_postgres "psql -qc \"CREATE ROLE sweep LOGIN SUPERUSER PASSWORD 'sweep'\""
for db in sweeps mlflow; do
    as_postgres "psql -tAc \"SELECT 1 FROM pg_database WHERE datname='$db'\"" | grep -q 1 ||
        as_postgres "createdb -O sweep $db"
done
echo "postgres $version on 127.0.0.1:5432: databases sweeps, mlflow (role sweep)"
