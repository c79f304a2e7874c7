#!/usr/bin/env bash
# Checks a release's inputs before anything is built or deployed; exit 2 (releasegate's
# usage/config error) with one clear line per problem (and, under Actions, one annotation;
# the inputs they quote are escaped, so none can end the line and start a command). Inputs
# come from the environment, as release.yml passes them (never through the command line of
# a shell):
#
#   RG_IMAGE RG_VERSION RG_ENVIRONMENT RG_CONFIG RG_GATE_PROFILE RG_TARGET RG_QDRANT RG_SEED
#   RG_BASELINE RG_PROMOTED_IN
#   DOCKER_HOST DOCKER_KNOWN_HOSTS DATABASE_URL REDIS_URL QDRANT_URL
#       (remote target: secrets; only checked for presence, never printed)
#
#   scripts/ci/preflight.sh [REPO_DIR]   REPO_DIR: the checkout (default: the current dir)
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/workflow-commands.sh"
repo="${1:-.}"
problems=()
problem() { problems+=("$*"); }

image="${RG_IMAGE:-}"
version="${RG_VERSION:-}"
environment="${RG_ENVIRONMENT:-}"
config="${RG_CONFIG:-releasegate.toml}"
profile="${RG_GATE_PROFILE:-config}"
target="${RG_TARGET:-ephemeral}"
qdrant="${RG_QDRANT:-service}"
seed="${RG_SEED:-none}"
baseline="${RG_BASELINE:-previous}"
promoted_in="${RG_PROMOTED_IN:-}"

action="${RG_ACTION:-release}"
release_id="${RG_RELEASE:-}"

# rollback.yml: a release id and a persistent target instead of an image and a version.
if [ "$action" = rollback ]; then
  if ! [[ "$release_id" =~ ^[1-9][0-9]{0,17}$ ]]; then
    problem "input release '$release_id' is not a release id: give the number releasegate history shows"
  fi
  if [ "$target" != remote ]; then
    problem "input target '$target': only a remote target outlives its release job; an ephemeral one has nothing to roll back"
  fi
  image=rollback version=HEAD profile=config
fi

# Image: a repository name without tag or digest (the version becomes the tag).
if [ -z "$image" ]; then
  problem "input image is empty: give the image name, e.g. ghcr.io/OWNER/SERVICE"
elif ! [[ "$image" =~ ^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*$ ]]; then
  problem "input image '$image' is not an image name (lower case, no tag or digest), e.g. ghcr.io/OWNER/SERVICE"
fi
if [ -z "$environment" ]; then
  problem "input environment is empty: name the GitHub environment, e.g. staging"
elif ! [[ "$environment" =~ ^[A-Za-z0-9._-]+$ ]]; then
  problem "input environment '$environment' may hold only letters, digits, '.', '_' and '-'"
fi
if [ -n "$promoted_in" ] && ! [[ "$promoted_in" =~ ^[A-Za-z0-9._-]+$ ]]; then
  problem "input promoted-in '$promoted_in' is not an environment name"
elif [ -n "$promoted_in" ] && [ "$promoted_in" = "$environment" ]; then
  problem "input promoted-in names the environment being released ($environment): name the earlier one, e.g. staging"
fi
case "$profile" in config | quick | long) ;; *)
  problem "input gate-profile '$profile' is unknown: use config, quick or long" ;;
esac
case "$target" in ephemeral | remote) ;; *)
  problem "input target '$target' is unknown: use ephemeral or remote" ;;
esac
case "$qdrant" in service | embedded) ;; *)
  problem "input qdrant '$qdrant' is unknown: use service or embedded" ;;
esac

# The version: a tag, branch or commit of the repository.
if [ -z "$version" ]; then
  problem "input version is empty: give a tag, branch or commit"
elif ! [[ "$version" =~ ^[A-Za-z0-9._/-]+$ ]] || [[ "$version" == -* ]]; then
  problem "input version '$version' is not a git ref name"
elif ! git -C "$repo" rev-parse --verify --quiet "$version^{commit}" >/dev/null 2>&1 &&
  ! git -C "$repo" rev-parse --verify --quiet "origin/$version^{commit}" >/dev/null 2>&1; then
  problem "version '$version' does not exist: no tag, branch or commit of that name in the repository"
fi

# The config: present, inside the repository, valid TOML with a [service] name.
config_ok=0
if [[ "$config" == /* ]] || [[ "$config" == *..* ]]; then
  problem "input config '$config' must be a path inside the repository"
elif [ ! -f "$repo/$config" ]; then
  problem "config file '$config' not found in the repository (input config)"
else
  if err="$(python3 - "$repo/$config" <<'PY' 2>&1
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    data = tomllib.load(f)
name = data.get("service", {}).get("name") if isinstance(data.get("service"), dict) else None
if not name:
    sys.exit("no [service] name")
PY
  )"; then
    config_ok=1
  else
    problem "config file '$config' is not a releasegate config: ${err##*$'\n'}"
  fi
fi

has_section() { # has_section NAME: the config has a [NAME] table
  [ "$config_ok" -eq 1 ] && python3 - "$repo/$config" "$1" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    sys.exit(0 if isinstance(tomllib.load(f).get(sys.argv[2]), dict) else 1)
PY
}

# A remote target needs its secrets; an ephemeral one its seed.
if [ "$target" = remote ]; then
  missing=()
  [ -n "${DOCKER_HOST:-}" ] || missing+=(DOCKER_HOST)
  if [[ "${DOCKER_HOST:-}" == ssh://* ]] && [ -z "${DOCKER_KNOWN_HOSTS:-}" ]; then
    missing+=(DOCKER_KNOWN_HOSTS)  # the host key is pinned, never learnt on first use
  fi
  [ -n "${DATABASE_URL:-}" ] || missing+=(DATABASE_URL)
  if has_section redis && [ -z "${REDIS_URL:-}" ]; then missing+=(REDIS_URL); fi
  if [ "$qdrant" = service ] && has_section qdrant && [ -z "${QDRANT_URL:-}" ]; then
    missing+=(QDRANT_URL)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    problem "target remote needs the secrets ${missing[*]}: pass them in the caller's secrets: block"
  fi
elif [ "$target" = ephemeral ]; then
  case "$baseline" in
    previous | none) ;;
    *)
      if ! [[ "$baseline" =~ ^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*(:[A-Za-z0-9_.-]+)?(@sha256:[0-9a-f]{64})?$ ]]; then
        problem "input baseline '$baseline' is neither previous, none nor an image reference"
      fi
      ;;
  esac
  case "$seed" in
    example | none) ;;
    *)
      if [[ "$seed" == /* ]] || [[ "$seed" == *..* ]] || [ ! -e "$repo/$seed" ]; then
        problem "input seed '$seed' is neither example, none nor a backup set in the repository"
      fi
      ;;
  esac
fi

if [ ${#problems[@]} -gt 0 ]; then
  for p in "${problems[@]}"; do report_error "releasegate preflight" "$p"; done
  echo "preflight failed: nothing was built or deployed" >&2
  exit 2
fi
if [ "$action" = rollback ]; then
  echo "preflight ok: roll back release $release_id of $environment ($target, qdrant $qdrant)"
else
  echo "preflight ok: $image:$version -> $environment ($target, qdrant $qdrant, gate $profile)"
fi
