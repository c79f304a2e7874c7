#!/usr/bin/env bash
# Runs every benchmark under benchmarks/ and prints its figures.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/setup.sh"
ensure_python_env
start_postgres
cd "$REPO_ROOT"
for bench in benchmarks/cli_startup.py benchmarks/migrate_overhead.py benchmarks/migrate_test_time.py; do
  log "$bench"
  "$VENV/bin/python" "$bench" "$@"
done
