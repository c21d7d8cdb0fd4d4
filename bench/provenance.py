"""The header every benchmark prints before its figures: when, on which commit, on which machine,
with which Python and which command. A table copied into docs/performance.md keeps it."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        return ""


def header_lines() -> list[str]:
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += " with uncommitted changes"
    executable = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else sys.executable
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [f"# {when}, commit {commit}",
            f"# machine: {os.cpu_count()} CPUs ({cpu_model() or platform.machine()}), {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}",
            f"# command: {shlex.join([executable, *sys.argv])}"]


def print_header() -> None:
    print("\n".join(header_lines()), flush=True)
