#!/usr/bin/env bash
# The main job: a full release rehearsal of the bundled example service ("notes").
#
# Installs what it needs; starts PostgreSQL, Redis, Docker and the router; builds the
# example images (offline when no registry answers); deploys v1 with v1 data seeded;
# releases v2, which passes its gates and is promoted; releases v3-bad, whose SLO gate
# fails, so the release rolls back by itself and verifies the rollback; prints both
# evidence reports.
#
#   scripts/demo.sh                 the whole rehearsal
#   DEMO_USERS=2000 scripts/demo.sh a bigger dataset
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/setup.sh"
ensure_python_env
start_postgres
start_redis
start_docker
install_load_tools
ensure_base_image
cd "$REPO_ROOT"

RG="$VENV/bin/releasegate"
DB="notes_demo"
export RELEASEGATE_CONFIG="$REPO_ROOT/releasegate.toml"
export NOTES_DATABASE_URL="${RELEASEGATE_TEST_PG_URL%/*}/$DB"
export NOTES_REDIS_URL="${RELEASEGATE_TEST_REDIS_URL%/*}/10"
export RELEASEGATE_PERFORMER="${RELEASEGATE_PERFORMER:-demo@$(hostname)}"
unset QDRANT_URL  # embedded Qdrant for releasegate; the app's search falls back to Postgres
USERS="${DEMO_USERS:-500}"
DEMO_START=$SECONDS

step() { printf '\n\033[1m### %s\033[0m  (%ss)\n' "$*" "$((SECONDS - DEMO_START))"; }
# Show a command, run it, say how it exited; an expected failure does not stop the demo.
run() {
  printf '$ releasegate %s\n' "$*"
  set +e
  "$RG" "$@"
  local rc=$?
  set -e
  printf '(exit %s)\n' "$rc"
  LAST_RC=$rc
}

step "A clean slate: database, Redis DB, embedded Qdrant, router, containers"
"$RG" router down --forget >/dev/null 2>&1 || true
for color in blue green; do docker rm -f "notes-$color" >/dev/null 2>&1 || true; done
psql -q "${RELEASEGATE_TEST_PG_URL}" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
redis-cli -u "$NOTES_REDIS_URL" flushdb >/dev/null
rm -rf .releasegate/qdrant .releasegate/backups .releasegate/reports

step "v1 data: Postgres at 0002, Redis sessions in camelCase, Qdrant documents v1"
"$VENV/bin/python" scripts/seed.py --users "$USERS" --migrate-to 0002
run status

step "Build the three example images (offline when no registry answers)"
for variant in v1 v2 v3-bad; do
  "$RG" build --quiet --build-arg "NOTES_VARIANT=$variant" --tag "notes:$variant" >/dev/null
  echo "built notes:$variant"
done

step "Router up; v1 deployed as blue and promoted"
run router up
run deploy --color blue --image notes:v1 --force  # the fresh router routes to blue already
run router promote blue
run ps

step "Release v2: backup, migrate (expand/data), deploy green, smoke, SLO gate, promote, watch"
run release --image notes:v2 --allow-contract
V2_RC=$LAST_RC

step "Release v3-bad: the SLO gate fails, the release rolls back and verifies itself"
run release --image notes:v3-bad
V3_RC=$LAST_RC

step "Where things stand"
run ps
run status
run history --limit 10

step "The evidence reports"
for report in .releasegate/reports/release-*.md; do
  printf '\n----- %s -----\n' "$report"
  cat "$report"
done

printf '\nv2 release exit %s (0 = promoted); v3-bad release exit %s (1 = rolled back, verified)\n' \
  "$V2_RC" "$V3_RC"
printf 'demo finished in %ss\n' "$((SECONDS - DEMO_START))"
[ "$V2_RC" -eq 0 ] && [ "$V3_RC" -eq 1 ]
