#!/usr/bin/env bash
# Builds, without any image registry, the local images the act rehearsal of the release
# workflows runs on:
#
#   releasegate/act-runner:bookworm    the job container: python3 + venv, git, the docker
#                                      CLI, an ssh client (DOCKER_HOST=ssh://), haproxy,
#                                      postgresql-client, and a wheelhouse of
#                                      releasegate and its dev dependencies (pip finds it
#                                      through PIP_FIND_LINKS, with PIP_NO_INDEX set)
#   releasegate/act-postgres:15        a Postgres 15 service container (POSTGRES_USER,
#                                      POSTGRES_PASSWORD, POSTGRES_DB, as the official image)
#   releasegate/act-redis:7            a Redis service container
#
# One debootstrap root file system (Debian bookworm minbase) is imported three times with
# a different command. Packages come from the host's apt mirror and wheels are built on
# the host, since containers here cannot reach a package index.
#
#   scripts/ci/build-runner-image.sh [--force]
# Idempotent: nothing is done when the three tags exist and the runner's wheelhouse was
# built from the current pyproject.toml (its label releasegate.wheelhouse), unless --force.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/setup.sh"

force=0
[ "${1:-}" = "--force" ] && force=1
RUNNER_TAG="${RELEASEGATE_ACT_RUNNER_IMAGE:-releasegate/act-runner:bookworm}"
PG_TAG="${RELEASEGATE_ACT_POSTGRES_IMAGE:-releasegate/act-postgres:15}"
REDIS_TAG="${RELEASEGATE_ACT_REDIS_IMAGE:-releasegate/act-redis:7}"
suite="bookworm"
packages="python3,python3-venv,python3-pip,ca-certificates,git,haproxy,postgresql-15,postgresql-client-15,redis-server,procps,curl,gzip,tar,openssh-client"

start_docker
# A new dev dependency must reach the wheelhouse, or the workflow's install finds no wheel;
# a new package, the image.
wheelhouse="$(cat "$REPO_ROOT/pyproject.toml" - <<<"$packages" | sha256sum | cut -d' ' -f1)"
if [ "$force" -eq 0 ] && docker image inspect "$RUNNER_TAG" "$PG_TAG" "$REDIS_TAG" >/dev/null 2>&1 &&
  [ "$(docker image inspect -f '{{ index .Config.Labels "releasegate.wheelhouse" }}' "$RUNNER_TAG")" = "$wheelhouse" ]; then
  log "act images already exist: $RUNNER_TAG $PG_TAG $REDIS_TAG"
  exit 0
fi
ensure_python_env
apt_install debootstrap debian-archive-keyring

mirror="${RELEASEGATE_DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
  [ -n "$mirror" ] || mirror="$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
  [ -n "$mirror" ] || mirror="http://deb.debian.org/debian"
fi

work="$(mktemp -d "${TMPDIR:-/var/tmp}/releasegate-act.XXXXXX")"
rootfs="$work/rootfs"
cleanup() { as_root rm -rf "$work"; }
trap cleanup EXIT
started=$SECONDS

log "debootstrap $suite (minbase + $packages) from $mirror"
if ! as_root debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" \
  >"$work/debootstrap.log" 2>&1; then
  tail -n 30 "$work/debootstrap.log" >&2
  log "debootstrap failed"
  exit 3
fi

# async-timeout: redis needs it below Python 3.11.3 (the image's 3.11.2), not on the host.
log "building the wheelhouse on the host"
mkdir -p "$work/wheels"
"$VENV/bin/pip" wheel --quiet --wheel-dir "$work/wheels" "$REPO_ROOT[dev]" pip setuptools wheel \
  async-timeout \
  >"$work/wheels.log" 2>&1 || { tail -n 30 "$work/wheels.log" >&2; exit 3; }
rm -f "$work"/wheels/releasegate-*.whl  # the workflow installs the checkout itself
as_root mkdir -p "$rootfs/opt/wheels"
as_root cp "$work"/wheels/*.whl "$rootfs/opt/wheels/"

# The docker CLI only (the engine is the host's, through the mounted socket).
as_root install -m 0755 "$(command -v docker)" "$rootfs/usr/local/bin/docker"

# The Postgres service's entrypoint: initdb on first start, listen on every address.
as_root tee "$rootfs/usr/local/bin/postgres-service" >/dev/null <<'SH'
#!/bin/sh
set -e
PGBIN=/usr/lib/postgresql/15/bin
DATA=/var/lib/postgresql/data
mkdir -p "$DATA" /var/run/postgresql
chown -R postgres:postgres "$DATA" /var/run/postgresql
if [ ! -s "$DATA/PG_VERSION" ]; then
  printf '%s\n' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}" >/tmp/pwfile
  chown postgres /tmp/pwfile
  su postgres -s /bin/sh -c "$PGBIN/initdb -D $DATA -U ${POSTGRES_USER:-postgres} \
    --pwfile=/tmp/pwfile --auth=scram-sha-256 -E UTF8 --locale=C.UTF-8" >/dev/null
  rm -f /tmp/pwfile
  echo "host all all 0.0.0.0/0 scram-sha-256" >>"$DATA/pg_hba.conf"
  if [ -n "${POSTGRES_DB:-}" ] && [ "$POSTGRES_DB" != "postgres" ]; then
    su postgres -s /bin/sh -c "$PGBIN/postgres --single -D $DATA postgres" >/dev/null <<SQL
CREATE DATABASE "$POSTGRES_DB";
SQL
  fi
fi
exec su postgres -s /bin/sh -c "exec $PGBIN/postgres -D $DATA -c listen_addresses=* -c fsync=off"
SH
as_root chmod 0755 "$rootfs/usr/local/bin/postgres-service"

as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/var/lib/postgresql/15/main

import_image() {
  local tag="$1"
  shift
  as_root tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    "$@" - "$tag" >/dev/null
  log "imported $tag"
}
import_image "$RUNNER_TAG" \
  --change 'ENV PIP_NO_INDEX=1' --change 'ENV PIP_FIND_LINKS=/opt/wheels' \
  --change 'ENV PIP_DISABLE_PIP_VERSION_CHECK=1' \
  --change "LABEL releasegate.wheelhouse=$wheelhouse" \
  --change 'CMD ["tail", "-f", "/dev/null"]'
import_image "$PG_TAG" --change 'EXPOSE 5432' --change 'CMD ["/usr/local/bin/postgres-service"]'
import_image "$REDIS_TAG" --change 'EXPOSE 6379' \
  --change 'CMD ["redis-server", "--protected-mode", "no", "--save", "", "--appendonly", "no"]'
log "act images built in $((SECONDS - started)) s"
