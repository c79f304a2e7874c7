#!/usr/bin/env bash
# The main job: a migration rehearsal of the bundled example service ("notes").
# Installs what it needs, starts PostgreSQL, builds a v1 database with data, then walks
# the whole migration safety model: status, plan + lint, stairway test, apply, verify,
# undo, and the ledger that recorded every step.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/setup.sh"
ensure_python_env
start_postgres
cd "$REPO_ROOT"

RG="$VENV/bin/releasegate"
DB="notes_demo"
export RELEASEGATE_CONFIG="$REPO_ROOT/releasegate.toml"
export NOTES_DATABASE_URL="${RELEASEGATE_TEST_PG_URL%/*}/$DB"
SEED_USERS="${SEED_USERS:-5000}"

step() { printf '\n\033[1m### %s\033[0m\n' "$*"; }
# Show a command, run it, and say how it exited; expected failures do not stop the demo.
run() {
  printf '$ releasegate %s\n' "$*"
  set +e
  "$RG" "$@"
  local rc=$?
  set -e
  printf '(exit %s)\n' "$rc"
  return 0
}

step "A fresh database for the example service"
psql -q "${RELEASEGATE_TEST_PG_URL}" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
run config check

step "v1: schema up to 0002 and $SEED_USERS users with documents"
run migrate up --to 0002
psql -q "$NOTES_DATABASE_URL" <<SQL
INSERT INTO users (email, full_name)
SELECT 'User' || g || '@Example.COM', 'User Number ' || g FROM generate_series(1, $SEED_USERS) g;
INSERT INTO documents (owner_id, title, body)
SELECT id, 'Notes of ' || full_name, repeat('lorem ipsum ', 20) FROM users;
INSERT INTO document_chunks (document_id, ord, text, vector_id)
SELECT d.id, o, 'chunk ' || o, gen_random_uuid() FROM documents d, generate_series(1, 2) o;
SQL

step "Where the database stands"
run migrate status

step "The plan: exact SQL, phases and squawk lint"
run migrate plan

step "Stairway test on a throwaway database (up/down/up per revision, drift, no trace)"
run migrate test

step "Apply the expand and data revisions, then the contract"
run migrate up --to 0005
run migrate up
run migrate verify
run migrate status

step "Undo the contract revision; going further stops at the irreversible 0005"
run migrate down --to 0005
run migrate down --to base

step "The ledger"
run history
last_failed="$("$RG" history --json | "$VENV/bin/python" -c 'import json,sys; print(next(r["id"] for r in json.load(sys.stdin) if r["outcome"] == "failed"))')"
run history --id "$last_failed"
