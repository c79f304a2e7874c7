#!/usr/bin/env bash
# The ephemeral environment of a release rehearsal, on the runner's Docker engine.
#   scripts/ci/ephemeral.sh          seed the stores (RG_SEED), start the router and make
#                                    the baseline version live as blue
#   scripts/ci/ephemeral.sh --down   stop both colors and the router
set -euo pipefail
if [ "${1:-}" = --down ]; then
  # The live color serves traffic, so `stop` needs --force; the router goes first.
  releasegate router down --forget >/dev/null 2>&1 || true
  for color in blue green; do releasegate stop --color "$color" --force >/dev/null 2>&1 || true; done
  echo "ephemeral environment stopped"
  exit 0
fi
started=$SECONDS
case "${RG_SEED:-example}" in
  none) echo "no seed dataset" ;;
  example)
    read -r -a seed_args <<<"${RG_SEED_ARGS:-}"
    python scripts/seed.py "${seed_args[@]}"
    ;;
  *) releasegate backup restore "$RG_SEED" --yes ;;
esac
echo "seeded in $((SECONDS - started)) s"

baseline="${RG_BUILT_IMAGE:?}"
if [ -n "${RG_BASELINE_BUILD_ARGS:-}" ]; then
  baseline="$RG_IMAGE:baseline"
  args=()
  while IFS= read -r line; do
    line="${line#"${line%%[![:space:]]*}"}"
    [ -n "$line" ] && args+=(--build-arg "$line")
  done <<<"$RG_BASELINE_BUILD_ARGS"
  releasegate build --quiet --tag "$baseline" "${args[@]}" >/dev/null
fi
releasegate router up
releasegate deploy --color blue --image "$baseline" --force
releasegate router promote blue
echo "baseline $baseline live as blue ($((SECONDS - started)) s)"
