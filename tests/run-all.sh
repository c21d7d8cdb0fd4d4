#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 or 13 machine, as root: installs the package and its
# test extra into .venv (and systemd-analyze and logrotate for the packaging tests), runs ruff, the unit
# tests on Python 3.9 and 3.13 when pyenv has them, installs and starts the integration stack (real
# Slurm 22.05/24.11/25.11 + slurmrestd in their own roots, real jobbergate-api), runs every test,
# and stops the stack again. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
began=$(date +%s)
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'

# The linter first (its rules are in pyproject.toml): a finding fails the run before any test.
.venv/bin/ruff check .

# What the packaging tests check the shipped files with: systemd-analyze (Debian's systemd package
# installs it without running systemd) and logrotate. Installed only when missing.
missing=()
for package in systemd logrotate; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "run-all: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The unit tests on the oldest and newest Python the module supports, each in its own venv, from
# pyenv's builds when they are there; only for the whole suite (no pytest arguments).
for minor in $([ "$#" -eq 0 ] && echo 3.9 3.13); do
    interpreter=$(ls -d "$HOME"/.pyenv/versions/"$minor".*/bin/python3 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$interpreter" ]; then
        echo "run-all: Python $minor not found under ~/.pyenv/versions; skipping its unit tests"
        continue
    fi
    step_began=$(date +%s)
    venv=".venv-py${minor/./}"
    "$interpreter" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e '.[test]'
    "$venv/bin/python" -m pytest -q -p no:cacheprovider tests --ignore=tests/integration
    echo "run-all: unit tests on $("$venv/bin/python" -V) passed in $(($(date +%s) - step_began)) s"
done

bash tests/integration/stack.sh up
trap 'bash tests/integration/stack.sh down' EXIT
stack_ready=$(date +%s)
echo "run-all: venv and stack ready in $((stack_ready - began)) s"
status=0
.venv/bin/python -m pytest -ra "$@" || status=$?
echo "run-all: tests took $(($(date +%s) - stack_ready)) s, $(($(date +%s) - began)) s in all"
exit "$status"
