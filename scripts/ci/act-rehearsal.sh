#!/usr/bin/env bash
# Rehearses releasegate's workflows under act with local images and a local registry only:
#
#   scripts/ci/act-rehearsal.sh [VARIANT]
#       this repository's staging.yml for the example service; VARIANT: v2 (default,
#       expect promotion) or v3-bad (expect the automatic rollback)
#   scripts/ci/act-rehearsal.sh --caller DIR [--workflow FILE] [--remote] [--secret-file F]
#                               [--input K=V]... [--secret K=V]... [--var K=V]...
#       a workflow of the service repository DIR (default .github/workflows/
#       releasegate-staging.yml; a push event, or workflow_dispatch for a workflow that has
#       no push trigger), calling releasegate's reusable workflows as OWNER/REPO/...@REF:
#       act resolves each such call to this checkout (--local-repository), and the jobs
#       fetch releasegate from it (the releasegate-source input, through the variable
#       RELEASEGATE_SOURCE), as a runner without job.workflow_repository does.
#
# Prints act's log and the step timings; the last line is releasegate-outcome=... (as the
# release or rollback job set it; `none` when act never got there). Exit status: 0 when
# act ran, whatever the outcome. RELEASEGATE_ACT_LOG keeps the log in that file.
#
# The image goes to a registry on 127.0.0.1:35000 (RELEASEGATE_ACT_REGISTRY_PORT), as
# REGISTRY/SERVICE (RELEASEGATE_ACT_IMAGE), so later runs pull the digest an earlier one
# promoted. A caller's production workflow runs on the ephemeral target, or with --remote
# on the remote target its secrets name (RELEASEGATE_PRODUCTION_TARGET=remote; the
# secrets, SSH key included, come from --secret-file, in act's .env format), with the
# router and colors as the caller's releasegate.production.toml places them. act puts the job container of a job
# with services on a network of its own; the release job needs the host's network (the
# colors and the router listen on 127.0.0.1 of the host, the service containers publish
# their ports there), so --container-options gives it that. Ports: router 38080, colors
# 38081/38082 (RELEASEGATE_ACT_PORT_BASE), away from a local demo (18080-18082) and the
# benchmarks (28080-28099).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/setup.sh"

caller="" workflow="" variant="v2" remote=0
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --caller) caller="$(cd "$2" && pwd)"; shift ;;
    --workflow) workflow="$2"; shift ;;
    --input) extra+=(--input "$2"); shift ;;
    --secret) extra+=(--secret "$2"); shift ;;
    --var) extra+=(--var "$2"); shift ;;
    --secret-file) extra+=(--secret-file "$2"); shift ;;
    --remote) remote=1 ;;
    -*) echo "error: unknown option $1" >&2; exit 2 ;;
    *) variant="$1" ;;
  esac
  shift
done

ensure_python_env
start_docker
start_registry
"$REPO_ROOT/scripts/ci/build-runner-image.sh"
port="${RELEASEGATE_ACT_PORT_BASE:-38080}"
registry="127.0.0.1:$REGISTRY_PORT"

if [ -n "$caller" ]; then
  cd "$caller"
  workflow="${workflow:-.github/workflows/releasegate-staging.yml}"
  [ -f "$workflow" ] || { echo "error: no workflow $workflow in $caller" >&2; exit 2; }
  service="$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["service"]["name"])' releasegate.toml)"
  event=push
  grep -Eq '^ *push:' "$workflow" || event=workflow_dispatch
  # Every releasegate workflow the caller names, resolved to this checkout.
  local_repos=()
  while IFS= read -r ref; do
    local_repos+=(--local-repository "$ref=$REPO_ROOT")
  done < <(sed -n 's|^ *uses: *\([^ /]*/[^ /]*\)/\.github/workflows/[^@]*@\([^ #]*\).*|\1@\2|p' .github/workflows/*.yml | sort -u)
  mode=(
    -W "$workflow" "$event" "${local_repos[@]}"
    --container-options "--network host -v $REPO_ROOT:/opt/releasegate-source:ro"
    --var RELEASEGATE_SOURCE=/opt/releasegate-source
    --var "RELEASEGATE_IMAGE=${RELEASEGATE_ACT_IMAGE:-$registry/$service}"
  )
  if [ "$remote" -eq 1 ]; then
    mode+=(--var RELEASEGATE_PRODUCTION_TARGET=remote)
  else
    mode+=(--var RELEASEGATE_PRODUCTION_TARGET=ephemeral)
  fi
  label="$service: $(basename "$workflow")"
else
  cd "$REPO_ROOT"
  service=notes
  mode=(
    -W .github/workflows/staging.yml push
    --container-options "--network host -v $REPO_ROOT:/opt/releasegate-source:ro"
    --var RELEASEGATE_SOURCE=/opt/releasegate-source
    --var "RELEASEGATE_IMAGE=$registry/notes"
    --var "RELEASEGATE_BUILD_ARGS=NOTES_VARIANT=$variant"
  )
  label="notes staging: $variant"
fi

# act leaves the containers and the network of a failed job behind, and a color may
# survive its job: remove this rehearsal's own (act-*, SERVICE-act-*) before and after.
cleanup_act() {
  local ids
  ids="$(docker ps -aq --filter 'name=^act-' --filter "name=^$service-act-")"
  # shellcheck disable=SC2086 # one argument per id
  [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
  docker network ls -q --filter 'name=^act-' | xargs -r docker network rm >/dev/null 2>&1 || true
}
cleanup_act
trap cleanup_act EXIT
# On this machine, the router and colors listen on ports of the rehearsal's own; a remote
# target has them where its environment's config file says.
local_ports=()
if [ "$remote" -eq 0 ]; then
  local_ports=(
    --env "RELEASEGATE_ROUTER__BIND=127.0.0.1:$port"
    --env "RELEASEGATE_DEPLOY__BLUE_PORT=$((port + 1))"
    --env "RELEASEGATE_DEPLOY__GREEN_PORT=$((port + 2))"
    --env RELEASEGATE_ROUTER__RUNTIME_DIR=.releasegate/router-act
  )
fi
log_file="${RELEASEGATE_ACT_LOG:-$(mktemp "${TMPDIR:-/tmp}/releasegate-act-log.XXXXXX")}"
started=$SECONDS
"$VENV/bin/act" "${mode[@]}" \
  -P ubuntu-latest=releasegate/act-runner:bookworm \
  --pull=false --action-offline-mode \
  --local-repository "actions/upload-artifact@ea165f8d65b6e75b540449e92b4886f43607fa02=$REPO_ROOT/scripts/ci/act-actions/upload-artifact" \
  --local-repository "actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683=$REPO_ROOT/scripts/ci/act-actions/checkout" \
  --container-daemon-socket /var/run/docker.sock \
  --network host \
  --var RELEASEGATE_POSTGRES_IMAGE=releasegate/act-postgres:15 \
  --var RELEASEGATE_REDIS_IMAGE=releasegate/act-redis:7 \
  --var RELEASEGATE_QDRANT=embedded \
  --var RELEASEGATE_GATE_PROFILE="${RELEASEGATE_ACT_GATE_PROFILE:-long}" \
  --env "RELEASEGATE_SERVICE__NAME=$service-act" \
  "${local_ports[@]}" \
  "${extra[@]}" 2>&1 | tee "$log_file" || true
echo "act-rehearsal: $label finished in $((SECONDS - started)) s"
echo "step timings:"
sed -n 's/^\(\[[^]]*\]\) *\(✅\|❌\) *\(Success\|Failure\) - \(.*\)$/  \1 \3 - \4/p' "$log_file" || true
# The job's own `outcome` output (set by releasegate, or by the rollback step).
outcome="$(sed -n 's/.*::set-output:: outcome=\([a-z_]*\).*/\1/p' "$log_file" | tail -n 1)"
[ -n "${RELEASEGATE_ACT_LOG:-}" ] || rm -f "$log_file"
echo "releasegate-outcome=${outcome:-none}"
