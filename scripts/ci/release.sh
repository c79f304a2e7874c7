#!/usr/bin/env bash
# Runs `releasegate release` for RG_BUILT_IMAGE; releasegate itself sets the step outputs
# release-id, outcome, digest, report-json and report-markdown and writes the step summary
# (under act, where there may be no summary file, to .releasegate/ci/step-summary.md).
# Exit code: releasegate's (0 promoted, 1 failed or rolled back, 4 rollback failed).
# RG_RESUME=true continues a paused release (release --resume) instead. A canary pause
# (releasegate's exit 5) is this step's success on a remote target: the workflow's resume
# job waits for the approval. An ephemeral target ends with its job, so nobody could
# approve later: the pause is resumed at once.
set -uo pipefail
mkdir -p .releasegate/ci
if [ "${ACT:-}" = true ] && [ -z "${GITHUB_STEP_SUMMARY:-}" ]; then
  export GITHUB_STEP_SUMMARY="$PWD/.releasegate/ci/step-summary.md"
fi
flags=()
[ "${RG_DRY_RUN:-false}" = true ] && flags+=(--dry-run)
[ "${RG_ALLOW_CONTRACT:-false}" = true ] && flags+=(--allow-contract)
started=$SECONDS
if [ "${RG_RESUME:-false}" = true ]; then
  releasegate release --resume
else
  releasegate release --image "${RG_BUILT_IMAGE:?}" "${flags[@]}"
fi
rc=$?
paused=5
if [ "$rc" -eq "$paused" ] && [ "${RG_TARGET:-ephemeral}" = ephemeral ]; then
  echo "paused at a canary pause on an ephemeral target, which ends with this job: resuming at once"
  releasegate release --resume
  rc=$?
fi
if [ "$rc" -eq "$paused" ]; then
  echo "paused: the release waits at its canary pause for the approval of the resume job"
  rc=0
fi
echo "release finished in $((SECONDS - started)) s with exit $rc"
if [ -n "${GITHUB_OUTPUT:-}" ]; then
  outcome="$(sed -n 's/^outcome=//p' "$GITHUB_OUTPUT" | tail -n 1)"
  echo "releasegate-outcome=${outcome:-unknown}"
fi
if [ -n "${GITHUB_STEP_SUMMARY:-}" ] && [ -f "$GITHUB_STEP_SUMMARY" ]; then
  cp "$GITHUB_STEP_SUMMARY" .releasegate/ci/step-summary.md 2>/dev/null || true
fi
exit "$rc"
