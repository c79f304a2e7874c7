#!/usr/bin/env bash
# Points releasegate at the stores and the Docker engine for the rest of the job, through
# GITHUB_ENV, with every URL and key masked first (never printed).
#   ephemeral: the service containers on 127.0.0.1 (Qdrant embedded when RG_QDRANT=embedded)
#   remote:    the secrets DATABASE_URL, REDIS_URL, QDRANT_URL, QDRANT_API_KEY, DOCKER_HOST
#              (+ DOCKER_SSH_KEY and DOCKER_KNOWN_HOSTS, or DOCKER_TLS_CA/CERT/KEY)
# Either target: BACKUP_AWS_ACCESS_KEY_ID, BACKUP_AWS_SECRET_ACCESS_KEY,
# BACKUP_AWS_ENDPOINT_URL and BACKUP_AWS_REGION, when given, become the variables the
# AWS SDK reads itself, for a backup.destination = "s3://..." that outlives the runner.
# The SSH host key is pinned by DOCKER_KNOWN_HOSTS, never learnt on first use; the key
# and the known hosts go to files under $RUNNER_TEMP (or $HOME), which the workflow
# removes at the end of the job (connect.sh --cleanup). Every value goes to GITHUB_ENV
# between heredoc delimiters of its own, so a multi-line value cannot add variables.
# The variable names are the config's url_env / api_key_env; RG_GATE_PROFILE sets the SLO
# gate's length through RELEASEGATE_SLO__* overrides.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/workflow-commands.sh"
config="${RG_CONFIG:-releasegate.toml}"
out="${GITHUB_ENV:?}"
ssh_dir="${RUNNER_TEMP:-$HOME}/.releasegate-ssh"
if [ "${1:-}" = --cleanup ]; then
  rm -rf "$ssh_dir" "$HOME/.docker/releasegate"
  echo "removed the SSH key, known hosts and TLS files of this job"
  exit 0
fi
mask() { [ -n "$1" ] && workflow_command add-mask "$1"; return 0; }
setenv() { # setenv NAME VALUE: NAME<<DELIM, VALUE, DELIM (a delimiter VALUE cannot hold)
  local delim
  delim="RELEASEGATE_$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
  printf '%s<<%s\n%s\n%s\n' "$1" "$delim" "$2" "$delim" >>"$out"
}

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
  if [[ "${DOCKER_HOST:-}" == ssh://* ]]; then
    if [ -z "${DOCKER_KNOWN_HOSTS:-}" ]; then
      echo "error: DOCKER_HOST is ssh:// but the secret DOCKER_KNOWN_HOSTS is empty: pin the host key with its known_hosts line, taken once from a trusted machine" >&2
      exit 2
    fi
    mkdir -p "$ssh_dir" && chmod 700 "$ssh_dir"
    printf '%s\n' "$DOCKER_KNOWN_HOSTS" >"$ssh_dir/known_hosts"
    options=("UserKnownHostsFile $ssh_dir/known_hosts" "StrictHostKeyChecking yes" "BatchMode yes")
    if [ -n "${DOCKER_SSH_KEY:-}" ]; then
      (umask 077 && printf '%s\n' "$DOCKER_SSH_KEY" >"$ssh_dir/id")
      options+=("IdentityFile $ssh_dir/id" "IdentitiesOnly yes")
      setenv RELEASEGATE_SSH_IDENTITY_FILE "$ssh_dir/id"
    fi
    setenv RELEASEGATE_SSH_KNOWN_HOSTS "$ssh_dir/known_hosts"
    # The docker CLI's ssh:// runs plain `ssh`: it reads these from ~/.ssh/config.
    mkdir -p "$HOME/.ssh" && chmod 700 "$HOME/.ssh"
    host="${DOCKER_HOST#ssh://}"; host="${host#*@}"; host="${host%%[:/]*}"
    { printf 'Host %s\n' "$host"; printf '  %s\n' "${options[@]}"; } >>"$HOME/.ssh/config"
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
backup_credentials=""
for pair in AWS_ACCESS_KEY_ID=BACKUP_AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY=BACKUP_AWS_SECRET_ACCESS_KEY \
  AWS_ENDPOINT_URL_S3=BACKUP_AWS_ENDPOINT_URL AWS_DEFAULT_REGION=BACKUP_AWS_REGION; do
  secret="${pair#*=}"
  value="${!secret:-}"
  [ -n "$value" ] || continue
  case "$secret" in *_KEY_ID | *_SECRET_*) mask "$value" ;; esac
  setenv "${pair%%=*}" "$value"
  backup_credentials=" and the backup destination's credentials"
done

case "${RG_GATE_PROFILE:-config}" in
  quick) setenv RELEASEGATE_SLO__WARMUP 5s; setenv RELEASEGATE_SLO__DURATION 25s ;;
  long) setenv RELEASEGATE_SLO__WARMUP 5s; setenv RELEASEGATE_SLO__DURATION 55s ;;
esac
echo "stores: postgres via \$$pg_env, redis via \$$redis_env, qdrant: ${RG_QDRANT:-service} (${RG_TARGET:-ephemeral} target)$backup_credentials"
