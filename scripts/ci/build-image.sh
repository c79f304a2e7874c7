#!/usr/bin/env bash
# Builds RG_IMAGE:<tag> with `releasegate build` (OCI labels; offline when no registry
# answers) and the build arguments RG_BUILD_ARGS (one KEY=VALUE a line); pushes it unless
# RG_DRY_RUN is true or this runs under act. The tag is the version with '/' made '-'.
# Outputs: image (the reference), pushed (true/false). Idempotent: an image already in the
# engine with the same tag and build arguments is not built again (docker's layer cache
# makes a rebuild cheap anyway).
set -euo pipefail
: "${RG_IMAGE:?}" "${RG_VERSION:?}"
config="${RG_CONFIG:-releasegate.toml}"
tag="${RG_VERSION//\//-}"
ref="$RG_IMAGE:$tag"
args=()
while IFS= read -r line; do
  line="${line#"${line%%[![:space:]]*}"}"
  [ -n "$line" ] && args+=(--build-arg "$line")
done <<<"${RG_BUILD_ARGS:-}"
push=true
if [ "${RG_DRY_RUN:-false}" = true ] || [ "${ACT:-}" = true ]; then push=false; fi

started=$SECONDS
echo "::group::build $ref"
releasegate --config "$config" build --quiet --tag "$ref" --version "$tag" "${args[@]}" >/dev/null
echo "::endgroup::"
echo "built $ref in $((SECONDS - started)) s"
if [ "$push" = true ]; then
  docker push --quiet "$ref"
  echo "pushed $ref"
fi
if [ -n "${GITHUB_OUTPUT:-}" ]; then
  { echo "image=$ref"; echo "pushed=$push"; } >>"$GITHUB_OUTPUT"
fi
