#!/usr/bin/env bash
# Runs the benchmarks under benchmarks/ and prints their figures.
#   scripts/bench.sh                 every benchmark, with its default (full) sizes
#   scripts/bench.sh cli_startup ... only these (file names without .py)
# Extra arguments for one benchmark: .venv/bin/python benchmarks/NAME.py --help
# The remote_* benchmarks release to the simulated remote host (docs/remote-host.md, needs
# root): it is started for them and stopped at the end unless it was already running.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/remote-host.sh"
ensure_python_env
start_postgres
start_redis
install_load_tools
cd "$REPO_ROOT"

if [ $# -gt 0 ]; then
  names=("$@")
else
  names=()
  for file in benchmarks/[a-z]*.py; do names+=("$(basename "$file" .py)"); done
fi
case " ${names[*]} " in
  *" remote_"*)
    if [ ! -e "$REMOTE_NS_PATH" ]; then
      trap stop_remote_host EXIT
    fi
    start_remote_host
    ;;
esac
for name in "${names[@]}"; do
  log "benchmarks/$name.py"
  "$VENV/bin/python" "benchmarks/$name.py"
done
