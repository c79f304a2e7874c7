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
# stores are the remote host's Postgres and Redis, and every restore point is kept in an
# S3 bucket (moto's server on this machine, the S3 stand-in), not on this machine. A user
# inside the remote host reads GET /bookmarks and adds bookmarks through the router the
# whole time.
#
# Prints, per release, outcome=... and restore_point=SET verify=ok|failed (`backup verify
# SET` run from a fresh checkout, as a job on another runner would); for the user,
# requests_ok, failed_requests, writes_acknowledged and writes_lost (acknowledged
# bookmarks read back at the end that are missing or changed). Exit status: 0 when the
# outcomes are succeeded, succeeded, rolled_back, every restore point verifies, no
# request failed and no acknowledged write is lost.
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
BUCKET="rg-rehearsal-backups"

already_running=0
[ -e "$REMOTE_NS_PATH" ] && already_running=1
start_remote_host
WORK="$(mktemp -d)"
CLIENT_PID=""
S3_PID=""

cleanup() {
  set +e
  if [ -n "$CLIENT_PID" ] && kill -0 "$CLIENT_PID" 2>/dev/null; then kill "$CLIENT_PID"; fi
  if [ -n "$S3_PID" ] && kill -0 "$S3_PID" 2>/dev/null; then kill "$S3_PID"; wait "$S3_PID"; fi
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

# The durable destination: a bucket on moto's S3 server, on a free port of 127.0.0.1.
S3_PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$PYTHON" -m moto.server -H 127.0.0.1 -p "$S3_PORT" >"$WORK/moto.log" 2>&1 &
S3_PID=$!
export RG_REHEARSAL_S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
export AWS_ACCESS_KEY_ID=rg-rehearsal AWS_DEFAULT_REGION=us-east-1
AWS_SECRET_ACCESS_KEY="$(openssl rand -hex 16)"
export AWS_SECRET_ACCESS_KEY
for _ in $(seq 1 150); do
  curl -s -o /dev/null "$RG_REHEARSAL_S3_ENDPOINT" && break
  sleep 0.2
done
"$PYTHON" -c 'import os, sys, boto3
boto3.client("s3", endpoint_url=os.environ["RG_REHEARSAL_S3_ENDPOINT"]).create_bucket(Bucket=sys.argv[1])' "$BUCKET"

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
  RELEASEGATE_BUILD__REPOSITORY="releasegate-rehearsal/$SERVICE"
  RELEASEGATE_BACKUP__DESTINATION="s3://$BUCKET/$SERVICE"
  RELEASEGATE_BACKUP__ENDPOINT_URL_ENV=RG_REHEARSAL_S3_ENDPOINT)
STORES_ENV=(
  DATABASE_URL="postgresql://$REMOTE_PG_USER:$PGPASSWORD@$REMOTE_ADDR:$REMOTE_PG_PORT/$DATABASE"
  REDIS_URL="redis://:$REDISCLI_AUTH@$REMOTE_ADDR:$REMOTE_REDIS_PORT/$REDIS_DB"
)

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
    "${STORES_ENV[@]}" \
    "$RELEASEGATE" --config "$CONFIG" release --image "$1" --json >"$out" || true
  OUTCOME="$(jq -r '.outcome // "none"' "$out" 2>/dev/null || echo none)"
  echo "outcome=$OUTCOME"
  verify_restore_point "$(jq -r '.backup.set_id // empty' "$out" 2>/dev/null)"
}

verify_restore_point() {  # verify_restore_point SET: `backup verify` from a fresh checkout
  local fresh="$WORK/fresh" verdict=failed
  rm -rf "$fresh"
  git clone --quiet "$WORK/bookmarks" "$fresh"
  if [ -n "$1" ] && "${BASE_ENV[@]}" "${STORES_ENV[@]}" \
    "$RELEASEGATE" --config "$fresh/releasegate.toml" backup verify "$1" >"$WORK/verify.out" 2>&1; then
    verdict=ok
  else
    tail -n 5 "$WORK/verify.out" >&2
  fi
  echo "restore_point=${1:-none} verify=$verdict"
  VERIFIED+=("$verdict")
}

# The user inside the remote host, through the router until SIGTERM: reads the list and
# adds a bookmark every other request, recording what each acknowledged (201) write holds;
# then reads every acknowledged bookmark back. Prints "ok failed acknowledged lost".
CLIENT='
import json, signal, sys, time, urllib.request
base = sys.argv[1]
counts = {"ok": 0, "failed": 0}
acknowledged = {}
running = True
def stop(*_):
    global running
    running = False
signal.signal(signal.SIGTERM, stop)
def call(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        return answer.status, json.load(answer)
n = 0
while running:
    n += 1
    url = "https://example.test/live/%d-%d" % (n, time.time_ns())
    try:
        if n % 2:
            status, _ = call("/bookmarks")
        else:
            status, created = call("/bookmarks", {"url": url, "note": "live %d" % n})
            if status == 201:
                acknowledged[created["id"]] = url
        counts["ok" if status in (200, 201) else "failed"] += 1
    except Exception:
        counts["failed"] += 1
    time.sleep(0.05)
lost = 0
for bookmark_id, url in acknowledged.items():
    try:
        status, stored = call("/bookmarks/%d" % bookmark_id)
        lost += status != 200 or stored.get("url") != url
    except Exception:
        lost += 1
print(counts["ok"], counts["failed"], len(acknowledged), lost, flush=True)
'

outcomes=()
VERIFIED=()
stage_repo new v1
release "$(build_and_push v1)"
outcomes+=("$OUTCOME")
# nsenter execs python3: $! is the client itself.
nsenter --net="$REMOTE_NS_PATH" python3 -c "$CLIENT" "http://$REMOTE_ADDR:$PORT_BASE" >"$WORK/client.out" &
CLIENT_PID=$!
for stage in v2 v3-bad; do
  stage_repo advance "$stage"
  release "$(build_and_push "$stage")"
  outcomes+=("$OUTCOME")
done
kill -TERM "$CLIENT_PID"
wait "$CLIENT_PID" || true
CLIENT_PID=""
read -r ok failed acknowledged lost <"$WORK/client.out"
echo "requests_ok=$ok"
echo "failed_requests=$failed"
echo "writes_acknowledged=$acknowledged"
echo "writes_lost=$lost"
[ "${outcomes[*]}" = "succeeded succeeded rolled_back" ] && [ "${VERIFIED[*]}" = "ok ok ok" ] &&
  [ "$ok" -gt 0 ] && [ "$failed" -eq 0 ] && [ "$acknowledged" -gt 0 ] && [ "$lost" -eq 0 ]
