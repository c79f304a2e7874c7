#!/usr/bin/env bash
# Points releasegate at the stores and the Docker engine for the rest of the job, through
# GITHUB_ENV, with every URL and key masked first (never printed).
#   ephemeral: the service containers on 127.0.0.1 (Qdrant embedded when RG_QDRANT=embedded)
#   remote:    the secrets DATABASE_URL, REDIS_URL, QDRANT_URL, QDRANT_API_KEY, DOCKER_HOST
#              (+ DOCKER_SSH_KEY or DOCKER_TLS_CA/CERT/KEY)
# The variable names are the config's url_env / api_key_env; RG_GATE_PROFILE sets the SLO
# gate's length through RELEASEGATE_SLO__* overrides.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/workflow-commands.sh"
config="${RG_CONFIG:-releasegate.toml}"
out="${GITHUB_ENV:?}"
mask() { [ -n "$1" ] && workflow_command add-mask "$1"; return 0; }
setenv() { printf '%s=%s\n' "$1" "$2" >>"$out"; }

read -r pg_env redis_env qdrant_env qdrant_key_env < <(python3 - "$config" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    c = tomllib.load(f)
def get(section, key, default):
    s = c.get(section)
    return s.get(key, default) if isinstance(s, dict) else "-"
print(get("postgres", "url_env", "DATABASE_URL"), get("redis", "url_env", "REDIS_URL"),
      get("qdrant", "url_env", "QDRANT_URL"), get("qdrant", "api_key_env", "QDRANT_API_KEY"))
PY
)

if [ "${RG_TARGET:-ephemeral}" = remote ]; then
  db="${DATABASE_URL:-}" redis="${REDIS_URL:-}" qdrant="${QDRANT_URL:-}" qkey="${QDRANT_API_KEY:-}"
  for v in "$db" "$redis" "$qdrant" "$qkey" "${DOCKER_HOST:-}"; do mask "$v"; done
  setenv DOCKER_HOST "$DOCKER_HOST"
  if [ -n "${DOCKER_SSH_KEY:-}" ]; then
    mkdir -p "$HOME/.ssh" && chmod 700 "$HOME/.ssh"
    printf '%s\n' "$DOCKER_SSH_KEY" >"$HOME/.ssh/releasegate_docker" && chmod 600 "$HOME/.ssh/releasegate_docker"
    host="${DOCKER_HOST#ssh://}"; host="${host#*@}"; host="${host%%[:/]*}"
    ssh-keyscan -H "$host" >>"$HOME/.ssh/known_hosts" 2>/dev/null || true
    printf 'Host %s\n  IdentityFile %s\n  IdentitiesOnly yes\n' "$host" "$HOME/.ssh/releasegate_docker" >>"$HOME/.ssh/config"
  fi
  if [ -n "${DOCKER_TLS_CA:-}" ]; then
    certs="$HOME/.docker/releasegate"; mkdir -p "$certs" && chmod 700 "$certs"
    printf '%s\n' "$DOCKER_TLS_CA" >"$certs/ca.pem"
    printf '%s\n' "${DOCKER_TLS_CERT:-}" >"$certs/cert.pem"
    printf '%s\n' "${DOCKER_TLS_KEY:-}" >"$certs/key.pem"
    chmod 600 "$certs"/*.pem
    setenv DOCKER_TLS_VERIFY 1
    setenv DOCKER_CERT_PATH "$certs"
  fi
else
  db="postgresql://releasegate:releasegate-ephemeral@127.0.0.1:25432/service"
  redis="redis://127.0.0.1:6379/0"
  qdrant=""
  qkey=""
  [ "${RG_QDRANT:-service}" = service ] && qdrant="http://127.0.0.1:6333"
  mask "$db"
fi
[ "$pg_env" != "-" ] && setenv "$pg_env" "$db"
[ "$redis_env" != "-" ] && [ -n "$redis" ] && setenv "$redis_env" "$redis"
if [ "$qdrant_env" != "-" ] && [ -n "$qdrant" ] && [ "${RG_QDRANT:-service}" = service ]; then
  setenv "$qdrant_env" "$qdrant"
  [ -n "$qkey" ] && setenv "$qdrant_key_env" "$qkey"
fi
setenv RELEASEGATE_CONFIG "$PWD/$config"

case "${RG_GATE_PROFILE:-config}" in
  quick) setenv RELEASEGATE_SLO__WARMUP 5s; setenv RELEASEGATE_SLO__DURATION 25s ;;
  long) setenv RELEASEGATE_SLO__WARMUP 5s; setenv RELEASEGATE_SLO__DURATION 55s ;;
esac
echo "stores: postgres via \$$pg_env, redis via \$$redis_env, qdrant: ${RG_QDRANT:-service} (${RG_TARGET:-ephemeral} target)"
