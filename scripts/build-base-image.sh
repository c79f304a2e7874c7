#!/usr/bin/env bash
# Builds the base image of releasegate's offline (air-gapped) mode without any image
# registry: a Debian bookworm "minbase" root file system with python3, python3-venv and
# ca-certificates, made by debootstrap from the host's apt mirror and imported into
# Docker. Service images then start `FROM` it and install host-built wheels.
#
#   scripts/build-base-image.sh [--force] [TAG]
#
# TAG defaults to $RELEASEGATE_BASE_IMAGE or releasegate/python:3.11-bookworm.
# Idempotent: nothing is done when the tag already exists (unless --force).
# The mirror is $RELEASEGATE_DEBIAN_MIRROR, else the host's apt source for bookworm.
# Needs root (or sudo) for debootstrap; takes about a minute.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/setup.sh"

force=0
tag="${RELEASEGATE_BASE_IMAGE:-releasegate/python:3.11-bookworm}"
while [ $# -gt 0 ]; do
  case "$1" in
    --force) force=1 ;;
    -h | --help) sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option: $1" >&2; exit 2 ;;
    *) tag="$1" ;;
  esac
  shift
done

suite="bookworm"
packages="python3,python3-venv,ca-certificates"

host_mirror() {
  # The first deb822 "URIs:" of a stanza that lists the suite, else a one-line source.
  local file uri
  for file in /etc/apt/sources.list.d/*.sources; do
    [ -f "$file" ] || continue
    uri="$(awk -v suite="$suite" '
      /^[[:space:]]*$/ { if (uris != "" && match_suite) { print uris; exit } uris = ""; match_suite = 0; next }
      /^URIs:/ { uris = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) match_suite = 1 }
      END { if (uris != "" && match_suite) print uris }
    ' "$file" | head -n 1)"
    if [ -n "$uri" ]; then echo "$uri"; return 0; fi
  done
  if [ -f /etc/apt/sources.list ]; then
    uri="$(awk -v suite="$suite" '$1 == "deb" && $3 == suite { print $2; exit }' /etc/apt/sources.list)"
    if [ -n "$uri" ]; then echo "$uri"; return 0; fi
  fi
  echo "http://deb.debian.org/debian"
}

start_docker
if [ "$force" -eq 0 ] && docker image inspect "$tag" >/dev/null 2>&1; then
  log "base image $tag already exists"
  exit 0
fi

apt_install debootstrap debian-archive-keyring
mirror="${RELEASEGATE_DEBIAN_MIRROR:-$(host_mirror)}"
rootfs="$(mktemp -d "${TMPDIR:-/var/tmp}/releasegate-rootfs.XXXXXX")"
cleanup() { as_root rm -rf "$rootfs"; }
trap cleanup EXIT

log "debootstrap $suite (minbase + $packages) from $mirror"
started=$SECONDS
if ! as_root debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" \
  >"$rootfs.log" 2>&1; then
  tail -n 30 "$rootfs.log" >&2
  log "debootstrap failed; the whole log is in $rootfs.log"
  exit 3
fi
rm -f "$rootfs.log"

# What a container never needs: package caches and lists, documentation, man pages.
as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
  "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
  "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*

# releasegate reads this label to build host wheels for exactly this Python (markers such
# as python_full_version < "3.11.3" decide which dependencies an install needs).
python_version="$(as_root chroot "$rootfs" python3 -c 'import platform; print(platform.python_version())')"
created="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

log "importing as $tag"
as_root tar --numeric-owner -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change "LABEL releasegate.python=$python_version releasegate.base=debootstrap-$suite-minbase" \
  --change "LABEL org.opencontainers.image.created=$created org.opencontainers.image.title=$tag" \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PYTHONUNBUFFERED=1' \
  --change 'CMD ["python3"]' \
  --message "releasegate offline base: debootstrap $suite minbase + $packages" \
  - "$tag" >/dev/null

docker run --rm --network none "$tag" python3 -c 'import ensurepip, ssl, venv' ||
  { log "the imported image cannot run python3 with venv and ssl"; exit 1; }
size="$(docker image inspect -f '{{.Size}}' "$tag")"
log "built $tag ($((size / 1000000)) MB) in $((SECONDS - started)) s"
