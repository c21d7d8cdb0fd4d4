#!/usr/bin/env bash
# Try jobbergate-sync without a Jobbergate or a Slurm of your own: the project's local stack (one
# real Slurm with slurmrestd in a Debian root, a real jobbergate-api, a test OIDC issuer; see
# stack.sh) and a configuration ready for it. As root on Debian 12 or 13.
#
#   try-it.sh up     install the tool into .venv, bring the stack up with one Slurm, write try-it/jobbergate-sync.ini
#   try-it.sh run    create three demo submissions as alice through the API, run passes, show where to look
#   try-it.sh down   stop the stack (its data stays in /var/tmp/jobbergate-sync-stack)
#
# The Slurm is 25.11 when its tarballs are at hand (see stack.sh), else 24.11 (Debian 13 packages);
# JGS_TRY_LEG=2205|2411|2511 picks one.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=tests/integration
DEMO_DIR="$PWD/try-it"

leg() {
  if [ -n "${JGS_TRY_LEG:-}" ]; then echo "$JGS_TRY_LEG"; return; fi
  local dir="${JGS_SLURM_2511_DIR:-$(cd .. && pwd)/shared/slurm}"
  if ls "$dir"/slurm-25.11.7*.tar.gz >/dev/null 2>&1; then echo 2511; else echo 2411; fi
}

case "${1:-}" in
  up)
    python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e .
    chosen="$(leg)"
    JGS_SLURM_LEGS="$chosen" JGS_DEFAULT_LEG="$chosen" bash "$HERE/stack.sh" up
    config="$(.venv/bin/python "$HERE/try_it.py" config "$DEMO_DIR")"
    .venv/bin/jobbergate-sync check --config "$config" --email alice@example.com
    echo
    echo "The stack is up with Slurm leg $chosen and $config is ready. Next: bash $HERE/try-it.sh run"
    ;;
  run)
    config="$DEMO_DIR/jobbergate-sync.ini"
    [ -f "$config" ] || { echo "try-it: no $config yet: run 'bash $HERE/try-it.sh up' first" >&2; exit 78; }
    .venv/bin/python "$HERE/try_it.py" seed "$DEMO_DIR"
    for pass in 1 2 3; do
      echo
      echo "--- pass $pass: .venv/bin/jobbergate-sync --once --config $config --log-format text"
      .venv/bin/jobbergate-sync --once --config "$config" --log-format text || true
      sleep 5
    done
    .venv/bin/python "$HERE/try_it.py" show "$DEMO_DIR"
    echo
    echo "Run more passes with: .venv/bin/jobbergate-sync --once --config $config"
    echo "Tear down with:       bash $HERE/try-it.sh down"
    ;;
  down)
    bash "$HERE/stack.sh" down
    ;;
  *)
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    [ -z "${1:-}" ] || [ "$1" = -h ] || [ "$1" = --help ] || exit 64
    ;;
esac
