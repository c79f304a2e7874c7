#!/usr/bin/env bash
# The main job: a full release rehearsal of the bundled example service ("notes").
#
# Installs what it needs; starts PostgreSQL, Redis, Docker and the router; builds the
# example images (offline when no registry answers); deploys v1 with v1 data seeded;
# releases v2, which passes its gate and a canary judged on real traffic (5% -> 25% ->
# 50% -> 100%, users played by `hey` through the router) and is promoted; releases
# v3-bad, whose SLO gate fails, so the release rolls back by itself and verifies the
# rollback; releases v3-bad again with the canary alone, which aborts it at its first
# step; prints the evidence reports and what the users saw.
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

# Users: hey sends GET /documents through the router, about 60 requests/s, until stopped.
start_users() {
  HEY_OUT="$(mktemp)"
  hey -z 600s -c 4 -q 15 "http://127.0.0.1:18080/documents?limit=10" >"$HEY_OUT" 2>&1 &
  HEY_PID=$!
  trap 'kill -INT "$HEY_PID" 2>/dev/null || true' EXIT
}
# Stop them, show their summary; USERS_FAILED: any status but 200, or no answer at all.
stop_users() {
  kill -INT "$HEY_PID"
  wait "$HEY_PID" || true
  trap - EXIT
  sed -n '/^Summary:/,/^  Requests\/sec/p;/^Status code distribution:/,/^$/p;/^Error distribution:/,/^$/p' "$HEY_OUT"
  USERS_FAILED="$(awk '/^Status code distribution:/ {s = 1; next} /^Error distribution:/ {e = 1; next}
    /^$/ {s = 0; e = 0} s && $1 != "[200]" {n += $2} e {gsub(/[][]/, "", $1); n += $1}
    END {print n + 0}' "$HEY_OUT")"
  rm -f "$HEY_OUT"
}

step "Users: hey sends GET /documents through the router (about 60 requests/s) from now on"
start_users
# The canary's weight steps (README, "Canary"), judged on those users' requests.
export RELEASEGATE_RELEASE__CANARY='{"steps": ["5%", "25%", "50%", "100%"], "duration": "10s", "min_requests": 25}'

step "Release v2: backup, migrate, deploy green, smoke, SLO gate, canary 5% -> 25% -> 50% -> 100%, watch"
run release --image notes:v2 --allow-contract
V2_RC=$LAST_RC

step "Release v3-bad: the SLO gate fails, the release rolls back and verifies itself"
run release --image notes:v3-bad
V3_RC=$LAST_RC

step "What the users saw during those two releases: not one failed request"
stop_users
RELEASES_FAILED=$USERS_FAILED

step "Release v3-bad, canary alone (no gate): real traffic aborts it at 5%, then it rolls back"
start_users
export RELEASEGATE_RELEASE__SLO_GATE=false
run release --image notes:v3-bad --force  # --force: this image was rolled back once already
V3_CANARY_RC=$LAST_RC
unset RELEASEGATE_RELEASE__CANARY RELEASEGATE_RELEASE__SLO_GATE
# The canary, not an earlier step, stopped v3-bad.
CANARY_ABORTED=0
grep -q '| canary 5% | \*\*failed\*\*' "$(ls -v .releasegate/reports/release-*.md | tail -n 1)" && CANARY_ABORTED=1

step "What the users saw during the canary: the few v3-bad failed before the abort, at 5%"
stop_users
CANARY_FAILED=$USERS_FAILED

step "Where things stand"
run ps
run status
run history --limit 10

step "The evidence reports"
for report in .releasegate/reports/release-*.md; do
  printf '\n----- %s -----\n' "$report"
  cat "$report"
done

printf '\nv2 release exit %s (0 = promoted); v3-bad release exit %s (1 = rolled back, verified);' \
  "$V2_RC" "$V3_RC"
printf ' v3-bad canary exit %s (1 = aborted, rolled back; at canary 5%%: %s)\n' "$V3_CANARY_RC" \
  "$([ "$CANARY_ABORTED" -eq 1 ] && echo yes || echo no)"
printf "users' failed requests: %s during v2 and v3-bad's gated release, %s while v3-bad served 5%% of them\n" \
  "$RELEASES_FAILED" "$CANARY_FAILED"
printf 'demo finished in %ss\n' "$((SECONDS - DEMO_START))"
[ "$V2_RC" -eq 0 ] && [ "$V3_RC" -eq 1 ] && [ "$V3_CANARY_RC" -eq 1 ] && [ "$CANARY_ABORTED" -eq 1 ] &&
  [ "$RELEASES_FAILED" -eq 0 ]
