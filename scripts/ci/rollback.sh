#!/usr/bin/env bash
# The rollback workflow's step: rolls back release RG_RELEASE and verifies it
# (scripts/rollback.sh, which finishes an interrupted release first). An id the ledger
# does not know is exit 2 with one line, before anything changes. Sets the step output
# outcome (rolled_back or rollback_failed) and writes the step summary under act to
# .releasegate/ci/step-summary.md.
set -uo pipefail
tool="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
mkdir -p .releasegate/ci
if [ "${ACT:-}" = true ] && [ -z "${GITHUB_STEP_SUMMARY:-}" ]; then
  export GITHUB_STEP_SUMMARY="$PWD/.releasegate/ci/step-summary.md"
fi
if ! releasegate history --id "${RG_RELEASE:?}" >/dev/null; then
  exit 2
fi
bash "$tool/scripts/rollback.sh" "$RG_RELEASE"
rc=$?
case "$rc" in
  0) outcome=rolled_back ;;
  *) outcome=rollback_failed ;;
esac
echo "releasegate-outcome=$outcome"
if [ -n "${GITHUB_OUTPUT:-}" ]; then echo "outcome=$outcome" >>"$GITHUB_OUTPUT"; fi
exit "$rc"
