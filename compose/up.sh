#!/usr/bin/env bash
# The local releasegate stack of compose/: the stores (Postgres 15, Redis 7; Qdrant with
# --qdrant) and, with --app, the example notes service as blue behind the router.
#
#   compose/up.sh [--qdrant] [--app]   start, and wait until every part answers
#   compose/up.sh down [--volumes]     remove the stack, the colors releasegate deployed on
#                                      it and the router's state (--volumes: the stores'
#                                      data too, the embedded Qdrant folder included)
#
# Images: a RELEASEGATE_*_IMAGE set in the environment is used as it is. Otherwise the
# default (postgres:15, redis:7, haproxy:2.6, qdrant/qdrant:v1.12.4) when it is on this
# machine or a registry answers for it within 3 s; else a local image built from Debian
# packages by scripts/ci/build-runner-image.sh (releasegate/act-postgres:15,
# releasegate/act-redis:7, and releasegate/act-runner:bookworm, which has haproxy, for the
# router). Qdrant has no local stand-in. The notes image (notes:compose, variant v2) is
# built with `releasegate build` when missing; --app migrates Postgres and Redis to head.
#
# Writes $RELEASEGATE_COMPOSE_STATE/stack.env (default .releasegate/compose/stack.env,
# mode 600: it holds the store URLs). `source` it to point releasegate (service
# notes-compose) or compose itself at the stack. RELEASEGATE_COMPOSE picks the compose
# command ("docker compose" or "docker-compose"), RELEASEGATE_COMPOSE_PROJECT the project
# (releasegate-local); the ports and the password are in compose/README.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib/setup.sh"
HERE="$REPO_ROOT/compose"

action=up
with_qdrant=0
with_app=0
with_volumes=0
for arg in "$@"; do
  case "$arg" in
    up | down) action="$arg" ;;
    --qdrant) with_qdrant=1 ;;
    --app) with_app=1 ;;
    --volumes) with_volumes=1 ;;
    -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "error: unknown argument '$arg' (compose/up.sh --help)" >&2; exit 2 ;;
  esac
done

# The same defaults as the compose files; stack.env records the values in force.
PROJECT="${RELEASEGATE_COMPOSE_PROJECT:-releasegate-local}"
STATE="${RELEASEGATE_COMPOSE_STATE:-$REPO_ROOT/.releasegate/compose}"
export RELEASEGATE_COMPOSE_PG_PORT="${RELEASEGATE_COMPOSE_PG_PORT:-15432}"
export RELEASEGATE_COMPOSE_REDIS_PORT="${RELEASEGATE_COMPOSE_REDIS_PORT:-16379}"
export RELEASEGATE_COMPOSE_QDRANT_PORT="${RELEASEGATE_COMPOSE_QDRANT_PORT:-16333}"
export RELEASEGATE_COMPOSE_QDRANT_GRPC_PORT="${RELEASEGATE_COMPOSE_QDRANT_GRPC_PORT:-16334}"
export RELEASEGATE_COMPOSE_ROUTER_PORT="${RELEASEGATE_COMPOSE_ROUTER_PORT:-19080}"
export RELEASEGATE_COMPOSE_BLUE_PORT="${RELEASEGATE_COMPOSE_BLUE_PORT:-19081}"
export RELEASEGATE_COMPOSE_GREEN_PORT="${RELEASEGATE_COMPOSE_GREEN_PORT:-19082}"
export RELEASEGATE_COMPOSE_PG_PASSWORD="${RELEASEGATE_COMPOSE_PG_PASSWORD:-rg-compose-local}"
export RELEASEGATE_COMPOSE_SERVICE="${RELEASEGATE_COMPOSE_SERVICE:-notes-compose}"
export RELEASEGATE_COMPOSE_ROUTER_DIR="${RELEASEGATE_COMPOSE_ROUTER_DIR:-$STATE/router}"
# The router's socket and state file belong to whoever runs releasegate.
RELEASEGATE_COMPOSE_USER="$(id -u):$(id -g)"
export RELEASEGATE_COMPOSE_USER
STACK_VARS=(
  RELEASEGATE_POSTGRES_IMAGE RELEASEGATE_REDIS_IMAGE RELEASEGATE_QDRANT_IMAGE
  RELEASEGATE_ROUTER_IMAGE RELEASEGATE_NOTES_IMAGE
  RELEASEGATE_COMPOSE_PG_PORT RELEASEGATE_COMPOSE_REDIS_PORT RELEASEGATE_COMPOSE_QDRANT_PORT
  RELEASEGATE_COMPOSE_QDRANT_GRPC_PORT RELEASEGATE_COMPOSE_ROUTER_PORT
  RELEASEGATE_COMPOSE_BLUE_PORT RELEASEGATE_COMPOSE_GREEN_PORT RELEASEGATE_COMPOSE_PG_PASSWORD
  RELEASEGATE_COMPOSE_SERVICE RELEASEGATE_COMPOSE_ROUTER_DIR RELEASEGATE_COMPOSE_USER
)

start_docker
ensure_compose
compose() {
  "${COMPOSE[@]}" -p "$PROJECT" -f "$HERE/docker-compose.yml" -f "$HERE/app.yml" "$@"
}

if [ "$action" = down ]; then
  args=(down --remove-orphans)
  [ "$with_volumes" -eq 0 ] || args+=(--volumes)
  compose --profile qdrant "${args[@]}"
  # A color releasegate deployed on this stack (green) is no compose container.
  docker ps -aq --filter "label=releasegate.service=$RELEASEGATE_COMPOSE_SERVICE" |
    xargs -r docker rm -f >/dev/null
  # The router's saved weights name colors that are gone now: the next up starts blue live.
  # Its own files only: the folder is the caller's to name.
  for file in haproxy.cfg haproxy.cfg.new haproxy.log haproxy.pid admin.sock servers.state; do
    rm -f "$RELEASEGATE_COMPOSE_ROUTER_DIR/$file"
  done
  rmdir "$RELEASEGATE_COMPOSE_ROUTER_DIR" 2>/dev/null || true
  [ "$with_volumes" -eq 0 ] || rm -rf "$STATE/qdrant"
  exit 0
fi

ensure_python_env
RG=("$VENV/bin/releasegate" --config "$REPO_ROOT/releasegate.toml")

registry_answers() {
  "$VENV/bin/python" -c \
    'import sys; from releasegate.deploy.build import registry_answers as ok; sys.exit(0 if ok(sys.argv[1])[0] else 1)' \
    "$1"
}

need_act_images=0
choose_image() {
  # choose_image VAR DEFAULT [LOCAL]: export VAR unless the caller set it.
  local var="$1" default="$2" fallback="${3:-}"
  if [ -n "${!var:-}" ]; then
    return 0
  fi
  if docker image inspect "$default" >/dev/null 2>&1 || registry_answers "$default"; then
    export "$var=$default"
  elif [ -n "$fallback" ]; then
    log "no registry answered for $default: using the local $fallback"
    export "$var=$fallback"
    need_act_images=1
  else
    echo "error: $default is not on this machine and no registry answers: set $var to a local image" >&2
    exit 2
  fi
}

services=(postgres redis)
choose_image RELEASEGATE_POSTGRES_IMAGE postgres:15 releasegate/act-postgres:15
choose_image RELEASEGATE_REDIS_IMAGE redis:7 releasegate/act-redis:7
profile=()
if [ "$with_qdrant" -eq 1 ]; then
  choose_image RELEASEGATE_QDRANT_IMAGE qdrant/qdrant:v1.12.4
  profile=(--profile qdrant)
  services+=(qdrant)
fi
# The router image is chosen even without --app: stack.env gives it to releasegate.
choose_image RELEASEGATE_ROUTER_IMAGE haproxy:2.6 releasegate/act-runner:bookworm
export RELEASEGATE_NOTES_IMAGE="${RELEASEGATE_NOTES_IMAGE:-notes:compose}"
[ "$need_act_images" -eq 0 ] || "$REPO_ROOT/scripts/ci/build-runner-image.sh"

# stack.env: the compose variables, the store URLs and releasegate's overrides for this
# stack (its own service name, ports, router and embedded Qdrant folder).
mkdir -p "$STATE"
pg_url="postgresql://releasegate:$RELEASEGATE_COMPOSE_PG_PASSWORD@127.0.0.1:$RELEASEGATE_COMPOSE_PG_PORT/notes"
{
  echo "# Written by compose/up.sh: source it to use releasegate with this compose stack."
  for var in "${STACK_VARS[@]}"; do
    [ -z "${!var:-}" ] || printf 'export %s=%q\n' "$var" "${!var}"
  done
  printf 'export NOTES_DATABASE_URL=%q\n' "$pg_url"
  echo "export NOTES_REDIS_URL=redis://127.0.0.1:$RELEASEGATE_COMPOSE_REDIS_PORT/0"
  if [ "$with_qdrant" -eq 1 ]; then
    echo "export QDRANT_URL=http://127.0.0.1:$RELEASEGATE_COMPOSE_QDRANT_PORT"
  else
    echo "unset QDRANT_URL"
    printf 'export RELEASEGATE_QDRANT__PATH=%q\n' "$STATE/qdrant"
  fi
  echo "export RELEASEGATE_SERVICE__NAME=$RELEASEGATE_COMPOSE_SERVICE"
  echo "export RELEASEGATE_DEPLOY__BLUE_PORT=$RELEASEGATE_COMPOSE_BLUE_PORT"
  echo "export RELEASEGATE_DEPLOY__GREEN_PORT=$RELEASEGATE_COMPOSE_GREEN_PORT"
  echo "export RELEASEGATE_ROUTER__MODE=container"
  printf 'export RELEASEGATE_ROUTER__IMAGE=%q\n' "$RELEASEGATE_ROUTER_IMAGE"
  echo "export RELEASEGATE_ROUTER__BIND=127.0.0.1:$RELEASEGATE_COMPOSE_ROUTER_PORT"
  printf 'export RELEASEGATE_ROUTER__RUNTIME_DIR=%q\n' "$RELEASEGATE_COMPOSE_ROUTER_DIR"
} >"$STATE/stack.env.new"
chmod 600 "$STATE/stack.env.new"
mv "$STATE/stack.env.new" "$STATE/stack.env"
# shellcheck disable=SC1091 # written just above
source "$STATE/stack.env"

wait_healthy() {
  local service="$1" id status=""
  id="$(compose ps -q "$service")"
  for _ in $(seq 1 240); do
    status="$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id")"
    case "$status" in
      healthy) return 0 ;;
      exited | dead) break ;;
    esac
    sleep 0.25
  done
  log "$service is $status; its last log lines:"
  docker logs --tail 20 "$id" >&2 || true
  exit 3
}

wait_http() {
  # wait_http URL SECONDS: until URL answers 200.
  "$VENV/bin/python" - "$1" "$2" <<'PY' || { log "$1 did not answer 200 within $2 s"; exit 3; }
import sys, time, urllib.request
url, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
while True:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            if answer.status == 200:
                sys.exit(0)
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.25)
PY
}

log "starting ${services[*]} (project $PROJECT, ${COMPOSE[*]})"
compose "${profile[@]}" up -d "${services[@]}"
wait_healthy postgres
wait_healthy redis
[ "$with_qdrant" -eq 0 ] || wait_http "http://127.0.0.1:$RELEASEGATE_COMPOSE_QDRANT_PORT/readyz" 60

if [ "$with_app" -eq 1 ]; then
  if ! docker image inspect "$RELEASEGATE_NOTES_IMAGE" >/dev/null 2>&1; then
    log "building $RELEASEGATE_NOTES_IMAGE (notes v2) with releasegate build"
    registry_answers python:3.11-slim || ensure_base_image
    "${RG[@]}" build --quiet --build-arg NOTES_VARIANT=v2 --tag "$RELEASEGATE_NOTES_IMAGE" >/dev/null
  fi
  # Qdrant's first migration needs a collection bootstrapped by the service's own data.
  "${RG[@]}" migrate up --store postgres
  "${RG[@]}" migrate up --store redis
  # The router's haproxy.cfg: releasegate's own, for this stack's ports and runtime dir.
  mkdir -p "$RELEASEGATE_COMPOSE_ROUTER_DIR"
  chmod 700 "$RELEASEGATE_COMPOSE_ROUTER_DIR"
  "$VENV/bin/python" - "$REPO_ROOT/releasegate.toml" <<'PY'
import sys
from releasegate.config import load_config
from releasegate.router.config import render_config, router_config

config = router_config(load_config(sys.argv[1]))
config.paths.config.write_text(render_config(config))
PY
  log "starting notes (blue) and the router"
  compose "${profile[@]}" up -d notes router
  wait_http "http://127.0.0.1:$RELEASEGATE_COMPOSE_BLUE_PORT/readyz" 60
  wait_http "http://127.0.0.1:$RELEASEGATE_COMPOSE_ROUTER_PORT/readyz" 30
fi
log "the stack is up; to use it: source ${STATE/#$REPO_ROOT\//}/stack.env"
