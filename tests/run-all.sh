#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 or 13 machine, as root: installs the package and its test
# extra into .venv, installs and starts the integration stack (real Slurm 22.05/24.11/25.11 +
# slurmrestd in their own roots, real jobbergate-api), runs every test, and stops the stack again.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
began=$(date +%s)
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
bash tests/integration/stack.sh up
trap 'bash tests/integration/stack.sh down' EXIT
stack_ready=$(date +%s)
echo "run-all: venv and stack ready in $((stack_ready - began)) s"
status=0
.venv/bin/python -m pytest -ra "$@" || status=$?
echo "run-all: tests took $(($(date +%s) - stack_ready)) s, $(($(date +%s) - began)) s in all"
exit "$status"
