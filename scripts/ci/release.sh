#!/usr/bin/env bash
# Runs `releasegate release` for RG_BUILT_IMAGE; releasegate itself sets the step outputs
# release-id, outcome, digest, report-json and report-markdown and writes the step summary
# (under act, where there may be no summary file, to .releasegate/ci/step-summary.md).
# Exit code: releasegate's (0 promoted, 1 failed or rolled back, 4 rollback failed).
set -uo pipefail
mkdir -p .releasegate/ci
if [ "${ACT:-}" = true ] && [ -z "${GITHUB_STEP_SUMMARY:-}" ]; then
  export GITHUB_STEP_SUMMARY="$PWD/.releasegate/ci/step-summary.md"
fi
flags=()
[ "${RG_DRY_RUN:-false}" = true ] && flags+=(--dry-run)
[ "${RG_ALLOW_CONTRACT:-false}" = true ] && flags+=(--allow-contract)
started=$SECONDS
releasegate release --image "${RG_BUILT_IMAGE:?}" "${flags[@]}"
rc=$?
echo "release finished in $((SECONDS - started)) s with exit $rc"
if [ -n "${GITHUB_OUTPUT:-}" ]; then
  outcome="$(sed -n 's/^outcome=//p' "$GITHUB_OUTPUT" | tail -n 1)"
  echo "releasegate-outcome=${outcome:-unknown}"
fi
if [ -n "${GITHUB_STEP_SUMMARY:-}" ] && [ -f "$GITHUB_STEP_SUMMARY" ]; then
  cp "$GITHUB_STEP_SUMMARY" .releasegate/ci/step-summary.md 2>/dev/null || true
fi
exit "$rc"
