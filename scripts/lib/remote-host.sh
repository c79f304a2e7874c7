# shellcheck shell=bash
# Sourced: a simulated remote host on this machine, for releasing over ssh:// in tests and
# rehearsals. A network namespace with an address of its own holds an sshd, a dockerd, a
# registry (TLS), a PostgreSQL cluster and a redis-server, all listening on that address
# only (the two stores also on the namespace's own loopback, reached only through an ssh
# forward): the runner side reaches them the way a CI runner reaches a production host.
#
#   start_remote_host     idempotent; prints one line per component and a summary
#   stop_remote_host      stops every component, removes the namespace; leaves no process
#   stop_remote_registry  the registry alone (a fault for tests); start_remote_registry
#                         or start_remote_host brings it back
#
# Settings (environment): RELEASEGATE_REMOTE_NS (rg-remote), RELEASEGATE_REMOTE_ADDR
# (10.231.0.2/24), RELEASEGATE_REMOTE_HOST_SIDE_ADDR (10.231.0.1), RELEASEGATE_REMOTE_STATE_DIR
# (/var/lib/releasegate/remote-host), RELEASEGATE_REMOTE_RUN_DIR (/run/releasegate-remote),
# RELEASEGATE_REMOTE_VETH (rg-remote0), RELEASEGATE_REMOTE_PG_CLUSTER (remote) and
# RELEASEGATE_REMOTE_PG_PORT (5433). Overriding all of them starts a second, independent host.
# The facts the tests need (paths, ports, users; never a secret) go to
# $REMOTE_STATE/remote-host.env.
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

REMOTE_NS="${RELEASEGATE_REMOTE_NS:-rg-remote}"
REMOTE_CIDR="${RELEASEGATE_REMOTE_ADDR:-10.231.0.2/24}"
REMOTE_ADDR="${REMOTE_CIDR%/*}"
REMOTE_PREFIX_LEN="${REMOTE_CIDR#*/}"
REMOTE_HOST_SIDE_ADDR="${RELEASEGATE_REMOTE_HOST_SIDE_ADDR:-10.231.0.1}"
REMOTE_VETH="${RELEASEGATE_REMOTE_VETH:-rg-remote0}"
REMOTE_STATE="${RELEASEGATE_REMOTE_STATE_DIR:-/var/lib/releasegate/remote-host}"
# Sockets and pid files; kept short because of the 108-byte limit on socket paths.
REMOTE_RUN="${RELEASEGATE_REMOTE_RUN_DIR:-/run/releasegate-remote}"
REMOTE_SSH_PORT=22
REMOTE_SSH_USER=root
REMOTE_REGISTRY_PORT=5000
REMOTE_PG_VERSION=15
REMOTE_PG_CLUSTER="${RELEASEGATE_REMOTE_PG_CLUSTER:-remote}"
REMOTE_PG_PORT="${RELEASEGATE_REMOTE_PG_PORT:-5433}"
REMOTE_PG_USER=releasegate
REMOTE_REDIS_PORT=6379

REMOTE_NS_PATH="/var/run/netns/$REMOTE_NS"
REMOTE_DOCKER_SOCKET="$REMOTE_RUN/docker.sock"
# The runner's engine trusts the registry's CA from here; it reads the folder per request.
REMOTE_CERTS_D="/etc/docker/certs.d/$REMOTE_ADDR:$REMOTE_REGISTRY_PORT"
REMOTE_PG_CONF="/etc/postgresql/$REMOTE_PG_VERSION/$REMOTE_PG_CLUSTER"

in_remote_ns() { nsenter --net="$REMOTE_NS_PATH" "$@"; }

process_running() {
  # A zombie counts as gone: whoever reaps orphans here may take its time.
  local state
  state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" && [ -n "$state" ] && [ "$state" != Z ]
}

pid_alive() { [ -s "$1" ] && process_running "$(cat "$1")"; }

wait_until() {
  # wait_until TRIES COMMAND...: run COMMAND every 0.2 s until it succeeds.
  local tries="$1"
  shift
  for _ in $(seq 1 "$tries"); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  return 1
}

tcp_open() { timeout 2 bash -c "</dev/tcp/$1/$2" 2>/dev/null; }

secret_file() {
  # A generated password, made once and readable by root only.
  local file="$REMOTE_STATE/secrets/$1.password"
  if [ ! -s "$file" ]; then
    (umask 077 && openssl rand -hex 20 >"$file")
  fi
  printf '%s' "$file"
}

start_remote_netns() {
  if ! ip link show "$REMOTE_VETH" >/dev/null 2>&1; then
    ip link add "$REMOTE_VETH" type veth peer name "${REMOTE_VETH}p" netns "$REMOTE_NS"
    ip -n "$REMOTE_NS" link set "${REMOTE_VETH}p" name eth0
    ip addr add "$REMOTE_HOST_SIDE_ADDR/$REMOTE_PREFIX_LEN" dev "$REMOTE_VETH"
    ip -n "$REMOTE_NS" addr add "$REMOTE_CIDR" dev eth0
  fi
  ip link set "$REMOTE_VETH" up
  ip -n "$REMOTE_NS" link set lo up
  ip -n "$REMOTE_NS" link set eth0 up
  # No default route inside: the remote host reaches nothing but its own subnet.
  log "remote host: namespace $REMOTE_NS, address $REMOTE_ADDR (runner side $REMOTE_HOST_SIDE_ADDR)"
}

start_remote_sshd() {
  local dir="$REMOTE_STATE/ssh"
  mkdir -p "$dir/authorized_keys" "$REMOTE_STATE/bin" /run/sshd
  chmod 700 "$dir" "$dir/authorized_keys"
  [ -s "$dir/host_ed25519_key" ] ||
    ssh-keygen -q -t ed25519 -N '' -C "releasegate-remote-host" -f "$dir/host_ed25519_key"
  [ -s "$dir/client_ed25519_key" ] ||
    ssh-keygen -q -t ed25519 -N '' -C "releasegate-remote-client" -f "$dir/client_ed25519_key"
  install -m 600 "$dir/client_ed25519_key.pub" "$dir/authorized_keys/$REMOTE_SSH_USER"
  # The pinned host key: clients check it with StrictHostKeyChecking, never trust on first use.
  printf '%s %s\n' "$REMOTE_ADDR" "$(cut -d' ' -f1,2 "$dir/host_ed25519_key.pub")" \
    >"$dir/known_hosts"
  # Authorized keys live in the state folder, so the host's own /root/.ssh is never touched;
  # SetEnv points `docker system dial-stdio` (DOCKER_HOST=ssh://...) at the remote engine.
  cat >"$dir/sshd_config" <<CONF
ListenAddress $REMOTE_ADDR:$REMOTE_SSH_PORT
HostKey $dir/host_ed25519_key
PidFile $REMOTE_RUN/sshd.pid
AuthorizedKeysFile $dir/authorized_keys/%u
AllowUsers $REMOTE_SSH_USER
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PrintMotd no
SetEnv DOCKER_HOST=unix://$REMOTE_DOCKER_SOCKET
Subsystem sftp /usr/lib/openssh/sftp-server
CONF
  cat >"$dir/ssh_config" <<CONF
Host $REMOTE_ADDR
  Port $REMOTE_SSH_PORT
  User $REMOTE_SSH_USER
  IdentityFile $dir/client_ed25519_key
  IdentitiesOnly yes
  UserKnownHostsFile $dir/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 10
CONF
  # Docker's ssh:// helper runs plain `ssh`: this one on PATH brings the pinned config.
  cat >"$REMOTE_STATE/bin/ssh" <<SH
#!/bin/sh
exec /usr/bin/ssh -F "$dir/ssh_config" "\$@"
SH
  chmod 755 "$REMOTE_STATE/bin/ssh"
  if ! pid_alive "$REMOTE_RUN/sshd.pid"; then
    /usr/sbin/sshd -t -f "$dir/sshd_config"
    in_remote_ns /usr/sbin/sshd -f "$dir/sshd_config" -E "$REMOTE_STATE/logs/sshd.log"
  fi
  wait_until 50 tcp_open "$REMOTE_ADDR" "$REMOTE_SSH_PORT" ||
    { tail -n 20 "$REMOTE_STATE/logs/sshd.log" >&2; return 1; }
  log "remote host: sshd on $REMOTE_ADDR:$REMOTE_SSH_PORT (user $REMOTE_SSH_USER, pinned key)"
}

remote_docker() { docker -H "unix://$REMOTE_DOCKER_SOCKET" "$@"; }

start_remote_dockerd() {
  mkdir -p "$REMOTE_STATE/docker"
  if ! pid_alive "$REMOTE_RUN/docker.pid"; then
    # nsenter, not `ip netns exec`: the latter remounts /sys and breaks dockerd's cgroups.
    setsid nsenter --net="$REMOTE_NS_PATH" dockerd \
      --data-root "$REMOTE_STATE/docker" --exec-root "$REMOTE_RUN/exec" \
      --pidfile "$REMOTE_RUN/docker.pid" -H "unix://$REMOTE_DOCKER_SOCKET" \
      --bridge=none --iptables=false \
      </dev/null >>"$REMOTE_STATE/logs/dockerd.log" 2>&1 &
  fi
  wait_until 150 remote_docker info ||
    { tail -n 20 "$REMOTE_STATE/logs/dockerd.log" >&2; return 1; }
  log "remote host: dockerd on unix://$REMOTE_DOCKER_SOCKET" \
    "(reached as ssh://$REMOTE_SSH_USER@$REMOTE_ADDR)"
}

ensure_registry_tls() {
  # A CA of the remote host's own and a server certificate for its address. Both engines
  # (the runner's, which may not be restarted, and the remote one) trust the CA through
  # /etc/docker/certs.d, so the registry needs no --insecure-registry anywhere.
  local tls="$REMOTE_STATE/registry/tls"
  mkdir -p "$tls"
  chmod 700 "$tls"
  if [ ! -s "$tls/ca.crt" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -subj "/CN=releasegate remote host CA" -keyout "$tls/ca.key" -out "$tls/ca.crt" 2>/dev/null
  fi
  if [ ! -s "$tls/$REMOTE_ADDR.crt" ]; then
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$REMOTE_ADDR" \
      -keyout "$tls/$REMOTE_ADDR.key" -out "$tls/$REMOTE_ADDR.csr" 2>/dev/null
    openssl x509 -req -in "$tls/$REMOTE_ADDR.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" \
      -CAcreateserial -days 3650 -out "$tls/$REMOTE_ADDR.crt" \
      -extfile <(printf 'subjectAltName=IP:%s\nextendedKeyUsage=serverAuth\n' "$REMOTE_ADDR") \
      2>/dev/null
  fi
  mkdir -p "$REMOTE_CERTS_D"
  install -m 644 "$tls/ca.crt" "$REMOTE_CERTS_D/ca.crt"
}

registry_ready() {
  curl -fsS --cacert "$REMOTE_STATE/registry/tls/ca.crt" \
    "https://$REMOTE_ADDR:$REMOTE_REGISTRY_PORT/v2/"
}

start_remote_registry() {
  local dir="$REMOTE_STATE/registry"
  ensure_registry_tls
  mkdir -p "$dir/storage"
  cat >"$dir/config.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: $REMOTE_ADDR:$REMOTE_REGISTRY_PORT
  tls:
    certificate: $dir/tls/$REMOTE_ADDR.crt
    key: $dir/tls/$REMOTE_ADDR.key
YML
  if ! pid_alive "$REMOTE_RUN/registry.pid"; then
    # setsid and nsenter both exec (no fork), so $! is the registry's own pid.
    setsid nsenter --net="$REMOTE_NS_PATH" docker-registry serve "$dir/config.yml" \
      </dev/null >>"$REMOTE_STATE/logs/registry.log" 2>&1 &
    echo $! >"$REMOTE_RUN/registry.pid"
  fi
  wait_until 50 registry_ready || { tail -n 20 "$REMOTE_STATE/logs/registry.log" >&2; return 1; }
  log "remote host: registry on https://$REMOTE_ADDR:$REMOTE_REGISTRY_PORT (CA in $dir/tls/ca.crt)"
}

remote_pg_status() {
  pg_lsclusters -h | awk -v v="$REMOTE_PG_VERSION" -v c="$REMOTE_PG_CLUSTER" \
    '$1 == v && $2 == c {print $4}'
}

remote_pg_setting() {
  su postgres -c "psql -XAtq -h $REMOTE_RUN/postgres -p $REMOTE_PG_PORT -c 'SHOW $1'" 2>/dev/null
}

start_remote_postgres() {
  local password_file socket_dir="$REMOTE_RUN/postgres"
  password_file="$(secret_file postgres)"
  if [ -z "$(remote_pg_status)" ]; then
    # manual: a plain `service postgresql start` outside the namespace must not start it.
    pg_createcluster "$REMOTE_PG_VERSION" "$REMOTE_PG_CLUSTER" --port "$REMOTE_PG_PORT" \
      --start-conf manual >/dev/null
  fi
  mkdir -p "$socket_dir"
  chown postgres:postgres "$socket_dir"
  # Also the namespace's own loopback: what a store reached through an ssh forward
  # (via_ssh) names, and which only the host itself (or a forward) can reach.
  local listen="$REMOTE_ADDR,127.0.0.1"
  cat >"$REMOTE_PG_CONF/conf.d/releasegate-remote.conf" <<CONF
listen_addresses = '$listen'
unix_socket_directories = '$socket_dir'
CONF
  cat >"$REMOTE_PG_CONF/pg_hba.conf" <<CONF
local all postgres peer
host all all $REMOTE_ADDR/32 scram-sha-256
host all all $REMOTE_HOST_SIDE_ADDR/32 scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
CONF
  if [ "$(remote_pg_status)" != online ]; then
    in_remote_ns pg_ctlcluster "$REMOTE_PG_VERSION" "$REMOTE_PG_CLUSTER" start \
      </dev/null >>"$REMOTE_STATE/logs/postgres.log" 2>&1
  elif [ "$(remote_pg_setting listen_addresses)" != "$listen" ]; then
    # A cluster started by an earlier version of this script: addresses need a restart.
    in_remote_ns pg_ctlcluster "$REMOTE_PG_VERSION" "$REMOTE_PG_CLUSTER" restart -m fast \
      </dev/null >>"$REMOTE_STATE/logs/postgres.log" 2>&1
  else
    pg_ctlcluster "$REMOTE_PG_VERSION" "$REMOTE_PG_CLUSTER" reload
  fi
  local pg_log="/var/log/postgresql/postgresql-$REMOTE_PG_VERSION-$REMOTE_PG_CLUSTER.log"
  wait_until 50 pg_isready -h "$REMOTE_ADDR" -p "$REMOTE_PG_PORT" ||
    { tail -n 20 "$pg_log" >&2; return 1; }
  # The password reaches psql on stdin, never on a command line.
  su postgres -c "psql -q -h $socket_dir -p $REMOTE_PG_PORT -v ON_ERROR_STOP=1" <<SQL >/dev/null
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$REMOTE_PG_USER') THEN
    CREATE ROLE $REMOTE_PG_USER LOGIN CREATEDB CREATEROLE PASSWORD '$(cat "$password_file")';
  ELSE
    ALTER ROLE $REMOTE_PG_USER LOGIN CREATEDB CREATEROLE PASSWORD '$(cat "$password_file")';
  END IF;
END
\$\$;
SQL
  log "remote host: PostgreSQL $REMOTE_PG_VERSION on $REMOTE_ADDR:$REMOTE_PG_PORT" \
    "and its own 127.0.0.1 (role $REMOTE_PG_USER)"
}

redis_ready() {
  REDISCLI_AUTH="$(cat "$REMOTE_STATE/secrets/redis.password")" \
    redis-cli -h "$REMOTE_ADDR" -p "$REMOTE_REDIS_PORT" ping | grep -q PONG
}

start_remote_redis() {
  local dir="$REMOTE_STATE/redis" password_file
  password_file="$(secret_file redis)"
  mkdir -p "$dir"
  chmod 700 "$dir"
  # The password sits in a root-only config file, so it is in no process's argv.
  (umask 077 && cat >"$dir/redis.conf") <<CONF
bind $REMOTE_ADDR 127.0.0.1
port $REMOTE_REDIS_PORT
protected-mode yes
requirepass $(cat "$password_file")
daemonize yes
pidfile $REMOTE_RUN/redis.pid
logfile $REMOTE_STATE/logs/redis.log
dir $dir
save ""
appendonly no
databases 64
CONF
  if pid_alive "$REMOTE_RUN/redis.pid"; then
    # Started by an earlier version of this script: the namespace's loopback too (as for
    # PostgreSQL), set at runtime so that the data stays.
    wait_until 50 redis_ready || { tail -n 20 "$REMOTE_STATE/logs/redis.log" >&2; return 1; }
    REDISCLI_AUTH="$(cat "$password_file")" redis-cli -h "$REMOTE_ADDR" \
      -p "$REMOTE_REDIS_PORT" config set bind "$REMOTE_ADDR 127.0.0.1" >/dev/null
  else
    in_remote_ns redis-server "$dir/redis.conf"
  fi
  wait_until 50 redis_ready || { tail -n 20 "$REMOTE_STATE/logs/redis.log" >&2; return 1; }
  log "remote host: redis-server on $REMOTE_ADDR:$REMOTE_REDIS_PORT and its own 127.0.0.1" \
    "(password required)"
}

write_remote_host_env() {
  cat >"$REMOTE_STATE/remote-host.env" <<ENV
REMOTE_ADDRESS=$REMOTE_ADDR
REMOTE_NAMESPACE=$REMOTE_NS
REMOTE_SSH_PORT=$REMOTE_SSH_PORT
REMOTE_SSH_USER=$REMOTE_SSH_USER
REMOTE_SSH_KEY=$REMOTE_STATE/ssh/client_ed25519_key
REMOTE_KNOWN_HOSTS=$REMOTE_STATE/ssh/known_hosts
REMOTE_SSH_CONFIG=$REMOTE_STATE/ssh/ssh_config
REMOTE_SSH_PATH_DIR=$REMOTE_STATE/bin
REMOTE_DOCKER_HOST=ssh://$REMOTE_SSH_USER@$REMOTE_ADDR
REMOTE_DOCKER_SOCKET=unix://$REMOTE_DOCKER_SOCKET
REMOTE_REGISTRY=$REMOTE_ADDR:$REMOTE_REGISTRY_PORT
REMOTE_REGISTRY_CA=$REMOTE_STATE/registry/tls/ca.crt
REMOTE_PG_PORT=$REMOTE_PG_PORT
REMOTE_PG_USER=$REMOTE_PG_USER
REMOTE_PG_PASSWORD_FILE=$REMOTE_STATE/secrets/postgres.password
REMOTE_REDIS_PORT=$REMOTE_REDIS_PORT
REMOTE_REDIS_PASSWORD_FILE=$REMOTE_STATE/secrets/redis.password
ENV
}

start_remote_host() {
  [ "$(id -u)" -eq 0 ] || { log "the remote host needs root (network namespaces)"; return 2; }
  apt_install openssh-server docker.io docker-registry redis-server redis-tools \
    "postgresql-$REMOTE_PG_VERSION" postgresql-client-common openssl iproute2 curl
  mkdir -p "$REMOTE_STATE/logs" "$REMOTE_STATE/secrets" "$REMOTE_RUN"
  chmod 700 "$REMOTE_STATE/secrets"
  if [ ! -e "$REMOTE_NS_PATH" ] && ! ip netns add "$REMOTE_NS"; then
    log "cannot create network namespace $REMOTE_NS"
    return 3
  fi
  start_remote_netns
  start_remote_sshd
  start_remote_dockerd
  start_remote_registry
  start_remote_postgres
  start_remote_redis
  write_remote_host_env
  cat <<SUMMARY
remote host $REMOTE_NS at $REMOTE_ADDR:
  ssh       $REMOTE_SSH_USER@$REMOTE_ADDR:$REMOTE_SSH_PORT  (ssh -F $REMOTE_STATE/ssh/ssh_config $REMOTE_ADDR)
  docker    DOCKER_HOST=ssh://$REMOTE_SSH_USER@$REMOTE_ADDR with PATH=$REMOTE_STATE/bin:\$PATH
  registry  $REMOTE_ADDR:$REMOTE_REGISTRY_PORT
  postgres  postgresql://$REMOTE_PG_USER@$REMOTE_ADDR:$REMOTE_PG_PORT/postgres
  redis     redis://$REMOTE_ADDR:$REMOTE_REDIS_PORT/0
  (passwords in $REMOTE_STATE/secrets/, keys and the pinned known_hosts in $REMOTE_STATE/ssh/)
SUMMARY
}

stop_pidfile() {
  # stop_pidfile NAME PIDFILE SECONDS: TERM, then KILL if it outlives SECONDS.
  local name="$1" pidfile="$2" seconds="$3" pid
  pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  pid="$(cat "$pidfile")"
  kill "$pid"
  for _ in $(seq 1 $((seconds * 10))); do
    process_running "$pid" || break
    sleep 0.1
  done
  if process_running "$pid"; then
    log "remote host: $name (pid $pid) outlived ${seconds}s; killing it"
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
  log "remote host: stopped $name"
}

unmount_under() {
  # Mounts dockerd leaves under a folder (E/netns/default, overlays), deepest first.
  local mounts
  mounts="$(awk -v p="$1/" 'index($2, p) == 1 {print $2}' /proc/self/mounts | sort -r)"
  [ -z "$mounts" ] || while read -r mountpoint; do
    umount "$mountpoint" 2>/dev/null || umount -l "$mountpoint"
  done <<<"$mounts"
}

stop_remote_registry() { stop_pidfile registry "$REMOTE_RUN/registry.pid" 10; }

stop_remote_host() {
  [ "$(id -u)" -eq 0 ] || { log "the remote host needs root (network namespaces)"; return 2; }
  stop_pidfile redis-server "$REMOTE_RUN/redis.pid" 10
  if [ "$(remote_pg_status 2>/dev/null)" = online ]; then
    pg_ctlcluster "$REMOTE_PG_VERSION" "$REMOTE_PG_CLUSTER" stop -m fast
    log "remote host: stopped PostgreSQL"
  fi
  stop_remote_registry
  # dockerd stops its containers and its containerd on TERM.
  stop_pidfile dockerd "$REMOTE_RUN/docker.pid" 30
  stop_pidfile sshd "$REMOTE_RUN/sshd.pid" 10
  if [ -e "$REMOTE_NS_PATH" ]; then
    # Whatever still runs inside is ours (an ssh session, a container's process).
    local leftover
    for leftover in $(ip netns pids "$REMOTE_NS"); do
      log "remote host: ending leftover process $leftover" \
        "($(cat "/proc/$leftover/comm" 2>/dev/null))"
      kill -9 "$leftover" 2>/dev/null || true
    done
  fi
  unmount_under "$REMOTE_RUN"
  unmount_under "$REMOTE_STATE/docker"
  if [ -e "$REMOTE_NS_PATH" ]; then
    ip netns delete "$REMOTE_NS"
  fi
  # Removing the namespace takes the veth pair with it, though not always at once.
  ip link delete "$REMOTE_VETH" 2>/dev/null || true
  rm -rf "$REMOTE_CERTS_D"
  log "remote host: namespace $REMOTE_NS removed"
}
