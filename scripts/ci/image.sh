#!/usr/bin/env bash
# The image a release job releases, identified by its digest.
#
#   RG_PROMOTED_IN empty:  builds RG_IMAGE:COMMIT from the checkout with `releasegate build`
#                          (OCI labels; offline when no registry answers) and the build
#                          arguments RG_BUILD_ARGS (one KEY=VALUE a line), then pushes it
#                          unless RG_DRY_RUN is true.
#   RG_PROMOTED_IN=ENV:    never builds: pulls RG_IMAGE:ENV-promoted-COMMIT, the tag the
#                          release workflow gives a digest once ENV promoted it; exit 2 with
#                          "no promoted digest for VERSION" when ENV never promoted it.
#
# COMMIT is RG_VERSION resolved in the checkout. Outputs: image (IMAGE@sha256:... once in
# the registry, else IMAGE:COMMIT), pushed (true/false), commit.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/workflow-commands.sh"
: "${RG_IMAGE:?}" "${RG_VERSION:?}"
config="${RG_CONFIG:-releasegate.toml}"
commit="$(git rev-parse --verify --quiet "$RG_VERSION^{commit}" || git rev-parse --verify "origin/$RG_VERSION^{commit}")"

fail() { # fail CODE MESSAGE: one error line (and an annotation under Actions)
  report_error "releasegate image" "$2"
  exit "$1"
}
digest_of() { # digest_of REF: IMAGE@sha256:... of a pulled or pushed image, or nothing
  docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$1" |
    grep -m 1 "^$RG_IMAGE@" || true
}
output() {
  echo "image=$1 pushed=$2 commit=$commit"
  if [ -n "${GITHUB_OUTPUT:-}" ]; then
    { echo "image=$1"; echo "pushed=$2"; echo "commit=$commit"; } >>"$GITHUB_OUTPUT"
  fi
}

if [ -n "${RG_PROMOTED_IN:-}" ]; then
  ref="$RG_IMAGE:$RG_PROMOTED_IN-promoted-$commit"
  if ! err="$(docker pull --quiet "$ref" 2>&1 >/dev/null)"; then
    case "$err" in
      *"not found"* | *"manifest unknown"* | *"does not exist"*)
        fail 2 "no promoted digest for $RG_VERSION: $RG_PROMOTED_IN never promoted commit $commit of $RG_IMAGE" ;;
      *) fail 3 "cannot read $ref from the registry: ${err##*$'\n'}" ;;
    esac
  fi
  image="$(digest_of "$ref")"
  [ -n "$image" ] || fail 3 "$ref has no digest in $RG_IMAGE"
  echo "$RG_PROMOTED_IN promoted $RG_VERSION as $image: released as is, not rebuilt"
  output "$image" true
  exit 0
fi

ref="$RG_IMAGE:$commit"
args=()
while IFS= read -r line; do
  line="${line#"${line%%[![:space:]]*}"}"
  [ -n "$line" ] && args+=(--build-arg "$line")
done <<<"${RG_BUILD_ARGS:-}"
started=$SECONDS
echo "::group::build $ref"
releasegate --config "$config" build --quiet --tag "$ref" --version "${RG_VERSION//\//-}" "${args[@]}" >/dev/null
echo "::endgroup::"
echo "built $ref in $((SECONDS - started)) s"
if [ "${RG_DRY_RUN:-false}" = true ]; then
  output "$ref" false
  exit 0
fi
if ! err="$(docker push --quiet "$ref" 2>&1 >/dev/null)"; then
  fail 3 "cannot push $ref to the registry: ${err##*$'\n'}"
fi
image="$(digest_of "$ref")"
[ -n "$image" ] || fail 3 "pushed $ref but the registry gave no digest"
echo "pushed $image"
output "$image" true
