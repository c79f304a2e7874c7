#!/usr/bin/env bash
# Rehearses the staging workflow under act with local images only (no registry):
#   scripts/ci/act-rehearsal.sh [VARIANT]     VARIANT: v2 (default, expect promotion) or
#                                             v3-bad (expect the automatic rollback)
# Prints act's log and the step timings; the last line is releasegate-outcome=... (the
# staging workflow's `outcome` output: as its report job prints it, or as the release job
# set it; `none` when act never got there). Exit status: 0 when act ran, whatever the
# outcome.
#
# act puts the job container of a job with services on a network of its own; the release
# job needs the host's network (the colors and the router listen on 127.0.0.1 of the host,
# the service containers publish their ports there), so --container-options gives it that.
# Ports: router 38080, colors 38081/38082 (RELEASEGATE_ACT_PORT_BASE), away from a local
# demo (18080-18082) and the benchmarks (28080-28099).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/setup.sh"
variant="${1:-v2}"
ensure_python_env
start_docker
"$REPO_ROOT/scripts/ci/build-runner-image.sh"
cd "$REPO_ROOT"
# act leaves the containers and the network of a failed job behind, and a color may
# survive its job: remove this rehearsal's own (act-release-*, act-staging-*, notes-act-*)
# before and after the run.
cleanup_act() {
  local ids
  ids="$(docker ps -aq --filter 'name=^act-release-' --filter 'name=^act-staging-' \
    --filter 'name=^notes-act-')"
  # shellcheck disable=SC2086 # one argument per id
  [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
  docker network ls -q --filter 'name=^act-release-' | xargs -r docker network rm >/dev/null 2>&1 || true
}
cleanup_act
trap cleanup_act EXIT
port="${RELEASEGATE_ACT_PORT_BASE:-38080}"
log_file="${RELEASEGATE_ACT_LOG:-$(mktemp "${TMPDIR:-/tmp}/releasegate-act-log.XXXXXX")}"
started=$SECONDS
"$VENV/bin/act" push \
  -W .github/workflows/staging.yml \
  -P ubuntu-latest=releasegate/act-runner:bookworm \
  --pull=false --action-offline-mode \
  --local-repository "actions/upload-artifact@ea165f8d65b6e75b540449e92b4886f43607fa02=$REPO_ROOT/scripts/ci/act-actions/upload-artifact" \
  --container-daemon-socket /var/run/docker.sock \
  --network host \
  --container-options "--network host" \
  --var RELEASEGATE_IMAGE=releasegate-act/notes \
  --var RELEASEGATE_POSTGRES_IMAGE=releasegate/act-postgres:15 \
  --var RELEASEGATE_REDIS_IMAGE=releasegate/act-redis:7 \
  --var RELEASEGATE_QDRANT=embedded \
  --var RELEASEGATE_GATE_PROFILE="${RELEASEGATE_ACT_GATE_PROFILE:-long}" \
  --var "RELEASEGATE_BUILD_ARGS=NOTES_VARIANT=$variant" \
  --env RELEASEGATE_SERVICE__NAME=notes-act \
  --env "RELEASEGATE_ROUTER__BIND=127.0.0.1:$port" \
  --env "RELEASEGATE_DEPLOY__BLUE_PORT=$((port + 1))" \
  --env "RELEASEGATE_DEPLOY__GREEN_PORT=$((port + 2))" \
  --env RELEASEGATE_ROUTER__RUNTIME_DIR=.releasegate/router-act \
  "${@:2}" 2>&1 | tee "$log_file" || true
echo "act-rehearsal: $variant finished in $((SECONDS - started)) s"
echo "step timings:"
sed -n 's/^\(\[[^]]*\]\) *\(✅\|❌\) *\(Success\|Failure\) - \(.*\)$/  \1 \3 - \4/p' "$log_file" || true
# The report job prints the workflow's outputs; act skips it when the release job failed
# (a rollback), so then the release job's own `outcome` output is read.
outcome="$(sed -n 's/.*| releasegate-outcome=\([a-z_]*\) release-id=.*/\1/p' "$log_file" | tail -n 1)"
[ -n "$outcome" ] || outcome="$(sed -n 's/.*::set-output:: outcome=\([a-z_]*\).*/\1/p' "$log_file" | tail -n 1)"
[ -n "${RELEASEGATE_ACT_LOG:-}" ] || rm -f "$log_file"
echo "releasegate-outcome=${outcome:-none}"
