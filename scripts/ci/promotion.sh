#!/usr/bin/env bash
# Promotions recorded in the registry, so that a later environment releases exactly the
# digest an earlier one tested, and an ephemeral rehearsal finds its baseline.
#
#   scripts/ci/promotion.sh record     tags RG_BUILT_IMAGE (IMAGE@sha256:...) as
#                                      IMAGE:ENV-promoted-COMMIT and IMAGE:ENV-promoted
#                                      (ENV = RG_ENVIRONMENT, COMMIT = RG_COMMIT) and pushes
#                                      both tags: the digest does not change
#   scripts/ci/promotion.sh previous   prints IMAGE@sha256:... of the version ENV promoted
#                                      last (pulled), or nothing when there is none
set -euo pipefail
: "${RG_IMAGE:?}" "${RG_ENVIRONMENT:?}"
case "${1:-}" in
  record)
    : "${RG_BUILT_IMAGE:?}" "${RG_COMMIT:?}"
    for tag in "$RG_ENVIRONMENT-promoted-$RG_COMMIT" "$RG_ENVIRONMENT-promoted"; do
      docker tag "$RG_BUILT_IMAGE" "$RG_IMAGE:$tag"
      if ! err="$(docker push --quiet "$RG_IMAGE:$tag" 2>&1 >/dev/null)"; then
        echo "error: cannot record the promotion as $RG_IMAGE:$tag: ${err##*$'\n'}" >&2
        exit 3
      fi
    done
    echo "recorded: $RG_ENVIRONMENT promoted $RG_BUILT_IMAGE ($RG_IMAGE:$RG_ENVIRONMENT-promoted-$RG_COMMIT)"
    ;;
  previous)
    ref="$RG_IMAGE:$RG_ENVIRONMENT-promoted"
    if ! err="$(docker pull --quiet "$ref" 2>&1 >/dev/null)"; then
      case "$err" in
        *"not found"* | *"manifest unknown"* | *"does not exist"*) exit 0 ;;  # none yet
        *) echo "error: cannot read $ref from the registry: ${err##*$'\n'}" >&2; exit 3 ;;
      esac
    fi
    docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$ref" |
      grep -m 1 "^$RG_IMAGE@" || true
    ;;
  *)
    echo "usage: promotion.sh record|previous" >&2
    exit 2
    ;;
esac
