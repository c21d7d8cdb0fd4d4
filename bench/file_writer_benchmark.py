#!/usr/bin/env python3
"""What writing a submission's files as its user costs: this checkout's exec'd writer (kept for all of a
user's submissions in a pass; and, the worst case, started for each submission as a new user's would
be) against the forked child of an earlier commit (default e28f58b), all writing a job script and a
supporting file into a fresh directory per submission as an unprivileged user, one at a time and on
4 threads.
Prints wall time and CPU (this process and its children) per submission; figures, not asserts.

    .venv/bin/python bench/file_writer_benchmark.py [--count 200] [--user nobody] [--before e28f58b]

Run as root (the writer switches to the user); the earlier commit's module is taken with `git show`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib.util
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jobbergate_sync  # noqa: E402


def earlier_module(commit: str) -> Any:
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:jobbergate_sync.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "jobbergate_sync_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("jobbergate_sync_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def source(content: bytes) -> Any:
    handle = tempfile.TemporaryFile()
    handle.write(content)
    handle.flush()
    return handle


def measure(write_all: Callable[[list[str]], None], directories: list[str]) -> tuple[float, float]:
    """Milliseconds of wall time and of CPU (user + system, with the children, all reaped) per submission."""
    before_cpu = os.times()
    started = time.perf_counter()
    write_all(directories)
    wall = time.perf_counter() - started
    after_cpu = os.times()
    cpu = sum(after_cpu[i] - before_cpu[i] for i in range(4))
    return 1000 * wall / len(directories), 1000 * cpu / len(directories)


def on_threads(threads: int, write_one: Callable[[str], None]) -> Callable[[list[str]], None]:
    def write_all(directories: list[str]) -> None:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(write_one, directories))
    return write_all


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--user", default="nobody")
    parser.add_argument("--before", default="e28f58b")
    options = parser.parse_args()
    entry = pwd.getpwnam(options.user)
    user = jobbergate_sync.LocalUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)
    before = earlier_module(options.before)
    script, data = source(b"#!/bin/bash\n#SBATCH --time=5\necho hello\n"), source(os.urandom(64 * 1024))
    files = [("job.sh", script.fileno()), ("data.bin", data.fileno())]
    def forked(directory: str) -> None:
        before.run_as_user(user, lambda: before.stage_in_directory(directory, files))

    def own_writer(directory: str) -> None:
        with contextlib.closing(jobbergate_sync.FileWriters()) as writers:
            writers.write(user, directory, files, 0o600, False, 60)

    def one_writer_for_all(threads: int) -> Callable[[list[str]], None]:
        def write_all(directories: list[str]) -> None:
            with contextlib.closing(jobbergate_sync.FileWriters()) as writers:  # ends (and is reaped) inside
                on_threads(threads, lambda directory: writers.write(user, directory, files, 0o600, False, 60))(
                    directories)
        return write_all

    contenders = {
        f"forked child ({options.before})": lambda threads: on_threads(threads, forked),
        "exec'd writer, one per user and pass (this checkout)": one_writer_for_all,
        "exec'd writer, each submission a new user's (this checkout)": lambda threads: on_threads(threads, own_writer),
    }
    print(f"{options.count} submissions, a 40-byte script and a 64 KiB supporting file each, as {options.user}")
    print("| writer | threads | wall per submission | CPU per submission |")
    print("|---|---|---|---|")
    for threads in (1, 4):
        for name, contender in contenders.items():
            root = Path(tempfile.mkdtemp(prefix="jgs-bench-"))
            root.chmod(0o755)
            os.chown(root, user.uid, user.gid)
            try:
                contender(1)([str(root / "warm-up")])
                wall, cpu = measure(contender(threads), [str(root / f"sub-{n}") for n in range(options.count)])
            finally:
                shutil.rmtree(root)
            print(f"| {name} | {threads} | {wall:.1f} ms | {cpu:.1f} ms |")

if __name__ == "__main__":
    main()
