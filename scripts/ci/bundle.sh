#!/usr/bin/env bash
# Collects the evidence bundle: the release reports, the ledger history and the step
# summary. Outputs: name (the artifact's name) and path.
set -uo pipefail
name="releasegate-${RG_ENVIRONMENT:-release}-${GITHUB_RUN_ID:-local}-${GITHUB_RUN_ATTEMPT:-1}"
dir=".releasegate/ci/$name"
mkdir -p "$dir"
cp -r .releasegate/reports "$dir/" 2>/dev/null || true
cp .releasegate/ci/step-summary.md "$dir/" 2>/dev/null || true
releasegate history --json --limit 20 >"$dir/history.json" 2>/dev/null || rm -f "$dir/history.json"
echo "evidence bundle $name: $(find "$dir" -type f | wc -l) files"
if [ -n "${GITHUB_OUTPUT:-}" ]; then
  { echo "name=$name"; echo "path=$dir"; } >>"$GITHUB_OUTPUT"
fi
