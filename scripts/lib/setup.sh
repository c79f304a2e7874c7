# shellcheck shell=bash
# Sourced by scripts/*.sh: installs what releasegate needs on a fresh Debian machine and
# starts the local services. Idempotent: a second run only checks.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${RELEASEGATE_VENV:-$REPO_ROOT/.venv}"
PG_VERSION="${RELEASEGATE_PG_VERSION:-15}"
PG_ROLE="releasegate"
PG_PASSWORD="${RELEASEGATE_TEST_PG_PASSWORD:-rg-local-secret}"

log() { printf '==> %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  # Install the Debian packages that are missing; `apt-get update` only when needed.
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_python_env() {
  local stamp="$VENV/.releasegate-installed"
  local want
  want="$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -d' ' -f1)"
  if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  log "creating the Python environment in $VENV"
  python3 -m venv "$VENV"
  local pip_log="$VENV/pip-install.log"
  if ! { "$VENV/bin/python" -m pip install --upgrade pip &&
    "$VENV/bin/python" -m pip install -e "$REPO_ROOT[dev]"; } >"$pip_log" 2>&1; then
    tail -n 30 "$pip_log" >&2
    log "pip install failed; the whole log is in $pip_log"
    return 1
  fi
  echo "$want" >"$stamp"
}

start_postgres() {
  apt_install "postgresql-$PG_VERSION" postgresql-client-common
  if ! pg_lsclusters -h 2>/dev/null | awk -v v="$PG_VERSION" '$1 == v && $2 == "main"' | grep -q .; then
    as_root pg_createcluster "$PG_VERSION" main >/dev/null
  fi
  if ! pg_lsclusters -h | awk -v v="$PG_VERSION" '$1 == v && $2 == "main" {print $4}' | grep -q online; then
    log "starting PostgreSQL $PG_VERSION"
    as_root pg_ctlcluster "$PG_VERSION" main start
  fi
  local port
  port="$(pg_lsclusters -h | awk -v v="$PG_VERSION" '$1 == v && $2 == "main" {print $3}')"
  for _ in $(seq 1 50); do
    pg_isready -q -h 127.0.0.1 -p "$port" && break
    sleep 0.2
  done
  # A login role that may create the scratch databases tests and `migrate test` need,
  # and the throwaway roles of the ledger-ownership tests.
  as_root su postgres -c "psql -q -p $port -v ON_ERROR_STOP=1" <<SQL >/dev/null
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_ROLE') THEN
    CREATE ROLE $PG_ROLE LOGIN CREATEDB CREATEROLE PASSWORD '$PG_PASSWORD';
  ELSE
    ALTER ROLE $PG_ROLE LOGIN CREATEDB CREATEROLE PASSWORD '$PG_PASSWORD';
  END IF;
END
\$\$;
SQL
  export RELEASEGATE_TEST_PG_URL="postgresql://$PG_ROLE:$PG_PASSWORD@127.0.0.1:$port/postgres"
}

REDIS_PORT="${RELEASEGATE_TEST_REDIS_PORT:-6390}"
REDIS_DIR="${RELEASEGATE_STATE_DIR:-/tmp/releasegate-state}/redis"

start_redis() {
  # A redis-server of our own on its own port, so a system Redis is never touched.
  apt_install redis-server
  mkdir -p "$REDIS_DIR"
  if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    log "starting redis-server on port $REDIS_PORT"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$REDIS_DIR" --save "" \
      --appendonly no --daemonize yes --logfile "$REDIS_DIR/redis.log" \
      --pidfile "$REDIS_DIR/redis.pid" --databases 64
    for _ in $(seq 1 50); do
      redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
      sleep 0.1
    done
  fi
  export RELEASEGATE_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
}

start_docker() {
  # Debian's engine; dockerd runs in the background for the rest of this machine's life.
  apt_install docker.io
  if ! docker info >/dev/null 2>&1; then
    log "starting dockerd"
    mkdir -p /var/log/releasegate
    (nohup dockerd >/var/log/releasegate/dockerd.log 2>&1 &)
    for _ in $(seq 1 100); do
      docker info >/dev/null 2>&1 && break
      sleep 0.2
    done
    docker info >/dev/null 2>&1 || { tail -n 20 /var/log/releasegate/dockerd.log >&2; return 1; }
  fi
}

ensure_compose() {
  # COMPOSE: the compose command, `docker compose` (v2 plugin) when the engine's CLI has
  # it, else Debian's docker-compose 1.29 (installed when missing). RELEASEGATE_COMPOSE
  # picks one ("docker compose" or "docker-compose").
  local wanted="${RELEASEGATE_COMPOSE:-}"
  if [ -z "$wanted" ]; then
    if docker compose version >/dev/null 2>&1; then
      wanted="docker compose"
    else
      wanted="docker-compose"
    fi
  fi
  [ "$wanted" != "docker-compose" ] || command -v docker-compose >/dev/null 2>&1 ||
    apt_install docker-compose
  # shellcheck disable=SC2034 # used by the scripts that source this file
  read -r -a COMPOSE <<<"$wanted"
}

install_load_tools() {
  apt_install haproxy wrk hey
}

ensure_base_image() {
  # The local base image of offline builds (no registry needed); built once per machine.
  start_docker
  "$REPO_ROOT/scripts/build-base-image.sh" "$@"
}

start_registry() {
  # A distribution registry (v2) on 127.0.0.1:$REGISTRY_PORT for the act rehearsals: the
  # release workflow pushes the image there and later runs pull it by digest. Its storage
  # lives until the machine goes; `start_registry --fresh` empties it first.
  REGISTRY_PORT="${RELEASEGATE_ACT_REGISTRY_PORT:-35000}"
  local dir=/var/lib/releasegate/act-registry
  apt_install docker-registry
  if [ "${1:-}" = --fresh ]; then
    pkill -f "docker-registry serve $dir/config.yml" 2>/dev/null || true
    sleep 0.5
    rm -rf "$dir/storage"
  fi
  if ! curl -fsS "http://127.0.0.1:$REGISTRY_PORT/v2/" >/dev/null 2>&1; then
    mkdir -p "$dir/storage" /var/log/releasegate
    cat >"$dir/config.yml" <<YML
version: 0.1
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$REGISTRY_PORT
YML
    log "starting a registry on 127.0.0.1:$REGISTRY_PORT"
    (nohup docker-registry serve "$dir/config.yml" >/var/log/releasegate/registry.log 2>&1 &)
    for _ in $(seq 1 50); do
      curl -fsS "http://127.0.0.1:$REGISTRY_PORT/v2/" >/dev/null 2>&1 && break
      sleep 0.2
    done
    curl -fsS "http://127.0.0.1:$REGISTRY_PORT/v2/" >/dev/null 2>&1 ||
      { tail -n 20 /var/log/releasegate/registry.log >&2; return 1; }
  fi
}
