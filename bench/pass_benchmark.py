#!/usr/bin/env python3
"""Prints how long a pass takes, and how many requests it makes, as the backlog grows; and what an
update pass over many active submissions whose states did not change costs.

Runs the tool in-process against the unit-test fakes (no network), so it measures the tool's own
cost: #SBATCH translation, journal writes, file staging and request handling. Figures, not asserts.

    python bench/pass_benchmark.py [--sizes 10,100,500] [--active 10000]

--active N: N submissions each followed in Slurm, all already reported with the state Slurm still
shows, as slurmrestd v0.0.38 (GET jobs?update_time=, answered 304) and v0.0.42 (GET jobs/state)
serve them. Each pass runs in a fresh process; the journal and the remembered job list are written
beforehand by another one. Peak RSS (getrusage) is the whole process's, the fakes' data included,
and is also given less what the process held before the pass began.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

import responses

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import jobbergate_sync  # noqa: E402
import provenance  # noqa: E402
from fake_stack_config import JWT_KEY, write_fake_stack_config  # noqa: E402
from fakes import SLURM, FakeIssuer, FakeJobbergate, FakeSlurm  # noqa: E402

SCRIPT = b"""#!/bin/bash
#SBATCH --job-name=bench
#SBATCH --time=01:00:00 --ntasks=4 --mem=4G
#SBATCH --output=out-%j.txt --mail-type=END,FAIL
srun hostname
"""


def write_config(directory: Path, exec_root: Path) -> str:
    return write_fake_stack_config(directory, {"submit": {"execution_directory": f"{exec_root}/{{username}}"},
                                               "run": {"deadline": 3600}, "logging": {"level": "warning"}})


@contextlib.contextmanager
def pending_backlog(size: int, user: pwd.struct_passwd, **submission: Any) -> Iterator[tuple[str, Path, responses.RequestsMock,
                                                                                             FakeJobbergate, FakeSlurm]]:
    """A config, an execution root owned by `user` and the fakes holding `size` pending submissions of
    a script and a supporting file (`submission`: more fields of each); removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="jgs-bench-"))
    exec_root = Path(tempfile.mkdtemp(prefix="jgs-bench-exec-"))
    exec_root.chmod(0o755)
    os.chown(exec_root, user.pw_uid, user.pw_gid)
    try:
        config = write_config(directory, exec_root)
        with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
            api = FakeJobbergate(rsps, FakeIssuer(rsps))
            slurm = FakeSlurm(rsps, JWT_KEY)
            for submission_id in range(1, size + 1):
                fields = {key: value.format(root=exec_root, user=user.pw_name, id=submission_id)
                          if isinstance(value, str) else value for key, value in submission.items()}
                api.add_submission(submission_id, {"job.sh": SCRIPT, "input.dat": b"x" * 4096},
                                   email=f"{user.pw_name}@example.com", **fields)
            yield config, exec_root, rsps, api, slurm
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(exec_root, ignore_errors=True)


def one_size(size: int, user: pwd.struct_passwd) -> dict[str, float]:
    with pending_backlog(size, user) as (config, _, _, _, slurm):
        began = time.perf_counter()
        assert jobbergate_sync.main(["--config", config, "-q"]) == 0
        submit_pass = time.perf_counter() - began
        for job in slurm.jobs.values():
            job["job_state"] = "COMPLETED"
        slurm.requests.clear()
        began = time.perf_counter()
        assert jobbergate_sync.main(["--config", config, "-q"]) == 0
        update_pass = time.perf_counter() - began
        slurm_calls = len(slurm.requests)
    return {"submit_pass_s": submit_pass, "per_submission_ms": submit_pass / size * 1000,
            "update_pass_s": update_pass, "slurm_calls_in_update": slurm_calls}


def translation_rate(rounds: int = 2000) -> float:
    began = time.perf_counter()
    for _ in range(rounds):
        jobbergate_sync.build_job_request(SCRIPT.decode(), ["--partition=debug", "-N 2"], "bench", "/home/u",
                                          {"PATH": "/bin"}, "tag", 40)
    return rounds / (time.perf_counter() - began)


def fakes_with_active(rsps: responses.RequestsMock, version: str, size: int) -> tuple[FakeJobbergate, FakeSlurm]:
    """`size` active submissions, each with a running Slurm job; one other user's job beside them."""
    api = FakeJobbergate(rsps, FakeIssuer(rsps))
    slurm = FakeSlurm(rsps, JWT_KEY, version)
    state = ["RUNNING"] if version != "v0.0.38" else "RUNNING"
    for submission_id in range(1, size + 1):
        api.add_submission(submission_id, status="SUBMITTED", slurm_job_id=100_000 + submission_id)
        slurm.add_job(100_000 + submission_id, state)
    slurm.add_job(99_999, state, user="bob")
    return api, slurm


def active_child(directory: Path, version: str, size: int, prepare: bool) -> None:
    """One process: with `prepare`, the journal (every job reported RUNNING) and, for update_time,
    the remembered job list; else one timed update pass, its figures printed as JSON."""
    config = str(directory / "config.ini")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        api, slurm = fakes_with_active(rsps, version, size)
        if prepare:
            journal = jobbergate_sync.Journal(str(directory / "state" / "journal.sqlite3"))
            journal.db.execute("BEGIN")
            for submission_id in range(1, size + 1):
                job_id = 100_000 + submission_id
                journal.record_report(submission_id, jobbergate_sync.StateReport(job_id, "RUNNING", None, "{}"))
            journal.db.execute("COMMIT")
            loaded = jobbergate_sync.load_config(config, {})
            http = jobbergate_sync.Http(jobbergate_sync.Deadline(600), 1, 0)
            jobbergate_sync.SlurmRest(loaded, http, states_path=str(directory / "state" / "slurm-jobs.json")).states(
                [100_000 + submission_id for submission_id in range(1, size + 1)])
            return
        slurm.last_job_update = 0.0  # no job changed since the remembered read
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        began = time.perf_counter()
        code = jobbergate_sync.main(["--config", config, "-q"])
        seconds = time.perf_counter() - began
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        paths = [urlparse(url).path for _, url, _ in slurm.requests]
        print(json.dumps({
            "code": code, "seconds": seconds, "peak_mb": peak / 1024, "pass_mb": (peak - before) / 1024,
            "slurm_requests": len(paths), "slurm_job_reads": sum("/job/" in path for path in paths),
            "list_pages": sum(name in ("pending", "active") for name, _, _ in api.calls),
            "writes": sum(name in ("update", "submitted", "rejected") for name, _, _ in api.calls)}))


def active_figures(size: int, version: str, user: pwd.struct_passwd) -> dict[str, float]:
    directory = Path(tempfile.mkdtemp(prefix="jgs-bench-active-"))
    try:
        config = Path(write_config(directory, directory))
        text = config.read_text().replace(f"url = {SLURM}\n", f"url = {SLURM}\napi_version = {version}\n")
        config.write_text(text.replace("[jobbergate]\n", "[jobbergate]\nmax_pages = 1000\n"))
        (directory / "state").mkdir(mode=0o700)
        command = [sys.executable, __file__, "--active-child", str(directory), version, str(size)]
        subprocess.run([*command, "prepare"], check=True)
        result = subprocess.run(command, check=True, capture_output=True, text=True)
        return json.loads(result.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    if sys.argv[1:2] == ["--active-child"]:
        active_child(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5:] == ["prepare"])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,500")
    parser.add_argument("--active", type=int, default=0, help="also time an update pass over this many unchanged jobs")
    arguments = parser.parse_args()
    provenance.print_header()
    sizes = [int(size) for size in arguments.sizes.split(",") if size]
    user = pwd.getpwnam("nobody") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
    if arguments.active:
        print(f"update pass, {arguments.active:,} active submissions, no state changed (fakes, fresh process each)")
        print(f"{'slurmrestd':>10} {'requests':>9} {'job reads':>10} {'list pages':>11} {'writes':>7} "
              f"{'pass s':>7} {'peak RSS MB':>12} {'less before MB':>15}")
        for version, how in (("v0.0.38", "update_time"), ("v0.0.42", "jobs/state")):
            f = active_figures(arguments.active, version, user)
            print(f"{version:>10} {f['slurm_requests']:>9} {f['slurm_job_reads']:>10} {f['list_pages']:>11} "
                  f"{f['writes']:>7} {f['seconds']:>7.2f} {f['peak_mb']:>12.1f} {f['pass_mb']:>15.1f}  ({how})")
    if not sizes:
        return
    print(f"#SBATCH parse + translate: {translation_rate():,.0f} scripts/s")
    print(f"{'pending':>8} {'submit pass s':>14} {'ms/submission':>14} {'update pass s':>14} {'slurmrestd calls (update)':>26}")
    for size in sizes:
        figures = one_size(size, user)
        print(f"{size:>8} {figures['submit_pass_s']:>14.2f} {figures['per_submission_ms']:>14.1f} "
              f"{figures['update_pass_s']:>14.2f} {figures['slurm_calls_in_update']:>26}")


if __name__ == "__main__":
    main()
