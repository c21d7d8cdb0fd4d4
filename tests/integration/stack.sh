#!/usr/bin/env bash
# Integration stack for jobbergate-sync: up to three real Slurm versions side by side, each in its
# own Debian root (chroot) with slurmctld, slurmd, slurmdbd and slurmrestd (JWT), plus one
# jobbergate-api 5.12.0 (PostgreSQL, moto S3) and a Keycloak-shaped test OIDC issuer, all on loopback.
#
#   stack.sh up                 install/build what is missing, start everything, write stack.env
#   stack.sh down               stop everything (by recorded PID files), unmount the roots, keep data
#   stack.sh status             show services; exit 0 only when all run
#   stack.sh stop|start|restart SERVICE[@LEG]
#                               SERVICE: munge slurmdbd slurmctld slurmd slurmrestd (per leg; LEG
#                                        defaults to the default leg), mariadb postgres s3 oidc api ldap
#                                        influxdb
#   stack.sh slurm LEG CMD [ARG...]
#                               run a Slurm command (squeue, sacct, scontrol, sbatch...) as root in
#                               that leg's root; output and exit code pass through
#   stack.sh reset              wipe API data (DB + bucket) and cancel the test users' Slurm jobs
#   stack.sh env                print stack.env
#
# JGS_API_WORKERS (default 1): uvicorn workers of jobbergate-api. `JGS_API_WORKERS=2 stack.sh restart
# api` restarts only the API with two (production runs several; one is what the tests expect: run
# `stack.sh restart api` to go back to it).
#
# Legs (JGS_SLURM_LEGS, default every available one: 2205,2411,2511):
#   2205  Debian 12 root, Slurm 22.05 packages        slurmrestd v0.0.38 (+dbv0.0.38)  ports 6817-6820
#   2411  Debian 13 root, Slurm 24.11 packages        v0.0.40 v0.0.41 v0.0.42           ports 6827-6830
#   2511  Debian 13 root, Slurm 25.11.7 from tarball  v0.0.41 .. v0.0.44                ports 6837-6840
#   (ports in the order slurmctld, slurmd, slurmdbd, slurmrestd). 2511 needs the Slurm 25.11.7
#   source/prebuilt tarballs: JGS_SLURM_2511_DIR names a directory holding slurm-25.11.7*.tar.gz
#   (default: the shared/slurm folder beside the repository checkout); without them it is skipped.
#
# stack.env (KEY=VALUE): the JGS_* API/OIDC settings; JGS_SLURMRESTD_URL, JGS_SLURMRESTD_VERSION,
# JGS_SLURM_JWT_KEY, JGS_SLURM_CLUSTER/_NODE/_PARTITION describe the default leg JGS_DEFAULT_LEG
# (env JGS_DEFAULT_LEG, default 2205); JGS_SLURM_LEGS lists the legs that are up, and for each leg
# JGS_SLURM_<LEG>_URL, _JWT_KEY (host-side path, root-readable), _ROOT, _API_VERSIONS (comma list),
# _CLUSTER, _NODE, _PARTITION, _VERSION. JGS_LDAP_* describe the OpenLDAP server (Debian's slapd on
# the host, its own instance under the stack directory): LDAPS and StartTLS URLs, its test CA (and
# another CA that did not sign it), the base DN, and a read-only bind DN with its password.
# JGS_INFLUXDB_URL is InfluxDB 1.x (Debian's influxdb, its own instance under the stack directory),
# where each leg's acct_gather_profile/influxdb plugin writes its jobs' profiles (every job: task
# samples every 5 s) into the database JGS_SLURM_<LEG>_INFLUXDB_DATABASE (one per leg: each leg has
# its own job ids).
#
# Needs root on Debian 12 or 13 and Python 3.12 (pyenv's, or JGS_PYTHON=/path/to/python3.12).
# Everything lives in ${JGS_STACK_DIR:-/var/tmp/jobbergate-sync-stack}: logs/, run/ (PID files),
# roots/<leg> (built once, reused), data, venvs. The host's /home (and JGS_EXEC_ROOTS) is
# bind-mounted into every root, so files written on the host are what jobs see: run `stack.sh down`
# (which unmounts) before deleting a root or the stack directory, or rm would reach the host's /home.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
REPO_DIR="$(cd "$HERE/../.." && pwd)"

STACK_DIR="${JGS_STACK_DIR:-/var/tmp/jobbergate-sync-stack}"
LOG_DIR="$STACK_DIR/logs"
RUN_DIR="$STACK_DIR/run"
ROOTS_DIR="$STACK_DIR/roots"

API_PORT="${JGS_API_PORT:-8000}"
OIDC_PORT="${JGS_OIDC_PORT:-8180}"
S3_PORT="${JGS_S3_PORT:-9000}"
PG_PORT="${JGS_PG_PORT:-5433}"
API_WORKERS="${JGS_API_WORKERS:-1}"
MARIADB_PORT="${JGS_MARIADB_PORT:-3306}"
INFLUXDB_PORT="${JGS_INFLUXDB_PORT:-8086}"

ALL_LEGS=(2205 2411 2511)
# the default leg: JGS_DEFAULT_LEG, else (except for `up`) the one the running stack was brought up with
DEFAULT_LEG="${JGS_DEFAULT_LEG:-}"
if [ -z "$DEFAULT_LEG" ] && [ "${1:-}" != up ]; then
  DEFAULT_LEG="$(sed -n 's/^JGS_DEFAULT_LEG=//p' "$STACK_DIR/stack.env" 2>/dev/null || true)"
fi
DEFAULT_LEG="${DEFAULT_LEG:-2205}"
# directories bind-mounted at the same path into every root (job working directories live there)
read -r -a EXEC_ROOTS <<<"$(tr ',' ' ' <<<"${JGS_EXEC_ROOTS:-/home}")"
SLURM_2511_DIR="${JGS_SLURM_2511_DIR:-$REPO_DIR/../shared/slurm}"
SLURM_2511_PREBUILT="slurm-25.11.7-trixie-amd64.tar.gz"
SLURM_2511_PREBUILT_SHA256="44fec2f0154351555a43d5aa70f592bacd70a48b1d71df3ff48591b22f95d8fa"
SLURM_2511_SOURCE="slurm-25.11.7.tar.gz"
SLURM_2511_SOURCE_SHA256="fde046ae991d17cd27f53732b6f3544a2980ff6faadd2fde540c87783ad03bef"
# bump when the way a root is built changes: roots with another recipe are rebuilt
ROOT_RECIPE=1

REALM="jobbergate-local"
ACCOUNT="jobbergate"
PARTITION="debug"
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

LEG_SERVICES=(munge slurmdbd slurmctld slurmd slurmrestd)
HOST_SERVICES=(mariadb postgres s3 oidc api ldap influxdb)

# the host needs no Slurm: only the databases, debootstrap for the roots, curl, and OpenLDAP
# (slapd and its client tools; openssl makes its test CA)
APT_PACKAGES=(debootstrap mariadb-server postgresql curl ca-certificates slapd ldap-utils openssl influxdb)

LDAP_PORT="${JGS_LDAP_PORT:-6389}"
LDAPS_PORT="${JGS_LDAPS_PORT:-6636}"
LDAP_DIR="$STACK_DIR/ldap"
LDAP_BASE_DN="dc=jobbergate-sync,dc=test"
LDAP_READER_DN="cn=reader,ou=services,$LDAP_BASE_DN"
LDAP_READER_PSWD="reader-pswd"

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

# of the contents only: the same files in another checkout give the same stamp (no venv rebuild)
file_sha() { sha256sum "$@" 2>/dev/null | cut -d" " -f1 | sha256sum | cut -c1-16; }

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

base_service() { echo "${1%@*}"; }

pid_pattern() {
  case "$(base_service "$1")" in
    munge) echo munged ;;
    mariadb) echo mariadbd ;;
    slurmdbd | slurmctld | slurmd | slurmrestd) base_service "$1" ;;
    postgres) echo postgres ;;
    s3) echo moto_server ;;
    oidc) echo oidc_issuer.py ;;
    api) echo uvicorn ;;
    ldap) echo slapd ;;
    influxdb) echo influxd ;;
    *) die "unknown service '$1' (one of: ${LEG_SERVICES[*]} (each as NAME@LEG) ${HOST_SERVICES[*]})" ;;
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

stop_signal() { case "$(base_service "$1")" in postgres) echo INT ;; *) echo TERM ;; esac; }

stop_timeout() { case "$(base_service "$1")" in slurmctld | slurmdbd | mariadb | postgres) echo 30 ;; *) echo 15 ;; esac; }

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
    "$(command -v python3.12 2>/dev/null || true)" \
    "$(command -v python3 2>/dev/null || true)"; do # Debian 13's own python3 is 3.13
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
  # Debian's slapd would configure and start a system directory; the stack runs its own instance
  echo "slapd slapd/no_configuration boolean true" | debconf-set-selections
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

ensure_users() { # the job users live on the host; every root gets them with the same uid/gid
  local user
  getent passwd "$SYSTEM_USER" >/dev/null || useradd -r -M -s /usr/sbin/nologin "$SYSTEM_USER"
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

# ------------------------------------------------------------------------------- Slurm legs: roots

# leg_load LEG: set the L_* variables describing one leg (in the current shell)
# In every root besides Slurm: Python with the tool's dependencies from Debian, so that the tool
# (and, in its own venv, any other agent) can run where Slurm's commands are, as on a head node.
ROOT_PYTHON_PACKAGES="python3 python3-venv python3-requests python3-click python3-tenacity python3-jwt python3-pythonjsonlogger"

leg_load() {
  L_LEG="$1"
  case "$L_LEG" in
    2205)
      L_SUITE=bookworm L_PREFIX=/usr L_PORT_BASE=6817 L_APIS="v0.0.38"
      L_PACKAGES="slurmctld slurmd slurmrestd slurmdbd slurm-client munge slurm-wlm-jwt-plugin slurm-wlm-mysql-plugin"
      ;;
    2411)
      L_SUITE=trixie L_PREFIX=/usr L_PORT_BASE=6827 L_APIS="v0.0.40,v0.0.41,v0.0.42"
      L_PACKAGES="slurmctld slurmd slurmrestd slurmdbd slurm-client munge slurm-wlm-jwt-plugin slurm-wlm-mysql-plugin"
      ;;
    2511)
      L_SUITE=trixie L_PREFIX=/opt/slurm-25.11 L_PORT_BASE=6837 L_APIS="v0.0.41,v0.0.42,v0.0.43,v0.0.44"
      # the runtime libraries of the prebuilt tree (see its README) and the MariaDB client
      L_PACKAGES="munge libmunge2 libjson-c5 libhttp-parser2.9 libyaml-0-2 libjwt2 libhwloc15 libnuma1 liblz4-1 libpam0g libreadline8t64 libmariadb3"
      ;;
    *) die "unknown Slurm leg '$L_LEG' (known: ${ALL_LEGS[*]})" ;;
  esac
  L_PACKAGES="$L_PACKAGES $ROOT_PYTHON_PACKAGES"
  local base_var="JGS_SLURM_${L_LEG}_PORT_BASE"
  L_PORT_BASE="${!base_var:-$L_PORT_BASE}"
  L_CTLD_PORT=$L_PORT_BASE L_SLURMD_PORT=$((L_PORT_BASE + 1))
  L_DBD_PORT=$((L_PORT_BASE + 2)) L_REST_PORT=$((L_PORT_BASE + 3))
  L_ROOT="$ROOTS_DIR/$L_LEG"
  L_CLUSTER="jgs-$L_LEG"
  L_DB="slurm_acct_$L_LEG"
  L_ETC="$L_ROOT/etc/slurm"        # host-side paths into the root
  L_JWT_KEY="$L_ETC/jwt_hs256.key" # in the root: /etc/slurm/jwt_hs256.key
  L_LOG="$L_ROOT/var/log/slurm"
  L_PIDS="$L_ROOT/run/slurm"
  L_STAMP="$L_ROOT/.jgs-root"
  L_INFLUXDB_DB="slurm_$L_LEG"
}

# the 25.11 tarballs: prints the one to use (prebuilt if it fits this machine, else the source)
slurm_2511_tarball() {
  local dir="$SLURM_2511_DIR"
  if [ "$(dpkg --print-architecture)" = amd64 ] && [ -s "$dir/$SLURM_2511_PREBUILT" ]; then
    echo "$dir/$SLURM_2511_PREBUILT"
  elif [ -s "$dir/$SLURM_2511_SOURCE" ]; then
    echo "$dir/$SLURM_2511_SOURCE"
  else
    return 1
  fi
}

leg_available() {
  [ "$1" != 2511 ] && return 0
  # an already built root needs no tarball
  [ -f "$ROOTS_DIR/2511/.jgs-root" ] || slurm_2511_tarball >/dev/null
}

# LEGS: the legs to bring up (JGS_SLURM_LEGS, minus the unavailable ones)
select_legs() {
  local wanted leg
  LEGS=()
  IFS=', ' read -r -a wanted <<<"${JGS_SLURM_LEGS:-${ALL_LEGS[*]}}"
  for leg in "${wanted[@]}"; do
    [ -n "$leg" ] || continue
    (leg_load "$leg") || exit 1
    if leg_available "$leg"; then
      LEGS+=("$leg")
    else
      log "Slurm 25.11 leg skipped: no Slurm 25.11.7 source/prebuilt tarballs; set JGS_SLURM_2511_DIR to a directory holding slurm-25.11.7*.tar.gz (default: the shared/slurm folder beside the repository checkout)"
    fi
  done
  [ "${#LEGS[@]}" -gt 0 ] || die "no Slurm leg to bring up (JGS_SLURM_LEGS='${JGS_SLURM_LEGS:-}')"
  [[ " ${LEGS[*]} " == *" $DEFAULT_LEG "* ]] || die "the default leg $DEFAULT_LEG (JGS_DEFAULT_LEG) is not among the legs to bring up: ${LEGS[*]}"
}

debian_mirror() {
  local url=""
  if [ -n "${JGS_DEBIAN_MIRROR:-}" ]; then
    echo "$JGS_DEBIAN_MIRROR"
    return
  fi
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then # deb822: first URIs not of the security archive
    url="$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' /etc/apt/sources.list.d/debian.sources)"
  fi
  if [ -z "$url" ] && [ -f /etc/apt/sources.list ]; then
    url="$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file):/) { if ($i !~ /security/) { print $i; exit } } }' /etc/apt/sources.list)"
  fi
  echo "${url:-http://deb.debian.org/debian}"
}

leg_recipe() { # what a root is built from; a root with another recipe is rebuilt
  local extra=""
  [ "$L_LEG" = 2511 ] && extra="$(basename "$(slurm_2511_tarball 2>/dev/null || echo none)")"
  echo "$ROOT_RECIPE $L_SUITE $L_PACKAGES $extra" | sha256sum | cut -c1-16
}

root_built() { [ -f "$L_STAMP" ] && { [ "$L_LEG" = 2511 ] && ! slurm_2511_tarball >/dev/null || [ "$(cat "$L_STAMP")" = "$(leg_recipe)" ]; }; }

# mount points under a root, deepest first
root_mounts() {
  awk -v root="$1/" 'index($5, root) == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

umount_root() {
  local root="$1" target
  for target in $(root_mounts "$root"); do
    umount "$target" 2>/dev/null || umount -l "$target" || warn "could not unmount $target"
  done
}

# proc; /sys read-only with its submounts (hwloc; slurmd 22.05 wants /sys/fs/cgroup); then the
# shared directories at the same path. Every bind is made a slave so that unmounting it can never
# propagate back to the host's own mounts.
mount_root() {
  local root="$1" dir
  mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
  if ! mountpoint -q "$root/sys"; then
    mount --rbind /sys "$root/sys"
    mount --make-rslave "$root/sys"
    mount -o remount,bind,ro "$root/sys"
  fi
  for dir in "${EXEC_ROOTS[@]}"; do
    [ -d "$dir" ] || mkdir -p "$dir"
    mkdir -p "$root$dir"
    if ! mountpoint -q "$root$dir"; then
      mount --bind "$dir" "$root$dir"
      mount --make-slave "$root$dir"
    fi
  done
}

remove_root() { # never rm -rf through a bind mount of the host's /home
  local root="$1"
  umount_root "$root"
  [ -z "$(root_mounts "$root")" ] || die "$root still has mounts: $(root_mounts "$root" | tr '\n' ' ')"
  rm -rf "$root"
}

in_root() { # in_root CMD...: run in the leg's root as root, clean environment
  chroot "$L_ROOT" /usr/bin/env -i "PATH=$L_PREFIX/bin:$L_PREFIX/sbin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin" \
    HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
}

root_apt() { in_root apt-get -o DPkg::Lock::Timeout=600 -q "$@" </dev/null; }

build_2511_from_source() { # only when the prebuilt tree does not fit (about 3.5 min on 2 cores)
  local tarball="$1"
  # python3: the git-archive source builds its HTML docs with a Python script
  root_apt install -y --no-install-recommends build-essential pkg-config python3 libmunge-dev libjson-c-dev \
    libhttp-parser-dev libyaml-dev libjwt-dev libssl-dev libmariadb-dev libreadline-dev libpam0g-dev \
    libdbus-1-dev liblz4-dev libhwloc-dev
  rm -rf "$L_ROOT/usr/src/slurm"
  mkdir -p "$L_ROOT/usr/src/slurm"
  tar -xzf "$tarball" -C "$L_ROOT/usr/src/slurm" --strip-components=1
  in_root sh -c "cd /usr/src/slurm && ./configure --prefix=$L_PREFIX --sysconfdir=$L_PREFIX/etc --with-jwt \
    --with-json --with-http-parser --with-yaml --with-lz4 --with-hwloc --with-munge --enable-slurmrestd \
    --disable-debug --with-systemdsystemunitdir=no && make -j\$(nproc) && make install" </dev/null
  rm -rf "$L_ROOT/usr/src/slurm"
}

build_root() { # build_root LEG: debootstrap + packages (+ the 25.11 tree); skipped when stamped
  leg_load "$1"
  if root_built; then
    return 0
  fi
  local t0 mirror tarball=""
  t0="$(now)"
  if [ "$L_LEG" = 2511 ]; then
    tarball="$(slurm_2511_tarball)" || die "no Slurm 25.11.7 tarball"
    local want
    case "$(basename "$tarball")" in
      "$SLURM_2511_PREBUILT") want="$SLURM_2511_PREBUILT_SHA256" ;;
      *) want="$SLURM_2511_SOURCE_SHA256" ;;
    esac
    [ "$(sha256sum "$tarball" | cut -d' ' -f1)" = "$want" ] || die "checksum mismatch for $(basename "$tarball")"
  fi
  mirror="$(debian_mirror)"
  log "building the $L_LEG root ($L_SUITE from $mirror)"
  stop_services "slurmrestd@$L_LEG" "slurmd@$L_LEG" "slurmctld@$L_LEG" "slurmdbd@$L_LEG" "munge@$L_LEG"
  remove_root "$L_ROOT"
  mkdir -p "$ROOTS_DIR"
  debootstrap --variant=minbase "$L_SUITE" "$L_ROOT" "$mirror" </dev/null ||
    die "debootstrap $L_SUITE failed"
  # package scripts must not start services: the root shares the host's network and ports
  printf '#!/bin/sh\nexit 101\n' >"$L_ROOT/usr/sbin/policy-rc.d"
  chmod 0755 "$L_ROOT/usr/sbin/policy-rc.d"
  cp /etc/hosts "$L_ROOT/etc/hosts"
  cp /etc/resolv.conf "$L_ROOT/etc/resolv.conf" 2>/dev/null || true
  mount_root "$L_ROOT"
  root_apt update
  # shellcheck disable=SC2086
  root_apt install -y --no-install-recommends $L_PACKAGES
  if [ "$L_LEG" = 2511 ]; then
    if [ "$(basename "$tarball")" = "$SLURM_2511_PREBUILT" ]; then
      tar -xzf "$tarball" -C "$L_ROOT"
    else
      build_2511_from_source "$tarball"
    fi
    # the prefix's compiled-in config dir points at /etc/slurm, like the Debian packages
    rm -rf "$L_ROOT$L_PREFIX/etc"
    ln -s /etc/slurm "$L_ROOT$L_PREFIX/etc"
    in_root getent group slurm >/dev/null || in_root groupadd -r -g 64030 slurm
    in_root getent passwd slurm >/dev/null ||
      in_root useradd -r -u 64030 -g slurm -M -d /nonexistent -s /usr/sbin/nologin slurm
    in_root ldconfig
  fi
  root_apt clean
  in_root "$L_PREFIX/sbin/slurmctld" -V | awk '{ print $NF }' >"$L_ROOT/.jgs-version"
  # a new root restarts job ids at 1: its slurmdbd database must start empty too (see start_slurmdbd)
  touch "$L_ROOT/.jgs-new-root"
  leg_recipe >"$L_STAMP"
  printf '[stack] phase %-12s %6ss\n' "root-$L_LEG" "$(elapsed "$t0")"
}

# build the missing roots in parallel (network- and dpkg-bound, so parallel pays off even on 2 cores)
build_roots() {
  local leg pids=() legs=() i rc=0
  for leg in "${LEGS[@]}"; do
    (leg_load "$leg" && root_built) && continue
    (build_root "$leg") >>"$LOG_DIR/root-$leg.log" 2>&1 &
    pids+=($!)
    legs+=("$leg")
    log "building root $leg in the background (log: $LOG_DIR/root-$leg.log)"
  done
  for i in "${!pids[@]}"; do
    if wait "${pids[$i]}"; then
      grep -h '^\[stack\] phase' "$LOG_DIR/root-${legs[$i]}.log" | tail -n1
    else
      tail_log "$LOG_DIR/root-${legs[$i]}.log" 30
      rc=1
    fi
  done
  [ "$rc" = 0 ] || die "building a Slurm root failed"
}

# ------------------------------------------------------------------------- Slurm legs: config

root_id() { # root_id USER [u|g]: numeric uid/gid of USER inside the current leg's root
  local field=3
  [ "${2:-u}" = g ] && field=4
  awk -F: -v u="$1" -v f="$field" '$1 == u { print $f; exit }' "$L_ROOT/etc/passwd"
}

root_owner() { echo "$(root_id "$1" u):$(root_id "$1" g)"; }

# the host's job users, with the same uid/gid, and slurmrestd's own user
root_users() {
  local user uid gid home
  for user in "${UNIX_USERS[@]}"; do
    uid="$(id -u "$user")" gid="$(id -g "$user")"
    home="$(getent passwd "$user" | cut -d: -f6)"
    if [ "$(root_id "$user" u)" != "$uid" ] || [ "$(root_id "$user" g)" != "$gid" ]; then
      in_root userdel "$user" >/dev/null 2>&1 || true
      in_root groupdel "$user" >/dev/null 2>&1 || true
      in_root groupadd -g "$gid" "$user"
      in_root useradd -M -u "$uid" -g "$gid" -d "$home" -s /bin/bash "$user"
    fi
  done
  [ -n "$(root_id slurmrestd)" ] || in_root useradd -r -M -d /nonexistent -s /usr/sbin/nologin -U slurmrestd
}

leg_write_config() {
  local slurm munge
  root_users
  ensure_profile_plugin
  slurm="$(root_owner slurm)" munge="$(root_owner munge)"
  [ "$slurm" != ":" ] || die "no slurm user in the $L_LEG root"
  cp /etc/hosts "$L_ROOT/etc/hosts"
  ensure_dir "$L_ETC" 0:0 0755
  ensure_dir "$L_ROOT/var/spool/slurmctld" "$slurm" 0755
  ensure_dir "$L_ROOT/var/spool/slurmd" 0:0 0755
  ensure_dir "$L_LOG" "$slurm" 0755
  ensure_dir "$L_PIDS" "$slurm" 0755
  ln -sfn "$L_LOG" "$LOG_DIR/slurm-$L_LEG"

  if [ ! -s "$L_JWT_KEY" ]; then # one per leg, created once, never replaced
    (umask 077 && dd if=/dev/urandom of="$L_JWT_KEY.tmp" bs=32 count=1 status=none)
    mv -n "$L_JWT_KEY.tmp" "$L_JWT_KEY"
    rm -f "$L_JWT_KEY.tmp"
    log "created the $L_LEG JWT key"
  fi
  chown "$slurm" "$L_JWT_KEY"
  chmod 0600 "$L_JWT_KEY"

  # the */none plugins are gone from 24.11 on: leave those settings unset there
  local legacy="" cgroup="CgroupPlugin=disabled"
  if [ "$L_LEG" = 2205 ]; then
    legacy=$'TaskPlugin=task/none\nSwitchType=switch/none\nJobCompType=jobcomp/none'
    cgroup="# empty: proctrack/linuxproc and task/none need no cgroups"
  fi
  write_if_changed "$L_ETC/slurm.conf" 0:0 0644 <<EOF
# Written by jobbergate-sync tests/integration/stack.sh (leg $L_LEG) -- changes are overwritten.
ClusterName=$L_CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$L_CTLD_PORT
SlurmdPort=$L_SLURMD_PORT
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=/etc/slurm/jwt_hs256.key
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
$legacy
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=30
# Room for bench/cluster_size_benchmark.py's 10,000 held jobs of another user beside the tests' own.
MaxJobCount=20000
KillWait=5
MailProg=/bin/true
InactiveLimit=0
Waittime=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$L_DBD_PORT
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
# Every job's task samples go to InfluxDB every 5 s (acct_gather.conf: ProfileInfluxDBDefault=Task).
JobAcctGatherFrequency=task=5
AcctGatherProfileType=acct_gather_profile/influxdb
SlurmdParameters=config_overrides
# A feature, a GPU (/dev/null stands for its device), a license and scratch disk: what the option
# matrix asks for, so that Slurm accepts each option and its job record shows it.
GresTypes=gpu
Licenses=jgslicense:4
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=8 RealMemory=1000 TmpDisk=1000 Features=jgsfeature Gres=gpu:1 State=UNKNOWN
# A node that never comes (FUTURE), in no partition: something for --exclude to name.
NodeName=jgsspare NodeAddr=127.0.0.1 CPUs=1 State=FUTURE
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  write_if_changed "$L_ETC/cgroup.conf" 0:0 0644 <<<"$cgroup"
  write_if_changed "$L_ETC/gres.conf" 0:0 0644 <<<"NodeName=$NODE Name=gpu File=/dev/null"
  write_if_changed "$L_ETC/acct_gather.conf" 0:0 0644 <<EOF
# Written by jobbergate-sync tests/integration/stack.sh (leg $L_LEG) -- changes are overwritten.
ProfileInfluxDBHost=http://127.0.0.1:$INFLUXDB_PORT
ProfileInfluxDBDatabase=$L_INFLUXDB_DB
ProfileInfluxDBRTPolicy=autogen
ProfileInfluxDBDefault=Task
EOF
  write_if_changed "$L_ETC/slurmdbd.conf" "$slurm" 0600 <<EOF
# Written by jobbergate-sync tests/integration/stack.sh (leg $L_LEG) -- changes are overwritten.
AuthType=auth/munge
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=/etc/slurm/jwt_hs256.key
DbdHost=$NODE
DbdAddr=127.0.0.1
DbdPort=$L_DBD_PORT
SlurmUser=slurm
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurm/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MARIADB_PORT
StorageUser=slurm
StoragePass=$SLURMDB_PSWD
StorageLoc=$L_DB
EOF
  L_SLURM_HASH="$(file_sha "$L_ETC/slurm.conf" "$L_ETC/cgroup.conf" "$L_ETC/gres.conf" "$L_ETC/acct_gather.conf" "$L_JWT_KEY")"
  L_DBD_HASH="$(file_sha "$L_ETC/slurmdbd.conf" "$L_JWT_KEY")"

  # munge: its own key per root
  if [ ! -s "$L_ROOT/etc/munge/munge.key" ]; then
    mkdir -p "$L_ROOT/etc/munge"
    (umask 077 && dd if=/dev/urandom of="$L_ROOT/etc/munge/munge.key" bs=1024 count=1 status=none)
  fi
  chown "$munge" "$L_ROOT/etc/munge" "$L_ROOT/etc/munge/munge.key"
  chmod 0700 "$L_ROOT/etc/munge"
  chmod 0400 "$L_ROOT/etc/munge/munge.key"
  ensure_dir "$L_ROOT/run/munge" "$munge" 0755
  ensure_dir "$L_ROOT/var/lib/munge" "$munge" 0700
  ensure_dir "$L_ROOT/var/log/munge" "$munge" 0700
}

# ------------------------------------------------------------------------- Slurm legs: daemons

munge_works() { in_root sh -c 'munge -n | unmunge' </dev/null >/dev/null 2>&1; }

start_munge() {
  local svc="munge@$L_LEG"
  is_running "$svc" && return 0
  rm -f "$L_ROOT/run/munge/munged.pid"
  (cd / && chroot --userspec="$(root_owner munge)" "$L_ROOT" /usr/sbin/munged --force \
    </dev/null >>"$L_ROOT/var/log/munge/munged.out" 2>&1) ||
    { tail_log "$L_ROOT/var/log/munge/munged.log"; die "munged ($L_LEG) failed to start"; }
  record_pid_from_file "$svc" "$L_ROOT/run/munge/munged.pid" 10 || die "munged ($L_LEG) did not start"
  wait_until 10 "munge ($L_LEG)" munge_works || die "munge -n | unmunge fails in the $L_LEG root"
  log "started munged $L_LEG (pid $(service_pid "$svc"))"
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
    rm -rf "$MARIADB_DIR/data" "$MARIADB_DIR"/accounting*.stamp
    ensure_dir "$MARIADB_DIR/data" mysql:mysql 0750
    mariadb-install-db --defaults-file="$MARIADB_CNF" --user=mysql --datadir="$MARIADB_DIR/data" \
      --auth-root-authentication-method=socket --skip-test-db </dev/null >>"$LOG_DIR/mariadb/install.log" 2>&1 ||
      { tail_log "$LOG_DIR/mariadb/install.log"; die "mariadb-install-db failed"; }
  fi
  check_port_free mariadb "$MARIADB_PORT"
  launch mariadb "$LOG_DIR/mariadb/mariadbd.out" /usr/sbin/mariadbd --defaults-file="$MARIADB_CNF"
  wait_until 60 "mariadb" mariadb_sql -e 'SELECT 1' ||
    { tail_log "$LOG_DIR/mariadb/mariadb.log"; die "MariaDB did not come up"; }
  # one account for every leg's slurmdbd; each leg has its own database (slurm_acct_<leg>)
  mariadb_sql <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$SLURMDB_PSWD';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$SLURMDB_PSWD';
GRANT ALL ON \`slurm\_acct\_%\`.* TO 'slurm'@'localhost';
GRANT ALL ON \`slurm\_acct\_%\`.* TO 'slurm'@'127.0.0.1';
EOF
  log "started MariaDB (pid $(service_pid mariadb))"
}

sacctmgr_answers() { in_root sacctmgr -n -P show cluster format=cluster </dev/null >/dev/null 2>&1; }

# Start a forking Slurm daemon (slurmdbd, slurmctld, slurmd) in the leg's root, record its PID and
# the config hash it runs with. Usage: start_slurm_daemon NAME PORT HASH
start_slurm_daemon() {
  local name=$1 port=$2 hash=$3 svc="$1@$L_LEG"
  check_port_free "$svc" "$port"
  rm -f "$L_PIDS/$name.pid"
  (cd / && in_root "$L_PREFIX/sbin/$name" </dev/null >>"$L_LOG/$name.out" 2>&1) ||
    { tail_log "$L_LOG/$name.log"; die "$svc failed to start"; }
  record_pid_from_file "$svc" "$L_PIDS/$name.pid" 20 ||
    { tail_log "$L_LOG/$name.log"; die "$svc did not start"; }
  echo "$hash" >"$RUN_DIR/$svc.hash"
}

running_with() { is_running "$1" && [ "$(cat "$RUN_DIR/$1.hash" 2>/dev/null)" = "$2" ]; }

start_slurmdbd() {
  local svc="slurmdbd@$L_LEG"
  running_with "$svc" "$L_DBD_HASH" && return 0
  if is_running "$svc"; then
    log "slurmdbd.conf ($L_LEG) changed: restarting slurmdbd"
    stop_services "$svc"
  fi
  if [ -f "$L_ROOT/.jgs-new-root" ]; then # old records would collide with the new root's job ids
    mariadb_sql -e "DROP DATABASE IF EXISTS \`$L_DB\`"
    rm -f "$MARIADB_DIR/accounting-$L_LEG.stamp" "$L_ROOT/.jgs-new-root"
  fi
  # created beforehand: Debian 13's MariaDB client breaks on slurmdbd's reconnect after it creates it (error 5027)
  mariadb_sql -e "CREATE DATABASE IF NOT EXISTS \`$L_DB\`"
  start_slurm_daemon slurmdbd "$L_DBD_PORT" "$L_DBD_HASH"
  wait_until 60 "slurmdbd $L_LEG" sacctmgr_answers ||
    { tail_log "$L_LOG/slurmdbd.log"; die "slurmdbd $L_LEG does not answer sacctmgr"; }
  log "started slurmdbd $L_LEG (pid $(service_pid "$svc"))"
}

register_accounting() {
  local stamp="$MARIADB_DIR/accounting-$L_LEG.stamp" want out user
  want="$L_CLUSTER/$ACCOUNT/root,${UNIX_USERS[*]}"
  [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && return 0
  # capture first: `sacctmgr | grep -q` under pipefail fails on SIGPIPE
  out="$(in_root sacctmgr -n -P show cluster format=cluster </dev/null)"
  grep -qx "$L_CLUSTER" <<<"$out" || in_root sacctmgr -i add cluster "$L_CLUSTER" </dev/null >/dev/null
  out="$(in_root sacctmgr -n -P show account format=account </dev/null)"
  grep -qx "$ACCOUNT" <<<"$out" ||
    in_root sacctmgr -i add account "$ACCOUNT" Cluster="$L_CLUSTER" Description=jobbergate-tests Organization=jobbergate </dev/null >/dev/null
  out="$(in_root sacctmgr -n -P show assoc where cluster="$L_CLUSTER" format=user,account </dev/null)"
  for user in root "${UNIX_USERS[@]}"; do
    grep -qx "$user|$ACCOUNT" <<<"$out" ||
      in_root sacctmgr -i add user "$user" Account="$ACCOUNT" Cluster="$L_CLUSTER" </dev/null >/dev/null
  done
  echo "$want" >"$stamp"
  log "registered cluster $L_CLUSTER, account $ACCOUNT, users root ${UNIX_USERS[*]} in slurmdbd $L_LEG"
}

slurm_node_state() { in_root sinfo -h -n "$NODE" -o %T </dev/null 2>/dev/null | head -n1; }
node_ready() { case "$(slurm_node_state)" in idle | mixed | allocated | completing) return 0 ;; *) return 1 ;; esac; }
ctld_answers() { in_root scontrol ping </dev/null; }

start_slurmctld() {
  local svc="slurmctld@$L_LEG"
  if is_running "$svc"; then
    running_with "$svc" "$L_SLURM_HASH" && return 0
    log "slurm.conf ($L_LEG) changed: restarting slurmctld, slurmd, slurmrestd"
    stop_services "slurmrestd@$L_LEG" "slurmd@$L_LEG" "$svc"
  fi
  start_slurm_daemon slurmctld "$L_CTLD_PORT" "$L_SLURM_HASH"
  wait_until 30 "slurmctld $L_LEG" ctld_answers ||
    { tail_log "$L_LOG/slurmctld.log"; die "slurmctld $L_LEG does not answer"; }
  log "started slurmctld $L_LEG (pid $(service_pid "$svc"))"
}

start_slurmd() {
  local svc="slurmd@$L_LEG"
  if ! running_with "$svc" "$L_SLURM_HASH"; then
    is_running "$svc" && stop_services "$svc"
    start_slurm_daemon slurmd "$L_SLURMD_PORT" "$L_SLURM_HASH"
    log "started slurmd $L_LEG (pid $(service_pid "$svc"))"
  fi
  if ! wait_until 15 "node $L_LEG" node_ready; then
    log "node $NODE ($L_LEG) is '$(slurm_node_state)': resuming it"
    in_root scontrol update nodename="$NODE" state=resume </dev/null >/dev/null 2>&1 || true
    wait_until 30 "node $L_LEG" node_ready ||
      { tail_log "$L_LOG/slurmd.log"; die "node $NODE ($L_LEG) not idle (state '$(slurm_node_state)')"; }
  fi
}

slurmrestd_up() { [ "$(http_code "http://127.0.0.1:$L_REST_PORT/openapi/v3")" = 401 ]; }

start_slurmrestd() {
  local svc="slurmrestd@$L_LEG" plugins
  running_with "$svc" "$L_SLURM_HASH" && return 0
  is_running "$svc" && stop_services "$svc"
  check_port_free "$svc" "$L_REST_PORT"
  if [ "$L_LEG" = 2205 ]; then
    plugins="-s openapi/v0.0.38,openapi/dbv0.0.38"
  else # 24.11 on: one plugin per daemon, the versions are data_parser plugins
    plugins="-s openapi/slurmctld,openapi/slurmdbd -d ${L_APIS}"
  fi
  # not root, not SlurmUser: its own user. chroot execs without forking, so $! is slurmrestd.
  # From / : slurmrestd's cwd is the default working directory of jobs submitted without one.
  # shellcheck disable=SC2086
  launch "$svc" "$L_LOG/slurmrestd.log" chroot --userspec="$(root_owner slurmrestd)" "$L_ROOT" \
    /usr/bin/env -i SLURM_JWT=daemon PATH=/usr/bin:/bin LANG=C.UTF-8 \
    "$L_PREFIX/sbin/slurmrestd" -a rest_auth/jwt $plugins "127.0.0.1:$L_REST_PORT"
  echo "$L_SLURM_HASH" >"$RUN_DIR/$svc.hash"
  wait_until 20 "slurmrestd $L_LEG" slurmrestd_up ||
    { tail_log "$L_LOG/slurmrestd.log"; die "slurmrestd $L_LEG did not come up on port $L_REST_PORT"; }
  log "started slurmrestd $L_LEG (pid $(service_pid "$svc"))"
}

check_slurmrestd_auth() { # a real JWT round trip: ping as the SlurmUser
  local token body
  token="$(in_root scontrol token username=slurm lifespan=60 </dev/null | sed -n 's/^SLURM_JWT=//p')"
  body="$(curl -s --max-time 5 -H "X-SLURM-USER-NAME: slurm" -H "X-SLURM-USER-TOKEN: $token" \
    "http://127.0.0.1:$L_REST_PORT/slurm/${L_APIS%%,*}/ping" || true)"
  [[ "$(tr -d ' \n\t' <<<"$body")" == *'"errors":[]'* ]] ||
    { echo "$body" | head -c 500 >&2; die "slurmrestd $L_LEG JWT ping failed"; }
}

leg_up() { # leg_up LEG: config, mounts and daemons of one leg (MariaDB must be up)
  local t0
  t0="$(now)"
  leg_load "$1"
  root_built || die "the $L_LEG root is not built"
  mount_root "$L_ROOT"
  leg_write_config
  start_munge
  start_slurmdbd
  register_accounting
  start_slurmctld
  start_slurmd
  start_slurmrestd
  check_slurmrestd_auth
  printf '[stack] phase %-12s %6ss\n' "slurm-$L_LEG" "$(elapsed "$t0")"
}

slurm_up() {
  ensure_users
  start_mariadb
  local leg pids=() i rc=0
  for leg in "${LEGS[@]}"; do # independent legs: start them side by side
    (leg_up "$leg") &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || rc=1
  done
  [ "$rc" = 0 ] || die "a Slurm leg did not come up"
}

# ---------------------------------------------------------------------------------- API side

# the major version Debian's `postgresql` package points at (15 on Debian 12, 17 on Debian 13)
pg_major() {
  local major
  major="$(dpkg-query -W -f='${Depends}' postgresql 2>/dev/null | grep -o 'postgresql-[0-9]*' | head -n1 | cut -d- -f2)"
  [ -n "$major" ] || major="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -n | tail -n1)"
  [ -n "$major" ] || die "no PostgreSQL server found (apt-get install postgresql)"
  echo "$major"
}
pg_bin() { echo "/usr/lib/postgresql/$(pg_major)/bin/$1"; }
psql_admin() { (cd / && runuser -u postgres -- "$(pg_bin psql)" -h "$PG_SOCK" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qtAX "$@"); }

start_postgres() {
  ensure_dir "$STACK_DIR/postgres" postgres:postgres 0755
  ensure_dir "$PG_SOCK" postgres:postgres 0755
  ensure_dir "$LOG_DIR/postgres" postgres:postgres 0755
  if [ -s "$PGDATA/PG_VERSION" ] && [ "$(cat "$PGDATA/PG_VERSION")" != "$(pg_major)" ]; then
    stop_services postgres # a cluster of another major (the host was upgraded): disposable, start over
    log "the PostgreSQL cluster is version $(cat "$PGDATA/PG_VERSION"), the server $(pg_major): recreating it"
    rm -rf "$PGDATA"
  fi
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

api_env() { # the API's settings (pydantic-settings reads them from the environment), for env -i
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
    --host 127.0.0.1 --port "$API_PORT" --workers "$API_WORKERS" --no-server-header </dev/null >>"$LOG_DIR/api.log" 2>&1) &
  record_pid api "$!"
  wait_until 60 "api" http_is "http://127.0.0.1:$API_PORT/jobbergate/health" 204 ||
    { tail_log "$LOG_DIR/api.log" 40; die "jobbergate-api did not become healthy"; }
  log "started jobbergate-api (pid $(service_pid api), $API_WORKERS uvicorn worker(s))"
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


# ------------------------------------------------------------------------------------- OpenLDAP

# make_ca DIR NAME: a self-signed CA (NAME.pem, NAME.key) with the extensions strict X.509
# verification (Python 3.13's default) wants
make_ca() {
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=jobbergate-sync test $2" \
    -keyout "$1/$2.key" -out "$1/$2.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" 2>>"$LOG_DIR/ldap.log"
}

ldap_tls() { # at first up: the test CA, a server certificate it signs for localhost, and another CA
  local tls="$LDAP_DIR/tls"
  [ -s "$tls/server.pem" ] && [ -s "$tls/other-ca.pem" ] && return 0
  ensure_dir "$tls" root:root 0755
  make_ca "$tls" ca
  make_ca "$tls" other-ca
  openssl req -new -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$tls/server.key" \
    -out "$tls/server.csr" 2>>"$LOG_DIR/ldap.log"
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid:always" >"$tls/server.ext"
  openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial -days 3650 \
    -extfile "$tls/server.ext" -out "$tls/server.pem" 2>>"$LOG_DIR/ldap.log"
  chmod 0600 "$tls"/*.key
  rm -f "$tls/server.csr" "$tls/ca.srl"
  log "made the LDAP test CA and server certificate in $tls"
}

ldap_conf() { # slapd.conf: one mdb database; only the reader (and the rootdn) reads entries
  cat <<EOF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile $RUN_DIR/slapd.pid
TLSCACertificateFile $LDAP_DIR/tls/ca.pem
TLSCertificateFile $LDAP_DIR/tls/server.pem
TLSCertificateKeyFile $LDAP_DIR/tls/server.key
database mdb
maxsize 67108864
suffix "$LDAP_BASE_DN"
rootdn "cn=admin,$LDAP_BASE_DN"
directory $LDAP_DIR/data
access to attrs=userPassword by anonymous auth by * none
access to * by dn.exact="$LDAP_READER_DN" read by * none
EOF
}

ldap_entries() { # alice and bob; ghost (no local account); one mail on two entries; the reader
  local user
  cat <<EOF
dn: $LDAP_BASE_DN
objectClass: dcObject
objectClass: organization
dc: jobbergate-sync
o: jobbergate-sync test directory

dn: ou=people,$LDAP_BASE_DN
objectClass: organizationalUnit
ou: people

dn: ou=services,$LDAP_BASE_DN
objectClass: organizationalUnit
ou: services

dn: $LDAP_READER_DN
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: reader
userPassword: $(slappasswd -s "$LDAP_READER_PSWD")
EOF
  for user in alice:alice@example.com bob:bob@example.com ghost:ghost@example.com \
    admin-one:admin@example.com admin-two:admin@example.com; do
    cat <<EOF

dn: uid=${user%%:*},ou=people,$LDAP_BASE_DN
objectClass: inetOrgPerson
uid: ${user%%:*}
cn: ${user%%:*}
sn: ${user%%:*}
mail: ${user#*:}
EOF
  done
}

ldap_answers() { # (by address: libldap checks the certificate against this host's name for "localhost")
  LDAPTLS_CACERT="$LDAP_DIR/tls/ca.pem" ldapwhoami -x -o nettimeout=2 -H "ldaps://127.0.0.1:$LDAPS_PORT" \
    -D "$LDAP_READER_DN" -w "$LDAP_READER_PSWD" </dev/null
}

start_ldap() {
  is_running ldap && return 0
  check_port_free ldap "$LDAP_PORT"
  check_port_free ldap "$LDAPS_PORT"
  ensure_dir "$LDAP_DIR" root:root 0700
  ldap_tls
  ldap_conf | write_if_changed "$LDAP_DIR/slapd.conf" root:root 0600
  local stamp
  stamp="$( (cat "$LDAP_DIR/slapd.conf" && declare -f ldap_entries) | sha256sum | cut -c1-16)"
  if [ "$(cat "$LDAP_DIR/data.stamp" 2>/dev/null)" != "$stamp" ]; then # first up, or new entries
    rm -rf "$LDAP_DIR/data"
    ensure_dir "$LDAP_DIR/data" root:root 0700
    ldap_entries | slapadd -q -f "$LDAP_DIR/slapd.conf" >>"$LOG_DIR/ldap.log" 2>&1 ||
      { tail_log "$LOG_DIR/ldap.log"; die "slapadd failed"; }
    echo "$stamp" >"$LDAP_DIR/data.stamp"
    log "loaded the LDAP test entries into $LDAP_DIR/data"
  fi
  # -d: stays in the foreground (launch records its PID); 256 logs each connection and operation
  launch ldap "$LOG_DIR/ldap.log" /usr/sbin/slapd -d 256 -f "$LDAP_DIR/slapd.conf" \
    -h "ldap://localhost:$LDAP_PORT/ ldaps://localhost:$LDAPS_PORT/"
  wait_until 20 "slapd" ldap_answers || { tail_log "$LOG_DIR/ldap.log"; die "slapd did not answer over LDAPS"; }
  log "started slapd (pid $(service_pid ldap))"
}

# ------------------------------------------------------------------- InfluxDB and the profile plugin

influxdb_query() { curl -sf --max-time 5 -XPOST "http://127.0.0.1:$INFLUXDB_PORT/query" --data-urlencode "q=$1"; }

start_influxdb() {
  local dir="$STACK_DIR/influxdb" leg
  if ! is_running influxdb; then
    check_port_free influxdb "$INFLUXDB_PORT"
    ensure_dir "$dir" root:root 0700
    write_if_changed "$dir/influxdb.conf" root:root 0600 <<EOF
# Written by jobbergate-sync tests/integration/stack.sh -- changes are overwritten.
reporting-disabled = true
bind-address = "127.0.0.1:$((INFLUXDB_PORT + 2))"
[meta]
  dir = "$dir/meta"
[data]
  dir = "$dir/data"
  wal-dir = "$dir/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:$INFLUXDB_PORT"
  log-enabled = false
[monitor]
  store-enabled = false
EOF
    launch influxdb "$LOG_DIR/influxdb.log" /usr/bin/influxd -config "$dir/influxdb.conf"
    wait_until 30 "influxdb" http_is "http://127.0.0.1:$INFLUXDB_PORT/ping" 204 ||
      { tail_log "$LOG_DIR/influxdb.log"; die "influxdb did not answer on port $INFLUXDB_PORT"; }
    log "started influxdb (pid $(service_pid influxdb))"
  fi
  for leg in "${ALL_LEGS[@]}"; do # one database per leg: each leg numbers its jobs from 1
    influxdb_query "CREATE DATABASE slurm_$leg" >/dev/null || die "influxdb: cannot create database slurm_$leg"
  done
}

# Slurm's acct_gather_profile/influxdb plugin in the leg's root, added to an existing root (the
# recipe stays the same): Debian's slurm-wlm-influxdb-plugin, or libcurl for the 25.11 tree's own.
ensure_profile_plugin() {
  local package
  if [ "$L_LEG" = 2511 ]; then
    package=libcurl4t64
    in_root ldd "$L_PREFIX/lib/slurm/acct_gather_profile_influxdb.so" 2>/dev/null | grep -q 'libcurl.*not found' || return 0
  else
    package=slurm-wlm-influxdb-plugin
    [ -z "$(find "$L_ROOT/usr/lib" -name acct_gather_profile_influxdb.so -print -quit 2>/dev/null)" ] || return 0
  fi
  log "installing $package into the $L_LEG root (Slurm's InfluxDB profile plugin)"
  {
    root_apt install -y --no-install-recommends "$package" ||
      { root_apt update && root_apt install -y --no-install-recommends "$package"; }
  } >>"$LOG_DIR/root-$L_LEG.log" 2>&1 || { tail_log "$LOG_DIR/root-$L_LEG.log"; die "cannot install $package into the $L_LEG root"; }
}

# ------------------------------------------------------------------------------------ stack.env

leg_env() { # the stack.env lines of the current leg
  local p="JGS_SLURM_${L_LEG}"
  cat <<EOF
${p}_URL=http://127.0.0.1:$L_REST_PORT
${p}_JWT_KEY=$L_JWT_KEY
${p}_ROOT=$L_ROOT
${p}_API_VERSIONS=$L_APIS
${p}_CLUSTER=$L_CLUSTER
${p}_NODE=$NODE
${p}_PARTITION=$PARTITION
${p}_VERSION=$(cat "$L_ROOT/.jgs-version")
${p}_INFLUXDB_DATABASE=$L_INFLUXDB_DB
EOF
}

write_stack_env() {
  local users leg legs_line
  users="$("$API_VENV/bin/python" -c '
import json, sys
realm = json.load(open(sys.argv[1]))
print(",".join(":".join([n, u["password"], u.get("email", "")]) for n, u in realm["users"].items()))
' "$HERE/oidc_realm.json")"
  local oidc="http://127.0.0.1:$OIDC_PORT/realms/$REALM"
  legs_line="$(
    IFS=,
    echo "${LEGS[*]}"
  )"
  leg_load "$DEFAULT_LEG"
  {
    cat <<EOF
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
JGS_DEFAULT_LEG=$DEFAULT_LEG
JGS_SLURM_LEGS=$legs_line
JGS_SLURMRESTD_URL=http://127.0.0.1:$L_REST_PORT
JGS_SLURMRESTD_VERSION=${L_APIS##*,}
JGS_SLURM_JWT_KEY=$L_JWT_KEY
JGS_SLURM_CLUSTER=$L_CLUSTER
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
JGS_LDAP_URL=ldaps://localhost:$LDAPS_PORT
JGS_LDAP_STARTTLS_URL=ldap://localhost:$LDAP_PORT
JGS_LDAP_CA_FILE=$LDAP_DIR/tls/ca.pem
JGS_LDAP_OTHER_CA_FILE=$LDAP_DIR/tls/other-ca.pem
JGS_LDAP_BASE_DN=$LDAP_BASE_DN
JGS_LDAP_BIND_DN=$LDAP_READER_DN
JGS_LDAP_BIND_PASSWORD=$LDAP_READER_PSWD
JGS_INFLUXDB_URL=http://127.0.0.1:$INFLUXDB_PORT
EOF
    for leg in "${LEGS[@]}"; do
      leg_load "$leg"
      leg_env
    done
  } | write_if_changed "$STACK_ENV" root:root 0644
}

# -------------------------------------------------------------------------------------- commands

cmd_up() {
  local t0 venv_pid moto_pid
  t0="$(now)"
  need_root
  prepare_dirs
  select_legs
  find_python312 >/dev/null || die "Python >= 3.12 not found (install pyenv 3.12.x or set JGS_PYTHON)"
  # pip installs run in the background while apt, the roots and Slurm come up
  (python_envs) >>"$LOG_DIR/venv-api.log" 2>&1 &
  venv_pid=$!
  (moto_env) >>"$LOG_DIR/venv-moto.log" 2>&1 &
  moto_pid=$!
  timed packages ensure_packages
  timed influxdb start_influxdb
  timed roots build_roots
  timed slurm slurm_up
  local t1
  t1="$(now)"
  wait "$venv_pid" || { tail_log "$LOG_DIR/venv-api.log" 30; die "API venv / sdist setup failed"; }
  wait "$moto_pid" || { tail_log "$LOG_DIR/venv-moto.log" 30; die "moto venv setup failed"; }
  printf '[stack] phase %-12s %6ss (waited after slurm; ran in parallel)\n' venvs "$(elapsed "$t1")"
  timed api api_up
  timed ldap start_ldap
  write_stack_env
  printf '[stack] up: legs %s (default %s), all services running in %ss; env: %s\n' \
    "${LEGS[*]}" "$DEFAULT_LEG" "$(elapsed "$t0")" "$STACK_ENV"
}

leg_services() { # leg_services SERVICE...: SERVICE@LEG for every leg
  local svc leg
  for svc in "$@"; do
    for leg in "${ALL_LEGS[@]}"; do echo "$svc@$leg"; done
  done
}

cmd_down() {
  local t0 leg
  t0="$(now)"
  need_root
  [ -d "$RUN_DIR" ] || { log "nothing to stop"; return 0; }
  # shellcheck disable=SC2046
  {
    stop_services api oidc ldap influxdb $(leg_services slurmrestd)
    stop_services s3 postgres $(leg_services slurmd slurmctld)
    stop_services $(leg_services slurmdbd)
    stop_services mariadb $(leg_services munge)
  }
  for leg in "${ALL_LEGS[@]}"; do # every leg, whatever JGS_SLURM_LEGS says now
    [ -d "$ROOTS_DIR/$leg" ] && umount_root "$ROOTS_DIR/$leg"
  done
  rm -f "$STACK_ENV"
  printf '[stack] down in %ss (data kept in %s)\n' "$(elapsed "$t0")" "$STACK_DIR"
}

cmd_status() {
  local name pid all=0 leg
  local names=("${HOST_SERVICES[@]}")
  for leg in "${ALL_LEGS[@]}"; do
    [ -f "$ROOTS_DIR/$leg/.jgs-root" ] || continue
    for name in "${LEG_SERVICES[@]}"; do names+=("$name@$leg"); done
  done
  for name in "${names[@]}"; do
    if pid="$(service_pid "$name")"; then
      printf '%-16s running  pid %s\n' "$name" "$pid"
    else
      printf '%-16s STOPPED\n' "$name"
      all=3
    fi
  done
  printf '%-16s %s\n' "api-health" "$(http_code "http://127.0.0.1:$API_PORT/jobbergate/health")"
  printf '%-16s %s\n' "oidc" "$(http_code "http://127.0.0.1:$OIDC_PORT/realms/$REALM/.well-known/openid-configuration")"
  for leg in "${ALL_LEGS[@]}"; do
    [ -f "$ROOTS_DIR/$leg/.jgs-root" ] || continue
    leg_load "$leg"
    printf '%-16s %s\n' "slurmrestd@$leg" "$(http_code "http://127.0.0.1:$L_REST_PORT/openapi/v3")"
    printf '%-16s %s\n' "node@$leg" "$(slurm_node_state || true)"
  done
  [ -f "$STACK_ENV" ] && printf '%-16s %s\n' "env" "$STACK_ENV"
  return "$all"
}

# SERVICE[@LEG] -> SERVICE@LEG for the per-leg services (default leg), unchanged for the others
qualify() {
  local base="${1%@*}"
  pid_pattern "$1" >/dev/null
  if [[ " ${LEG_SERVICES[*]} " == *" $base "* ]]; then
    [[ "$1" == *@* ]] && echo "$1" || echo "$1@$DEFAULT_LEG"
  else
    [[ "$1" != *@* ]] || die "$base is not a per-leg service"
    echo "$1"
  fi
}

start_one() {
  local svc="$1" base="${1%@*}"
  if [[ "$svc" == *@* ]]; then
    leg_load "${svc#*@}"
    root_built || die "the ${svc#*@} root is not built: run stack.sh up"
    mount_root "$L_ROOT"
    leg_write_config
  fi
  case "$base" in
    munge) start_munge ;;
    slurmdbd) start_slurmdbd ;;
    slurmctld) start_slurmctld ;;
    slurmd) start_slurmd ;;
    slurmrestd) start_slurmrestd ;;
    mariadb) start_mariadb ;;
    postgres) start_postgres ;;
    s3) start_s3 && check_s3_consistency ;;
    oidc) start_oidc ;;
    api) start_api ;;
    ldap) start_ldap ;;
    influxdb) start_influxdb ;;
  esac
}

cmd_slurm() { # cmd_slurm LEG CMD [ARG...]
  [ $# -ge 2 ] || die "usage: stack.sh slurm LEG CMD [ARG...]"
  need_root
  leg_load "$1"
  shift
  [ -f "$L_STAMP" ] || die "the $L_LEG root is not built: run stack.sh up"
  mountpoint -q "$L_ROOT/proc" || die "the $L_LEG root is not mounted: run stack.sh up"
  exec chroot "$L_ROOT" /usr/bin/env -i "PATH=$L_PREFIX/bin:$L_PREFIX/sbin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin" \
    HOME=/root LANG=C.UTF-8 USER=root LOGNAME=root "$@"
}

cmd_reset() {
  need_root
  is_running postgres || die "postgres is not running: run stack.sh up first"
  local user leg
  for leg in "${ALL_LEGS[@]}"; do
    is_running "slurmctld@$leg" || continue
    leg_load "$leg"
    for user in "${UNIX_USERS[@]}"; do
      in_root scancel --user="$user" </dev/null 2>/dev/null || true
    done
  done
  reset_api_data
  start_api
  check_api_auth
}

# A daemon keeps every descriptor it is started with. `flock LOCK stack.sh ...` hands its lock file
# down, and a daemon holding it would hold that lock for as long as it runs: close what the caller
# passed (all but stdin/stdout/stderr and bash's own script descriptor) before starting anything.
close_inherited_fds() {
  local fd
  for fd in $(ls /proc/$$/fd); do
    case "$fd" in 0 | 1 | 2 | 255) ;; *) eval "exec $fd>&-" 2>/dev/null || true ;; esac
  done
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
      close_inherited_fds
      ;;
  esac
  case "$cmd" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cat "$STACK_ENV" ;;
    reset) cmd_reset ;;
    slurm)
      shift
      cmd_slurm "$@"
      ;;
    stop | start | restart)
      [ $# -eq 2 ] || die "usage: stack.sh $cmd SERVICE[@LEG]"
      need_root
      local svc
      svc="$(qualify "$2")" || exit 2
      [ "$cmd" = start ] || stop_services "$svc"
      [ "$cmd" = stop ] || { prepare_dirs && start_one "$svc"; }
      ;;
    *)
      sed -n '2,38p' "$SELF" | sed 's/^# \{0,1\}//'
      [ -z "$cmd" ] || [ "$cmd" = -h ] || [ "$cmd" = --help ] || exit 2
      ;;
  esac
}

main "$@"
