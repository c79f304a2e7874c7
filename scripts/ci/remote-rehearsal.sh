#!/usr/bin/env bash
# Rehearses a release to a remote host over ssh, against the simulated remote host
# (scripts/lib/remote-host.sh, docs/remote-host.md):
#
#   scripts/ci/remote-rehearsal.sh
#
# Builds the bookmarks example (examples/bookmarks) at v1, v2 and v3-bad offline on this
# machine, pushes each image to the remote registry and releases it by digest with
# DOCKER_HOST=ssh://: v1 first (promoted), v2 (promoted, its contract revision deferred),
# v3-bad (rolled back by the gate). The colors and HAProxy run on the remote engine, the
# stores are the remote host's Postgres and Redis. A client inside the remote host asks
# GET /bookmarks through the router the whole time.
#
# Prints one outcome=... line per release and failed_requests=N for that client. Exit
# status: 0 when the outcomes are succeeded, succeeded, rolled_back and no request failed.
# The host is stopped at the end unless it was running before. Needs root. Ports on the
# remote host: router 19180, colors 19181/19182 (RELEASEGATE_REMOTE_PORT_BASE).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/remote-host.sh"

ensure_python_env
PYTHON="$VENV/bin/python"
RELEASEGATE="$VENV/bin/releasegate"
PORT_BASE="${RELEASEGATE_REMOTE_PORT_BASE:-19180}"
SERVICE="bookmarks-rehearsal"
DATABASE="bookmarks_rehearsal"
REDIS_DB=8

already_running=0
[ -e "$REMOTE_NS_PATH" ] && already_running=1
start_remote_host
WORK="$(mktemp -d)"
CLIENT_PID=""

cleanup() {
  set +e
  if [ -n "$CLIENT_PID" ] && kill -0 "$CLIENT_PID" 2>/dev/null; then kill "$CLIENT_PID"; fi
  if [ -f "$WORK/bookmarks/releasegate.toml" ]; then
    "$RELEASEGATE" --config "$WORK/bookmarks/releasegate.toml" router down --forget >/dev/null 2>&1
  fi
  remote_docker rm --force "$SERVICE-blue" "$SERVICE-green" "releasegate-router-$SERVICE" >/dev/null 2>&1
  remote_docker volume rm --force "releasegate-router-$SERVICE" >/dev/null 2>&1
  local repository
  for repository in "$REMOTE_ADDR:$REMOTE_REGISTRY_PORT/$SERVICE" "releasegate-rehearsal/$SERVICE"; do
    remote_docker images --quiet "$repository" | xargs -r docker -H "unix://$REMOTE_DOCKER_SOCKET" rmi --force >/dev/null 2>&1
    docker images --quiet "$repository" | sort -u | xargs -r docker rmi --force >/dev/null 2>&1
  done
  rm -rf "$WORK"
  [ "$already_running" -eq 1 ] || stop_remote_host
}
trap cleanup EXIT

# The stores: a fresh database and an empty Redis DB on the remote host's servers.
# Passwords go through the environment, never argv.
PGPASSWORD="$(cat "$REMOTE_STATE/secrets/postgres.password")"
REDISCLI_AUTH="$(cat "$REMOTE_STATE/secrets/redis.password")"
export PGPASSWORD REDISCLI_AUTH
psql -q -h "$REMOTE_ADDR" -p "$REMOTE_PG_PORT" -U "$REMOTE_PG_USER" -d postgres \
  -c "DROP DATABASE IF EXISTS $DATABASE" -c "CREATE DATABASE $DATABASE"
redis-cli --no-auth-warning -h "$REMOTE_ADDR" -p "$REMOTE_REDIS_PORT" -n "$REDIS_DB" flushdb >/dev/null

# The offline build's base image, and the router image (the host's haproxy as an image),
# made as the tests make them; the router image is loaded on the remote engine.
ROUTER_IMAGE="$(cd "$REPO_ROOT/tests" && "$PYTHON" -c '
import docker
from conftest import ensure_base_image, local_haproxy_image
ensure_base_image(docker.from_env())
print(local_haproxy_image())')"
if ! remote_docker image inspect "$ROUTER_IMAGE" >/dev/null 2>&1; then
  docker save "$ROUTER_IMAGE" | remote_docker load >/dev/null
fi

stage_repo() {  # stage_repo new|advance STAGE: the bookmarks repository at STAGE
  (cd "$REPO_ROOT/tests/e2e" && "$PYTHON" -c '
import sys
from pathlib import Path
from bookmarks_repo import advance, make_bookmarks_repo
work = Path(sys.argv[2])
if sys.argv[1] == "new":
    make_bookmarks_repo(work, sys.argv[3])
else:
    advance(work / "bookmarks", sys.argv[3])
' "$1" "$WORK" "$2")
}

CONFIG="$WORK/bookmarks/releasegate.toml"
BASE_ENV=(env -u DOCKER_HOST RELEASEGATE_SERVICE__NAME="$SERVICE"
  RELEASEGATE_BUILD__REPOSITORY="releasegate-rehearsal/$SERVICE")

build_and_push() {  # build_and_push STAGE: the pushed image's digest reference
  local image repository="$REMOTE_ADDR:$REMOTE_REGISTRY_PORT/$SERVICE"
  image="$("${BASE_ENV[@]}" "$RELEASEGATE" --config "$CONFIG" build --offline --quiet --tag "$1")"
  docker tag "$image" "$repository:$1"
  docker push --quiet "$repository:$1" >/dev/null
  docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$repository:$1" |
    grep -m1 "^$repository@"
}

release() {  # release IMAGE: prints outcome=...; the outcome in $OUTCOME
  local out="$WORK/release.json"
  "${BASE_ENV[@]}" \
    DOCKER_HOST="ssh://$REMOTE_SSH_USER@$REMOTE_ADDR" \
    RELEASEGATE_SSH_KNOWN_HOSTS="$REMOTE_STATE/ssh/known_hosts" \
    RELEASEGATE_SSH_IDENTITY_FILE="$REMOTE_STATE/ssh/client_ed25519_key" \
    RELEASEGATE_DEPLOY__REMOTE_DOCKER_SOCKET="$REMOTE_DOCKER_SOCKET" \
    RELEASEGATE_DEPLOY__BLUE_PORT="$((PORT_BASE + 1))" \
    RELEASEGATE_DEPLOY__GREEN_PORT="$((PORT_BASE + 2))" \
    RELEASEGATE_ROUTER__MODE=container \
    RELEASEGATE_ROUTER__IMAGE="$ROUTER_IMAGE" \
    RELEASEGATE_ROUTER__BIND="$REMOTE_ADDR:$PORT_BASE" \
    RELEASEGATE_SLO__WARMUP=3s RELEASEGATE_SLO__DURATION=10s RELEASEGATE_SLO__MIN_REQUESTS=50 \
    RELEASEGATE_RELEASE__WATCH=5s \
    DATABASE_URL="postgresql://$REMOTE_PG_USER:$PGPASSWORD@$REMOTE_ADDR:$REMOTE_PG_PORT/$DATABASE" \
    REDIS_URL="redis://:$REDISCLI_AUTH@$REMOTE_ADDR:$REMOTE_REDIS_PORT/$REDIS_DB" \
    "$RELEASEGATE" --config "$CONFIG" release --image "$1" --json >"$out" || true
  OUTCOME="$(jq -r '.outcome // "none"' "$out" 2>/dev/null || echo none)"
  echo "outcome=$OUTCOME"
}

# The client inside the remote host: GET /bookmarks through the router until SIGTERM,
# then "ok failed" (a failure: no answer, or any status but 200).
CLIENT='
import signal, sys, time, urllib.request
counts = {"ok": 0, "failed": 0}
running = True
def stop(*_):
    global running
    running = False
signal.signal(signal.SIGTERM, stop)
while running:
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=5) as answer:
            counts["ok" if answer.status == 200 else "failed"] += 1
    except Exception:
        counts["failed"] += 1
    time.sleep(0.05)
print(counts["ok"], counts["failed"], flush=True)
'

outcomes=()
stage_repo new v1
release "$(build_and_push v1)"
outcomes+=("$OUTCOME")
# nsenter execs python3: $! is the client itself.
nsenter --net="$REMOTE_NS_PATH" python3 -c "$CLIENT" "http://$REMOTE_ADDR:$PORT_BASE/bookmarks" >"$WORK/client.out" &
CLIENT_PID=$!
for stage in v2 v3-bad; do
  stage_repo advance "$stage"
  release "$(build_and_push "$stage")"
  outcomes+=("$OUTCOME")
done
kill -TERM "$CLIENT_PID"
wait "$CLIENT_PID" || true
CLIENT_PID=""
read -r ok failed <"$WORK/client.out"
echo "requests_ok=$ok"
echo "failed_requests=$failed"
[ "${outcomes[*]}" = "succeeded succeeded rolled_back" ] && [ "$ok" -gt 0 ] && [ "$failed" -eq 0 ]
