#!/usr/bin/env bash
# The test command: installs what it needs, starts PostgreSQL, runs lint, types and tests.
#   scripts/test.sh          fast suite (unit + integration + end-to-end, no slow tests)
#   scripts/test.sh --all    everything, slow tests included
#   scripts/test.sh -- ARGS  extra pytest arguments
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/setup.sh"

marker="not slow"
pytest_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --all) marker="" ;;
    --) shift; pytest_args+=("$@"); break ;;
    *) pytest_args+=("$1") ;;
  esac
  shift
done

ensure_python_env
start_postgres
start_redis
start_docker
start_registry
ensure_compose
install_load_tools
cd "$REPO_ROOT"

log "ruff"
"$VENV/bin/ruff" check src tests benchmarks migrations examples scripts
"$VENV/bin/ruff" format --check src tests benchmarks migrations examples scripts
log "mypy"
"$VENV/bin/mypy"
log "pytest"
PATH="$VENV/bin:$PATH" "$VENV/bin/pytest" -m "$marker" --cov=releasegate --cov-report=term:skip-covered --durations=15 "${pytest_args[@]}"
