#!/bin/bash
# First start of the compose PostgreSQL: one login role per service, no rights but CONNECT.
# Each role's rights on its own schema come with its migrations (qflare/migrations.py), which the
# `migrate` one-shot runs as the owner; the audit role gets INSERT and SELECT on its chain only.
set -euo pipefail
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" \
  -v registry="$QFLARE_PG_REGISTRY_PASSWORD" -v aggregator="$QFLARE_PG_AGGREGATOR_PASSWORD" \
  -v audit="$QFLARE_PG_AUDIT_PASSWORD" <<'SQL'
REVOKE ALL ON DATABASE qflare FROM PUBLIC;
CREATE ROLE qflare_registry LOGIN PASSWORD :'registry';
CREATE ROLE qflare_aggregator LOGIN PASSWORD :'aggregator';
CREATE ROLE qflare_audit LOGIN PASSWORD :'audit';
GRANT CONNECT ON DATABASE qflare TO qflare_registry, qflare_aggregator, qflare_audit;
SQL
