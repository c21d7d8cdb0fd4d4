#!/usr/bin/env bash
# Integration stack for jobbergate-sync: real Slurm 22.05 (+slurmdbd, slurmrestd), jobbergate-api
# 5.12.0 (PostgreSQL 15, moto S3) and a Keycloak-shaped test OIDC issuer, all on loopback.
#
#   stack.sh up                 install what is missing, start everything, write stack.env
#   stack.sh down               stop everything (by recorded PID files), keep data
#   stack.sh status             show services; exit 0 only when all run
#   stack.sh stop|start|restart SERVICE
#                               SERVICE: munge mariadb slurmdbd slurmctld slurmd slurmrestd
#                                        postgres s3 oidc api
#   stack.sh reset              wipe API data (DB + bucket) and cancel the test users' Slurm jobs
#   stack.sh env                print stack.env
#
# Needs root on Debian 12 (bookworm) and Python 3.12 (pyenv's, or JGS_PYTHON=/path/to/python3.12).
# Runtime state lives in ${JGS_STACK_DIR:-/var/tmp/jobbergate-sync-stack}: logs/, run/ (PID files),
# data, venvs. Slurm's own config is machine-wide in /etc/slurm (JWT key /etc/slurm/jwt_hs256.key).
# See /work/shared/reference/running-the-real-stack.md for the why of every setting.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"

STACK_DIR="${JGS_STACK_DIR:-/var/tmp/jobbergate-sync-stack}"
LOG_DIR="$STACK_DIR/logs"
RUN_DIR="$STACK_DIR/run"

API_PORT="${JGS_API_PORT:-8000}"
OIDC_PORT="${JGS_OIDC_PORT:-8180}"
S3_PORT="${JGS_S3_PORT:-9000}"
PG_PORT="${JGS_PG_PORT:-5433}"
MARIADB_PORT="${JGS_MARIADB_PORT:-3306}"
SLURMRESTD_PORT="${JGS_SLURMRESTD_PORT:-6820}"
SLURMCTLD_PORT="${JGS_SLURMCTLD_PORT:-6817}"
SLURMD_PORT="${JGS_SLURMD_PORT:-6818}"
SLURMDBD_PORT="${JGS_SLURMDBD_PORT:-6819}"

REALM="jobbergate-local"
CLUSTER="jobbergate-test"
ACCOUNT="jobbergate"
PARTITION="debug"
SLURM_ETC="/etc/slurm"
JWT_KEY="$SLURM_ETC/jwt_hs256.key"
UNIX_USERS=(alice bob)
SYSTEM_USER="daemon"
BUCKET="jobbergate-resources"
DB_NAME="jobbergate"
DB_USER="jobbergate"
DB_PSWD="jobbergate-pswd"
SLURMDB_PSWD="slurm-acct-pswd"
API_VERSION="5.12.0"
API_SDIST_SHA256="2669f469e4de12cf15a69e79555a52349685cf160d39869c5c72d6603c521ec3"
NODE="$(hostname -s)"

API_VENV="$STACK_DIR/venv-api"
MOTO_VENV="$STACK_DIR/venv-moto"
SRC_DIR="$STACK_DIR/src"
PGDATA="$STACK_DIR/postgres/data"
PG_SOCK="$RUN_DIR/postgres"
MARIADB_DIR="$STACK_DIR/mariadb"
MARIADB_CNF="$MARIADB_DIR/my.cnf"
S3_SNAPSHOT="$STACK_DIR/s3-snapshot"
OIDC_KEY="$STACK_DIR/oidc/signing-key.pem"
STACK_ENV="$STACK_DIR/stack.env"

SERVICES=(munge mariadb slurmdbd slurmctld slurmd slurmrestd postgres s3 oidc api)

APT_PACKAGES=(munge slurm-wlm slurmctld slurmd slurm-client slurmrestd slurmdbd slurm-wlm-jwt-plugin
  slurm-wlm-mysql-plugin mariadb-server postgresql-15 curl ca-certificates)

export DEBIAN_FRONTEND=noninteractive PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# ------------------------------------------------------------------------------------- utilities

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
log() { printf '[stack %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
warn() { printf '[stack %s] WARNING: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  printf '[stack %s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2
  exit 1
}

# timed LABEL CMD... : run CMD, print how long it took
timed() {
  local label="$1" t0
  shift
  t0="$(now)"
  "$@"
  printf '[stack] phase %-12s %6ss\n' "$label" "$(elapsed "$t0")"
}

# show the end of a log file (for failures)
tail_log() { [ -f "$1" ] && { echo "---- last lines of $1:" >&2; tail -n "${2:-25}" "$1" >&2; } || true; }

# wait_until SECONDS DESCRIPTION CMD... : poll CMD every 0.1 s
wait_until() {
  local timeout="$1" desc="$2" deadline
  shift 2
  deadline=$(($(date +%s) + timeout))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      warn "timed out after ${timeout}s waiting for $desc"
      return 1
    fi
    sleep 0.1
  done
}

http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time "${2:-3}" "$1" 2>/dev/null || true; }
http_is() { [ "$(http_code "$1")" = "$2" ]; }
http_answers() { local c; c="$(http_code "$1")"; [ -n "$c" ] && [ "$c" != "000" ]; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

file_sha() { sha256sum "$@" 2>/dev/null | sha256sum | cut -c1-16; }

ensure_dir() { # ensure_dir PATH OWNER MODE
  mkdir -p "$1"
  chown "$2" "$1"
  chmod "$3" "$1"
}

# write_if_changed PATH OWNER MODE < content : replace PATH only when the content differs
write_if_changed() {
  local path="$1" owner="$2" mode="$3" tmp
  tmp="$(mktemp "$path.XXXXXX")"
  cat >"$tmp"
  chown "$owner" "$tmp"
  chmod "$mode" "$tmp"
  if [ -f "$path" ] && cmp -s "$tmp" "$path"; then
    rm -f "$tmp"
    chown "$owner" "$path"
    chmod "$mode" "$path"
  else
    mv -f "$tmp" "$path"
    log "wrote $path"
  fi
}

# ----------------------------------------------------------------------------------- PID tracking

pid_pattern() {
  case "$1" in
    munge) echo munged ;;
    mariadb) echo mariadbd ;;
    slurmdbd | slurmctld | slurmd | slurmrestd) echo "$1" ;;
    postgres) echo postgres ;;
    s3) echo moto_server ;;
    oidc) echo oidc_issuer.py ;;
    api) echo uvicorn ;;
    *) die "unknown service '$1' (one of: ${SERVICES[*]})" ;;
  esac
}

pid_file() { echo "$RUN_DIR/$1.pid"; }

# service_pid NAME: print the recorded PID if that process is alive and is the expected program
service_pid() {
  local file pid pattern
  file="$(pid_file "$1")"
  [ -s "$file" ] || return 1
  pid="$(head -n1 "$file" | tr -dc 0-9)"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  pattern="$(pid_pattern "$1")"
  [[ "$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" == *"$pattern"* ]] || return 1
  echo "$pid"
}

is_running() { service_pid "$1" >/dev/null; }

record_pid() { echo "$2" >"$(pid_file "$1")"; }

# record_pid_from_file NAME FILE TIMEOUT: daemons that write their own PID file
record_pid_from_file() {
  local name="$1" file="$2" timeout="${3:-20}"
  wait_until "$timeout" "$name pid file" test -s "$file" || return 1
  head -n1 "$file" | tr -dc 0-9 >"$(pid_file "$name").tmp"
  echo >>"$(pid_file "$name").tmp"
  mv -f "$(pid_file "$name").tmp" "$(pid_file "$name")"
  wait_until "$timeout" "$name running" is_running "$name"
}

stop_signal() { case "$1" in postgres) echo INT ;; *) echo TERM ;; esac; }

stop_timeout() { case "$1" in slurmctld | slurmdbd | mariadb | postgres) echo 30 ;; *) echo 15 ;; esac; }

# stop_services NAME... : signal every running one, then wait for each (KILL after its timeout)
stop_services() {
  local name pid pids=() names=()
  for name in "$@"; do
    if pid="$(service_pid "$name")"; then
      if [ "$name" = s3 ]; then
        s3_snapshot_save || warn "S3 snapshot failed; the API data will be reset on the next start"
      fi
      kill "-$(stop_signal "$name")" "$pid" 2>/dev/null || true
      pids+=("$pid")
      names+=("$name")
    else
      rm -f "$(pid_file "$name")"
    fi
  done
  local i deadline
  for i in "${!pids[@]}"; do
    deadline=$(($(date +%s) + $(stop_timeout "${names[$i]}")))
    while kill -0 "${pids[$i]}" 2>/dev/null; do
      if [ "$(date +%s)" -ge "$deadline" ]; then
        warn "${names[$i]} (pid ${pids[$i]}) did not stop in time; sending KILL"
        kill -KILL "${pids[$i]}" 2>/dev/null || true
        sleep 0.2
        break
      fi
      sleep 0.1
    done
    rm -f "$(pid_file "${names[$i]}")"
    log "stopped ${names[$i]} (pid ${pids[$i]})"
  done
}

# launch NAME LOGFILE CMD... : start a foreground program detached (setsid), record its PID
launch() {
  local name="$1" logfile="$2"
  shift 2
  (cd / && exec setsid "$@" </dev/null >>"$logfile" 2>&1) &
  record_pid "$name" "$!"
}

check_port_free() { # NAME PORT
  if port_busy "$2"; then
    die "port $2 is busy but $1 is not running from $RUN_DIR (another stack? set JGS_*_PORT or stop it)"
  fi
}

# ---------------------------------------------------------------------------------------- phases

need_root() { [ "$(id -u)" = 0 ] || die "stack.sh must run as root"; }

prepare_dirs() {
  ensure_dir "$STACK_DIR" root:root 0755
  ensure_dir "$LOG_DIR" root:root 0755
  ensure_dir "$RUN_DIR" root:root 0755
}

find_python312() {
  local candidate
  for candidate in "${JGS_PYTHON:-}" \
    "$( (pyenv root 2>/dev/null || echo "${PYENV_ROOT:-/root/.pyenv}") | head -n1)"/versions/3.12*/bin/python3 \
    /root/.pyenv/versions/3.12*/bin/python3 \
    "$(command -v python3.12 2>/dev/null || true)"; do
    [ -n "$candidate" ] && [ -x "$candidate" ] || continue
    if "$candidate" -c 'import sys, venv; sys.exit(0 if sys.version_info[:2] >= (3, 12) else 1)' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

missing_packages() {
  local installed pkg
  installed="$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${APT_PACKAGES[@]}" 2>/dev/null || true)"
  for pkg in "${APT_PACKAGES[@]}"; do
    grep -qx "$pkg installed" <<<"$installed" || echo "$pkg"
  done
}

ensure_packages() {
  local missing
  mapfile -t missing < <(missing_packages)
  if [ "${#missing[@]}" -eq 0 ]; then
    return 0
  fi
  log "installing Debian packages: ${missing[*]}"
  local own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then # never let postinst scripts start services
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  local rc=0
  {
    apt-get -o DPkg::Lock::Timeout=600 update -q &&
      apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
  } </dev/null >>"$LOG_DIR/apt.log" 2>&1 || rc=$?
  [ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  if [ "$rc" != 0 ]; then
    tail_log "$LOG_DIR/apt.log" 40
    die "apt-get failed (rc=$rc)"
  fi
}

# ensure_venv DIR CONSTRAINTS REQUIREMENT...
ensure_venv() {
  local dir="$1" constraints="$2" python stamp
  shift 2
  python="$(find_python312)" || die "Python >= 3.12 not found (pyenv 3.12.x or JGS_PYTHON)"
  stamp="$("$python" -c 'import sys; print(sys.version)' | sha256sum | cut -c1-16)-$(file_sha "$constraints")-$(echo "$*" | sha256sum | cut -c1-16)"
  if [ -x "$dir/bin/python" ] && [ "$(cat "$dir/.jgs-stamp" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  log "creating venv $dir ($*)"
  rm -rf "$dir"
  "$python" -m venv "$dir"
  "$dir/bin/python" -m pip install -q -c "$constraints" "$@"
  echo "$stamp" >"$dir/.jgs-stamp"
}

ensure_sdist() {
  local tarball="$SRC_DIR/jobbergate_api-$API_VERSION.tar.gz"
  mkdir -p "$SRC_DIR"
  if [ ! -s "$tarball" ]; then
    log "downloading the jobbergate-api $API_VERSION sdist (migrations)"
    rm -f "$tarball"
    # --no-binary for this one package only: with ':all:' pip also builds hatchling & co from
    # source just to read the metadata (~170 s instead of ~3 s); the file is the same
    "$API_VENV/bin/python" -m pip download -q --no-binary jobbergate-api --no-deps \
      -d "$SRC_DIR" "jobbergate-api==$API_VERSION"
  fi
  [ -s "$tarball" ] || die "sdist $tarball missing after download"
  if [ "$(sha256sum "$tarball" | cut -d' ' -f1)" != "$API_SDIST_SHA256" ]; then
    rm -f "$tarball"
    die "sdist checksum mismatch (expected $API_SDIST_SHA256); removed it, re-run to download again"
  fi
  local stamp
  stamp="$(file_sha "$tarball" "$HERE/patch_migrations.py")"
  if [ "$(cat "$SRC_DIR/migrate/.stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$SRC_DIR/migrate" "$SRC_DIR/unpack"
    mkdir -p "$SRC_DIR/unpack" "$SRC_DIR/migrate"
    tar -xzf "$tarball" -C "$SRC_DIR/unpack"
    cp -r "$SRC_DIR/unpack/jobbergate_api-$API_VERSION/alembic" "$SRC_DIR/migrate/alembic"
    rm -rf "$SRC_DIR/unpack"
    "$API_VENV/bin/python" "$HERE/patch_migrations.py" "$SRC_DIR/migrate/alembic"
    echo "$stamp" >"$SRC_DIR/migrate/.stamp"
  fi
}

python_envs() {
  ensure_venv "$API_VENV" "$HERE/constraints-api.txt" "jobbergate-api==$API_VERSION" "psycopg[binary]" cryptography
  ensure_sdist
}

moto_env() {
  ensure_venv "$MOTO_VENV" "$HERE/constraints-moto.txt" "moto[server]"
}

ensure_users() {
  local user
  getent passwd "$SYSTEM_USER" >/dev/null || useradd -r -M -s /usr/sbin/nologin "$SYSTEM_USER"
  getent passwd slurmrestd >/dev/null || useradd -r -M -d /nonexistent -s /usr/sbin/nologin -U slurmrestd
  for user in "${UNIX_USERS[@]}"; do
    if ! getent passwd "$user" >/dev/null; then
      useradd -m -s /bin/bash -U "$user"
    fi
    local uid home
    uid="$(id -u "$user")"
    [ "$uid" -ge 1000 ] || die "test user $user has uid $uid < 1000"
    home="$(getent passwd "$user" | cut -d: -f6)"
    if [ ! -d "$home" ]; then
      mkdir -p "$home"
      chown "$user:$user" "$home"
      chmod 0750 "$home"
    fi
  done
}

# -------------------------------------------------------------------------------------- Slurm

slurm_write_config() {
  ensure_dir "$SLURM_ETC" root:root 0755
  ensure_dir "$STACK_DIR/slurm" root:root 0755
  ensure_dir "$STACK_DIR/slurm/ctld" slurm:slurm 0755
  ensure_dir "$STACK_DIR/slurm/d" root:root 0755
  ensure_dir "$LOG_DIR/slurm" slurm:slurm 0755
  ensure_dir "$RUN_DIR/slurm" slurm:slurm 0755

  if [ ! -s "$JWT_KEY" ]; then # created once, never replaced
    (umask 077 && dd if=/dev/urandom of="$JWT_KEY.tmp" bs=32 count=1 status=none)
    chown slurm:slurm "$JWT_KEY.tmp"
    chmod 0600 "$JWT_KEY.tmp"
    mv -n "$JWT_KEY.tmp" "$JWT_KEY"
    rm -f "$JWT_KEY.tmp"
    log "created the Slurm JWT key $JWT_KEY"
  fi
  chown slurm:slurm "$JWT_KEY"
  chmod 0600 "$JWT_KEY"

  write_if_changed "$SLURM_ETC/slurm.conf" root:root 0644 <<EOF
# Written by jobbergate-sync tests/integration/stack.sh -- changes are overwritten.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$SLURMCTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=$JWT_KEY
StateSaveLocation=$STACK_DIR/slurm/ctld
SlurmdSpoolDir=$STACK_DIR/slurm/d
SlurmctldPidFile=$RUN_DIR/slurm/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurm/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurm/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=30
KillWait=5
MailProg=/bin/true
InactiveLimit=0
Waittime=0
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$SLURMDBD_PORT
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
SlurmdParameters=config_overrides
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=8 RealMemory=1000 State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  write_if_changed "$SLURM_ETC/cgroup.conf" root:root 0644 <<<"# empty: proctrack/linuxproc and task/none need no cgroups"
  write_if_changed "$SLURM_ETC/slurmdbd.conf" slurm:slurm 0600 <<EOF
# Written by jobbergate-sync tests/integration/stack.sh -- changes are overwritten.
AuthType=auth/munge
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=$JWT_KEY
DbdHost=$NODE
DbdAddr=127.0.0.1
DbdPort=$SLURMDBD_PORT
SlurmUser=slurm
LogFile=$LOG_DIR/slurm/slurmdbd.log
PidFile=$RUN_DIR/slurm/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MARIADB_PORT
StorageUser=slurm
StoragePass=$SLURMDB_PSWD
StorageLoc=slurm_acct_db
EOF
  SLURM_HASH="$(file_sha "$SLURM_ETC/slurm.conf" "$SLURM_ETC/cgroup.conf" "$JWT_KEY")"
  SLURMDBD_HASH="$(file_sha "$SLURM_ETC/slurmdbd.conf" "$JWT_KEY")"
}

munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  is_running munge && return 0
  if [ ! -s /etc/munge/munge.key ]; then
    ensure_dir /etc/munge munge:munge 0700
    (umask 077 && dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none)
  fi
  chown munge:munge /etc/munge /etc/munge/munge.key
  chmod 0700 /etc/munge
  chmod 0400 /etc/munge/munge.key
  ensure_dir /run/munge munge:munge 0755
  ensure_dir /var/lib/munge munge:munge 0700
  ensure_dir "$LOG_DIR/munge" munge:munge 0700
  ensure_dir "$RUN_DIR/munge" munge:munge 0755
  if munge_works; then
    warn "a munged not started by this stack already answers on /run/munge; using it"
    return 0
  fi
  rm -f "$RUN_DIR/munge/munged.pid"
  (cd / && runuser -u munge -- /usr/sbin/munged --force \
    --pid-file="$RUN_DIR/munge/munged.pid" --log-file="$LOG_DIR/munge/munged.log" \
    </dev/null >>"$LOG_DIR/munge/munged.out" 2>&1) ||
    { tail_log "$LOG_DIR/munge/munged.log"; die "munged failed to start"; }
  record_pid_from_file munge "$RUN_DIR/munge/munged.pid" 10 || die "munged did not start"
  wait_until 10 "munge" munge_works || die "munge -n | unmunge fails"
  log "started munged (pid $(service_pid munge))"
}

# shellcheck disable=SC2120
mariadb_sql() { mariadb --defaults-file="$MARIADB_CNF" -u root "$@"; }

start_mariadb() {
  is_running mariadb && return 0
  ensure_dir "$MARIADB_DIR" root:root 0755
  ensure_dir "$LOG_DIR/mariadb" mysql:mysql 0755
  ensure_dir "$RUN_DIR/mysqld" mysql:mysql 0755
  write_if_changed "$MARIADB_CNF" root:root 0644 <<EOF
[mysqld]
user=mysql
datadir=$MARIADB_DIR/data
socket=$RUN_DIR/mysqld/mysqld.sock
pid-file=$RUN_DIR/mysqld/mysqld.pid
port=$MARIADB_PORT
bind-address=127.0.0.1
log-error=$LOG_DIR/mariadb/mariadb.log
innodb_buffer_pool_size=128M
innodb_log_file_size=64M
innodb_lock_wait_timeout=900
innodb_flush_log_at_trx_commit=2
max_allowed_packet=64M
[client]
socket=$RUN_DIR/mysqld/mysqld.sock
port=$MARIADB_PORT
EOF
  if [ ! -d "$MARIADB_DIR/data/mysql" ]; then
    log "initialising the MariaDB datadir"
    rm -rf "$MARIADB_DIR/data" "$MARIADB_DIR/accounting.stamp"
    ensure_dir "$MARIADB_DIR/data" mysql:mysql 0750
    mariadb-install-db --defaults-file="$MARIADB_CNF" --user=mysql --datadir="$MARIADB_DIR/data" \
      --auth-root-authentication-method=socket --skip-test-db </dev/null >>"$LOG_DIR/mariadb/install.log" 2>&1 ||
      { tail_log "$LOG_DIR/mariadb/install.log"; die "mariadb-install-db failed"; }
  fi
  check_port_free mariadb "$MARIADB_PORT"
  launch mariadb "$LOG_DIR/mariadb/mariadbd.out" /usr/sbin/mariadbd --defaults-file="$MARIADB_CNF"
  wait_until 60 "mariadb" mariadb_sql -e 'SELECT 1' ||
    { tail_log "$LOG_DIR/mariadb/mariadb.log"; die "MariaDB did not come up"; }
  mariadb_sql <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$SLURMDB_PSWD';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$SLURMDB_PSWD';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
  log "started MariaDB (pid $(service_pid mariadb))"
}

sacctmgr_answers() { sacctmgr -n -P show cluster format=cluster </dev/null >/dev/null 2>&1; }

# Start a forking Slurm daemon (slurmdbd, slurmctld, slurmd), record its PID and the config hash
# it runs with. Usage: start_slurm_daemon NAME PORT HASH_FILE HASH
start_slurm_daemon() {
  local name=$1 port=$2 hash_file=$3 hash=$4
  check_port_free "$name" "$port"
  rm -f "$RUN_DIR/slurm/$name.pid"
  (cd / && "/usr/sbin/$name" </dev/null >>"$LOG_DIR/slurm/$name.out" 2>&1) ||
    { tail_log "$LOG_DIR/slurm/$name.log"; die "$name failed to start"; }
  record_pid_from_file "$name" "$RUN_DIR/slurm/$name.pid" 20 ||
    { tail_log "$LOG_DIR/slurm/$name.log"; die "$name did not start"; }
  echo "$hash" >"$hash_file"
}

start_slurmdbd() {
  if is_running slurmdbd; then
    if [ "$(cat "$RUN_DIR/slurmdbd.hash" 2>/dev/null)" = "$SLURMDBD_HASH" ]; then
      return 0
    fi
    log "slurmdbd.conf changed: restarting slurmdbd"
    stop_services slurmdbd
  fi
  start_slurm_daemon slurmdbd "$SLURMDBD_PORT" "$RUN_DIR/slurmdbd.hash" "$SLURMDBD_HASH"
  wait_until 60 "slurmdbd" sacctmgr_answers ||
    { tail_log "$LOG_DIR/slurm/slurmdbd.log"; die "slurmdbd does not answer sacctmgr"; }
  log "started slurmdbd (pid $(service_pid slurmdbd))"
}

register_accounting() {
  local stamp="$MARIADB_DIR/accounting.stamp" want out user
  want="$CLUSTER/$ACCOUNT/root,${UNIX_USERS[*]}"
  [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && return 0
  # capture first: `sacctmgr | grep -q` under pipefail fails on SIGPIPE
  out="$(sacctmgr -n -P show cluster format=cluster </dev/null)"
  grep -qx "$CLUSTER" <<<"$out" || sacctmgr -i add cluster "$CLUSTER" </dev/null >/dev/null
  out="$(sacctmgr -n -P show account format=account </dev/null)"
  grep -qx "$ACCOUNT" <<<"$out" ||
    sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description=jobbergate-tests Organization=jobbergate </dev/null >/dev/null
  out="$(sacctmgr -n -P show assoc where cluster="$CLUSTER" format=user,account </dev/null)"
  for user in root "${UNIX_USERS[@]}"; do
    grep -qx "$user|$ACCOUNT" <<<"$out" ||
      sacctmgr -i add user "$user" Account="$ACCOUNT" Cluster="$CLUSTER" </dev/null >/dev/null
  done
  echo "$want" >"$stamp"
  log "registered cluster $CLUSTER, account $ACCOUNT, users root ${UNIX_USERS[*]} in slurmdbd"
}

slurm_node_state() { sinfo -h -n "$NODE" -o %T </dev/null 2>/dev/null | head -n1; }
node_ready() { case "$(slurm_node_state)" in idle | mixed | allocated | completing) return 0 ;; *) return 1 ;; esac; }

start_slurmctld() {
  if is_running slurmctld; then
    [ "$(cat "$RUN_DIR/slurm.hash" 2>/dev/null)" = "$SLURM_HASH" ] && return 0
    log "slurm.conf changed: restarting slurmctld, slurmd, slurmrestd"
    stop_services slurmrestd slurmd slurmctld
  fi
  start_slurm_daemon slurmctld "$SLURMCTLD_PORT" "$RUN_DIR/slurm.hash" "$SLURM_HASH"
  wait_until 30 "slurmctld" scontrol ping ||
    { tail_log "$LOG_DIR/slurm/slurmctld.log"; die "slurmctld does not answer"; }
  log "started slurmctld (pid $(service_pid slurmctld))"
}

start_slurmd() {
  if ! is_running slurmd || [ "$(cat "$RUN_DIR/slurmd.hash" 2>/dev/null)" != "$SLURM_HASH" ]; then
    is_running slurmd && stop_services slurmd
    start_slurm_daemon slurmd "$SLURMD_PORT" "$RUN_DIR/slurmd.hash" "$SLURM_HASH"
    log "started slurmd (pid $(service_pid slurmd))"
  fi
  if ! wait_until 15 "node" node_ready; then
    log "node $NODE is '$(slurm_node_state)': resuming it"
    scontrol update nodename="$NODE" state=resume </dev/null >/dev/null 2>&1 || true
    wait_until 30 "node" node_ready ||
      { tail_log "$LOG_DIR/slurm/slurmd.log"; die "node $NODE not idle (state '$(slurm_node_state)')"; }
  fi
}

slurmrestd_up() { [ "$(http_code "http://127.0.0.1:$SLURMRESTD_PORT/openapi/v3")" = 401 ]; }

start_slurmrestd() {
  if is_running slurmrestd && [ "$(cat "$RUN_DIR/slurmrestd.hash" 2>/dev/null)" = "$SLURM_HASH" ]; then
    return 0
  fi
  is_running slurmrestd && stop_services slurmrestd
  check_port_free slurmrestd "$SLURMRESTD_PORT"
  local plugins="openapi/v0.0.36,openapi/v0.0.37,openapi/v0.0.38,openapi/dbv0.0.36,openapi/dbv0.0.37,openapi/dbv0.0.38"
  launch slurmrestd "$LOG_DIR/slurm/slurmrestd.log" env SLURM_JWT=daemon \
    /usr/sbin/slurmrestd -a rest_auth/jwt -s "$plugins" \
    -u "$(id -u slurmrestd)" -g "$(id -g slurmrestd)" "127.0.0.1:$SLURMRESTD_PORT"
  echo "$SLURM_HASH" >"$RUN_DIR/slurmrestd.hash"
  wait_until 20 "slurmrestd" slurmrestd_up ||
    { tail_log "$LOG_DIR/slurm/slurmrestd.log"; die "slurmrestd did not come up on port $SLURMRESTD_PORT"; }
  log "started slurmrestd (pid $(service_pid slurmrestd))"
}

check_slurmrestd_auth() { # a real JWT round trip: ping as the SlurmUser
  local token body
  token="$(scontrol token username=slurm lifespan=60 </dev/null | sed -n 's/^SLURM_JWT=//p')"
  body="$(curl -s --max-time 5 -H "X-SLURM-USER-NAME: slurm" -H "X-SLURM-USER-TOKEN: $token" \
    "http://127.0.0.1:$SLURMRESTD_PORT/slurm/v0.0.38/ping" || true)"
  [[ "$(tr -d ' \n\t' <<<"$body")" == *'"errors":[]'* ]] ||
    { echo "$body" | head -c 500 >&2; die "slurmrestd JWT ping failed"; }
}

slurm_up() {
  ensure_users
  slurm_write_config
  start_munge
  start_mariadb
  start_slurmdbd
  register_accounting
  start_slurmctld
  start_slurmd
  start_slurmrestd
  check_slurmrestd_auth
}

# ---------------------------------------------------------------------------------- API side

pg_bin() { echo "/usr/lib/postgresql/15/bin/$1"; }
psql_admin() { (cd / && runuser -u postgres -- "$(pg_bin psql)" -h "$PG_SOCK" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qtAX "$@"); }

start_postgres() {
  ensure_dir "$STACK_DIR/postgres" postgres:postgres 0755
  ensure_dir "$PG_SOCK" postgres:postgres 0755
  ensure_dir "$LOG_DIR/postgres" postgres:postgres 0755
  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    stop_services postgres
    log "initialising the PostgreSQL cluster"
    rm -rf "$PGDATA" "$STACK_DIR/postgres/migrated"
    ensure_dir "$PGDATA" postgres:postgres 0700
    (cd / && runuser -u postgres -- "$(pg_bin initdb)" -D "$PGDATA" -U postgres --auth-local=trust \
      --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 </dev/null >>"$LOG_DIR/postgres/initdb.log" 2>&1) ||
      { tail_log "$LOG_DIR/postgres/initdb.log"; die "initdb failed"; }
    cat >>"$PGDATA/postgresql.conf" <<EOF
# jobbergate-sync integration stack (disposable data)
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  fi
  is_running postgres && return 0
  check_port_free postgres "$PG_PORT"
  if [ -f "$PGDATA/postmaster.pid" ]; then # stale lock file from a killed postmaster
    local old
    old="$(head -n1 "$PGDATA/postmaster.pid" | tr -dc 0-9)"
    if [ -z "$old" ] || [[ "$(tr '\0' ' ' 2>/dev/null <"/proc/$old/cmdline")" != *postgres* ]]; then
      rm -f "$PGDATA/postmaster.pid"
    fi
  fi
  (cd / && runuser -u postgres -- "$(pg_bin pg_ctl)" -D "$PGDATA" -l "$LOG_DIR/postgres/postgres.log" -w -t 60 \
    -o "-p $PG_PORT -k $PG_SOCK -c listen_addresses=127.0.0.1" start </dev/null >/dev/null 2>&1) ||
    { tail_log "$LOG_DIR/postgres/postgres.log"; die "PostgreSQL did not start"; }
  record_pid_from_file postgres "$PGDATA/postmaster.pid" 10 || die "no postmaster.pid"
  log "started PostgreSQL (pid $(service_pid postgres))"
}

ensure_database() {
  if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$DB_USER'")" != 1 ]; then
    psql_admin -c "CREATE ROLE \"$DB_USER\" LOGIN PASSWORD '$DB_PSWD'"
  fi
  if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" != 1 ]; then
    psql_admin -c "CREATE DATABASE \"$DB_NAME\" OWNER \"$DB_USER\""
    rm -f "$STACK_DIR/postgres/migrated"
  fi
}

api_env() { # the API's settings (B.5), for env -i
  echo DEPLOY_ENV=LOCAL LOG_LEVEL=INFO SQL_LOG_LEVEL=WARNING \
    DATABASE_HOST=127.0.0.1 "DATABASE_PORT=$PG_PORT" "DATABASE_USER=$DB_USER" "DATABASE_PSWD=$DB_PSWD" \
    "DATABASE_NAME=$DB_NAME" "S3_ENDPOINT_URL=http://127.0.0.1:$S3_PORT" "S3_BUCKET_NAME=$BUCKET" \
    AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 \
    "ARMASEC_DOMAIN=127.0.0.1:$OIDC_PORT/realms/$REALM" ARMASEC_USE_HTTPS=false ARMASEC_DEBUG=false \
    LANG=C.UTF-8 PATH=/usr/local/bin:/usr/bin:/bin "HOME=$STACK_DIR/api-cwd" \
    MAX_UPLOAD_FILE_SIZE=268435456 # 256 MiB instead of 5, as sites raise it: the large-file test needs it
}

db_head() { psql_admin -d "$DB_NAME" -c "SELECT version_num FROM alembic_version" 2>/dev/null || true; }

migrate_database() {
  local stamp="$STACK_DIR/postgres/migrated" want head
  want="$(cat "$SRC_DIR/migrate/.stamp")"
  if [ -s "$stamp" ] && [ "$(sed -n 1p "$stamp")" = "$want" ] && [ "$(db_head)" = "$(sed -n 2p "$stamp")" ]; then
    return 0
  fi
  log "running alembic upgrade head (patched migrations)"
  # shellcheck disable=SC2046
  (cd "$SRC_DIR/migrate" && env -i $(api_env) "$API_VENV/bin/alembic" --config=alembic/alembic.ini upgrade head \
    </dev/null >>"$LOG_DIR/alembic.log" 2>&1) || { tail_log "$LOG_DIR/alembic.log" 40; die "alembic upgrade failed"; }
  head="$(db_head)"
  [ -n "$head" ] || die "no alembic_version after the upgrade"
  printf '%s\n%s\n' "$want" "$head" >"$stamp"
  log "database at alembic head $head"
}

s3_tool() { env AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing "$MOTO_VENV/bin/python" "$HERE/s3_tool.py" "http://127.0.0.1:$S3_PORT" "$BUCKET" "$@"; }

s3_snapshot_save() { s3_tool save "$S3_SNAPSHOT" >>"$LOG_DIR/s3-snapshot.log" 2>&1; }

S3_STARTED=0
start_s3() {
  is_running s3 && return 0
  check_port_free s3 "$S3_PORT"
  launch s3 "$LOG_DIR/moto.log" "$MOTO_VENV/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT"
  wait_until 60 "moto" http_is "http://127.0.0.1:$S3_PORT/moto-api/" 200 ||
    { tail_log "$LOG_DIR/moto.log"; die "moto S3 did not come up"; }
  if [ -f "$S3_SNAPSHOT/index.json" ]; then
    s3_tool restore "$S3_SNAPSHOT" >>"$LOG_DIR/s3-snapshot.log" 2>&1 || die "S3 snapshot restore failed"
  else
    s3_tool ensure
  fi
  S3_STARTED=1
  log "started moto S3 (pid $(service_pid s3)), bucket $BUCKET"
}

file_rows() {
  psql_admin -d "$DB_NAME" -c "SELECT (SELECT count(*) FROM job_script_files) + (SELECT count(*) FROM job_script_template_files) + (SELECT count(*) FROM workflow_files)"
}

# after a moto restart: the DB must not reference objects that the bucket lost
check_s3_consistency() {
  [ "$S3_STARTED" = 1 ] || return 0
  local rows objects
  rows="$(file_rows)"
  objects="$(s3_tool count)"
  if [ "$objects" -lt "$rows" ]; then
    warn "S3 holds $objects object(s) but the DB references $rows file(s) (moto lost its memory): resetting API data"
    reset_api_data
  fi
}

reset_api_data() {
  stop_services api
  psql_admin -c "DROP DATABASE IF EXISTS \"$DB_NAME\" WITH (FORCE)"
  rm -f "$STACK_DIR/postgres/migrated"
  ensure_database
  migrate_database
  if is_running s3; then s3_tool clear; fi
  rm -rf "$S3_SNAPSHOT"
  log "API data reset (empty database and bucket)"
}

start_oidc() {
  is_running oidc && return 0
  check_port_free oidc "$OIDC_PORT"
  ensure_dir "$STACK_DIR/oidc" root:root 0700
  launch oidc "$LOG_DIR/oidc.log" "$API_VENV/bin/python" "$HERE/oidc_issuer.py" --host 127.0.0.1 \
    --port "$OIDC_PORT" --key-file "$OIDC_KEY" --realm-file "$HERE/oidc_realm.json"
  wait_until 20 "oidc" http_is "http://127.0.0.1:$OIDC_PORT/realms/$REALM/.well-known/openid-configuration" 200 ||
    { tail_log "$LOG_DIR/oidc.log"; die "OIDC issuer did not come up"; }
  log "started OIDC issuer (pid $(service_pid oidc))"
}

start_api() {
  is_running api && return 0
  check_port_free api "$API_PORT"
  rm -rf "$STACK_DIR/api-cwd"
  ensure_dir "$STACK_DIR/api-cwd" root:root 0755 # empty: pydantic-settings would read a .env here
  # shellcheck disable=SC2046
  (cd "$STACK_DIR/api-cwd" && exec setsid env -i $(api_env) "$API_VENV/bin/uvicorn" jobbergate_api.main:app \
    --host 127.0.0.1 --port "$API_PORT" --workers 1 --no-server-header </dev/null >>"$LOG_DIR/api.log" 2>&1) &
  record_pid api "$!"
  wait_until 60 "api" http_is "http://127.0.0.1:$API_PORT/jobbergate/health" 204 ||
    { tail_log "$LOG_DIR/api.log" 40; die "jobbergate-api did not become healthy"; }
  log "started jobbergate-api (pid $(service_pid api))"
}

check_api_auth() { # full chain: issuer token -> API (JWKS fetch) -> DB
  local token code
  token="$(curl -s --max-time 5 -u local-slurm:local-slurm-secret -d grant_type=client_credentials \
    "http://127.0.0.1:$OIDC_PORT/realms/$REALM/protocol/openid-connect/token" |
    sed -n 's/.*"access_token": *"\([^"]*\)".*/\1/p')"
  [ -n "$token" ] || die "the issuer gave no token for local-slurm"
  code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -H "Authorization: Bearer $token" \
    "http://127.0.0.1:$API_PORT/jobbergate/job-submissions/agent/pending" || true)"
  [ "$code" = 200 ] || { tail_log "$LOG_DIR/api.log"; die "GET agent/pending with a local-slurm token gave HTTP $code"; }
}

api_up() {
  start_postgres
  ensure_database
  migrate_database
  start_s3
  check_s3_consistency
  start_oidc
  start_api
  check_api_auth
}

# ------------------------------------------------------------------------------------ stack.env

write_stack_env() {
  local users
  users="$("$API_VENV/bin/python" -c '
import json, sys
realm = json.load(open(sys.argv[1]))
print(",".join(":".join([n, u["password"], u.get("email", "")]) for n, u in realm["users"].items()))
' "$HERE/oidc_realm.json")"
  local oidc="http://127.0.0.1:$OIDC_PORT/realms/$REALM"
  write_if_changed "$STACK_ENV" root:root 0644 <<EOF
JGS_STACK_DIR=$STACK_DIR
JGS_STACK_SH=$SELF
JGS_API_URL=http://127.0.0.1:$API_PORT/jobbergate
JGS_OIDC_URL=$oidc
JGS_OIDC_DOMAIN=127.0.0.1:$OIDC_PORT/realms/$REALM
JGS_OIDC_USE_HTTPS=false
JGS_OIDC_TOKEN_URL=$oidc/protocol/openid-connect/token
JGS_OIDC_TEST_URL=http://127.0.0.1:$OIDC_PORT/_test
JGS_OIDC_CLIENT_ID=local-slurm
JGS_OIDC_CLIENT_SECRET=local-slurm-secret
JGS_OIDC_OTHER_CLIENT_ID=other-slurm
JGS_OIDC_OTHER_CLIENT_SECRET=other-slurm-secret
JGS_OIDC_NOPERM_CLIENT_ID=noperm-slurm
JGS_OIDC_NOPERM_CLIENT_SECRET=noperm-slurm-secret
JGS_OIDC_USER_CLIENT_ID=cli
JGS_OIDC_USERS=$users
JGS_SLURMRESTD_URL=http://127.0.0.1:$SLURMRESTD_PORT
JGS_SLURMRESTD_VERSION=v0.0.38
JGS_SLURM_JWT_KEY=$JWT_KEY
JGS_SLURM_CLUSTER=$CLUSTER
JGS_SLURM_NODE=$NODE
JGS_SLURM_PARTITION=$PARTITION
JGS_SLURM_ACCOUNT=$ACCOUNT
JGS_SLURM_USER=slurm
JGS_SLURMDBD=1
JGS_UNIX_USERS=$(
    IFS=,
    echo "${UNIX_USERS[*]}"
  )
JGS_SYSTEM_USER=$SYSTEM_USER
JGS_S3_URL=http://127.0.0.1:$S3_PORT
JGS_S3_BUCKET=$BUCKET
JGS_DATABASE_URL=postgresql://$DB_USER:$DB_PSWD@127.0.0.1:$PG_PORT/$DB_NAME
JGS_LOG_DIR=$LOG_DIR
EOF
}

# -------------------------------------------------------------------------------------- commands

cmd_up() {
  local t0 venv_pid moto_pid
  t0="$(now)"
  need_root
  prepare_dirs
  find_python312 >/dev/null || die "Python >= 3.12 not found (install pyenv 3.12.x or set JGS_PYTHON)"
  # pip installs run in the background while apt and Slurm come up
  (python_envs) >>"$LOG_DIR/venv-api.log" 2>&1 &
  venv_pid=$!
  (moto_env) >>"$LOG_DIR/venv-moto.log" 2>&1 &
  moto_pid=$!
  timed packages ensure_packages
  timed slurm slurm_up
  local t1
  t1="$(now)"
  wait "$venv_pid" || { tail_log "$LOG_DIR/venv-api.log" 30; die "API venv / sdist setup failed"; }
  wait "$moto_pid" || { tail_log "$LOG_DIR/venv-moto.log" 30; die "moto venv setup failed"; }
  printf '[stack] phase %-12s %6ss (waited after slurm; ran in parallel)\n' venvs "$(elapsed "$t1")"
  timed api api_up
  write_stack_env
  printf '[stack] up: all services running in %ss; env: %s\n' "$(elapsed "$t0")" "$STACK_ENV"
}

cmd_down() {
  local t0
  t0="$(now)"
  need_root
  [ -d "$RUN_DIR" ] || { log "nothing to stop"; return 0; }
  stop_services api oidc slurmrestd
  stop_services s3 postgres slurmd slurmctld
  stop_services slurmdbd
  stop_services mariadb munge
  rm -f "$STACK_ENV"
  printf '[stack] down in %ss (data kept in %s)\n' "$(elapsed "$t0")" "$STACK_DIR"
}

cmd_status() {
  local name pid all=0
  for name in "${SERVICES[@]}"; do
    if pid="$(service_pid "$name")"; then
      printf '%-11s running  pid %s\n' "$name" "$pid"
    else
      printf '%-11s STOPPED\n' "$name"
      all=3
    fi
  done
  printf '%-11s %s\n' "api-health" "$(http_code "http://127.0.0.1:$API_PORT/jobbergate/health")"
  printf '%-11s %s\n' "oidc" "$(http_code "http://127.0.0.1:$OIDC_PORT/realms/$REALM/.well-known/openid-configuration")"
  printf '%-11s %s\n' "slurmrestd" "$(http_code "http://127.0.0.1:$SLURMRESTD_PORT/openapi/v3")"
  printf '%-11s %s\n' "node" "$(slurm_node_state || true)"
  [ -f "$STACK_ENV" ] && printf '%-11s %s\n' "env" "$STACK_ENV"
  return "$all"
}

start_one() {
  case "$1" in
    munge) start_munge ;;
    mariadb) start_mariadb ;;
    slurmdbd) slurm_write_config && start_slurmdbd ;;
    slurmctld) slurm_write_config && start_slurmctld ;;
    slurmd) slurm_write_config && start_slurmd ;;
    slurmrestd) slurm_write_config && start_slurmrestd ;;
    postgres) start_postgres ;;
    s3) start_s3 && check_s3_consistency ;;
    oidc) start_oidc ;;
    api) start_api ;;
    *) die "unknown service '$1' (one of: ${SERVICES[*]})" ;;
  esac
}

cmd_reset() {
  need_root
  is_running postgres || die "postgres is not running: run stack.sh up first"
  local user
  for user in "${UNIX_USERS[@]}"; do
    scancel --user="$user" </dev/null 2>/dev/null || true
  done
  reset_api_data
  start_api
  check_api_auth
}

main() {
  local cmd="${1:-}"
  case "$cmd" in
    up | down | stop | start | restart | reset)
      # serialise concurrent runs; flock -o keeps the lock fd away from the daemons it starts
      if [ -z "${JGS_STACK_LOCKED:-}" ]; then
        mkdir -p "$STACK_DIR"
        exec env JGS_STACK_LOCKED=1 flock -o -w 1200 "$STACK_DIR/.lock" "$SELF" "$@" </dev/null
      fi
      ;;
  esac
  case "$cmd" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cat "$STACK_ENV" ;;
    reset) cmd_reset ;;
    stop)
      [ $# -eq 2 ] || die "usage: stack.sh stop SERVICE"
      need_root
      pid_pattern "$2" >/dev/null
      stop_services "$2"
      ;;
    start)
      [ $# -eq 2 ] || die "usage: stack.sh start SERVICE"
      need_root
      prepare_dirs
      start_one "$2"
      ;;
    restart)
      [ $# -eq 2 ] || die "usage: stack.sh restart SERVICE"
      need_root
      pid_pattern "$2" >/dev/null
      stop_services "$2"
      start_one "$2"
      ;;
    *)
      sed -n '2,16p' "$SELF" | sed 's/^# \{0,1\}//'
      [ -z "$cmd" ] || [ "$cmd" = -h ] || [ "$cmd" = --help ] || exit 2
      ;;
  esac
}

main "$@"
