#!/usr/bin/env bash
# The ephemeral environment of a release rehearsal, on the runner's Docker engine.
#   scripts/ci/ephemeral.sh          seed the stores (RG_SEED), then make the baseline live
#                                    as blue, its Postgres schema at the baseline's own
#                                    revision, so the release runs old code on the new schema
#   scripts/ci/ephemeral.sh --down   stop both colors and the router
#
# The baseline (RG_BASELINE): previous (the digest this environment promoted last, from
# the registry), none, or an image reference; RG_BASELINE_BUILD_ARGS builds it from the
# same commit instead. Without one the release is a first release: it deploys blue itself.
set -euo pipefail
tool="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [ "${1:-}" = --down ]; then
  # The live color serves traffic, so `stop` needs --force; the router goes first.
  releasegate router down --forget >/dev/null 2>&1 || true
  for color in blue green; do releasegate stop --color "$color" --force >/dev/null 2>&1 || true; done
  echo "ephemeral environment stopped"
  exit 0
fi
started=$SECONDS
case "${RG_SEED:-none}" in
  none) echo "no seed dataset" ;;
  example)
    read -r -a seed_args <<<"${RG_SEED_ARGS:-}"
    python "$tool/scripts/seed.py" "${seed_args[@]}"
    ;;
  *) releasegate backup restore "$RG_SEED" --yes ;;
esac
echo "seeded in $((SECONDS - started)) s"

baseline=""
if [ -n "${RG_BASELINE_BUILD_ARGS:-}" ]; then
  baseline="$RG_IMAGE:baseline"
  args=()
  while IFS= read -r line; do
    line="${line#"${line%%[![:space:]]*}"}"
    [ -n "$line" ] && args+=(--build-arg "$line")
  done <<<"$RG_BASELINE_BUILD_ARGS"
  releasegate build --quiet --tag "$baseline" "${args[@]}" >/dev/null
else
  case "${RG_BASELINE:-previous}" in
    none) ;;
    previous) baseline="$(bash "$tool/scripts/ci/promotion.sh" previous)" ;;
    *) baseline="$RG_BASELINE"; docker pull --quiet "$baseline" >/dev/null ;;
  esac
fi
releasegate router up
if [ -z "$baseline" ]; then
  echo "no baseline: the release is this environment's first ($((SECONDS - started)) s)"
  exit 0
fi
# A baseline built from this commit shares its migrations: the seed sets its schema.
revision=""
if [ -z "${RG_BASELINE_BUILD_ARGS:-}" ]; then
  revision="$(docker image inspect --format '{{ index .Config.Labels "releasegate.migrations.postgres" }}' "$baseline")"
  [ "$revision" != "<no value>" ] || revision=""
fi
[ -z "$revision" ] || releasegate migrate up --store postgres --to "$revision"
releasegate deploy --color blue --image "$baseline" --force
releasegate router promote blue
echo "baseline $baseline live as blue, schema at ${revision:-its seed} ($((SECONDS - started)) s)"
