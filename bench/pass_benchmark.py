#!/usr/bin/env python3
"""Prints how long a pass takes, and how many requests it makes, as the backlog grows.

Runs the tool in-process against the unit-test fakes (no network), so it measures the tool's own
cost: #SBATCH translation, journal writes, file staging and request handling. Figures, not asserts.

    python bench/pass_benchmark.py [--sizes 10,100,500]
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import sys
import tempfile
import time
from pathlib import Path

import responses

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import jobbergate_sync  # noqa: E402
from fakes import API, CLIENT_ID, CLIENT_SECRET, ISSUER, SLURM, FakeIssuer, FakeJobbergate, FakeSlurm  # noqa: E402

JWT_KEY = b"benchmark-key-of-thirty-two-byte"
SCRIPT = b"""#!/bin/bash
#SBATCH --job-name=bench
#SBATCH --time=01:00:00 --ntasks=4 --mem=4G
#SBATCH --output=out-%j.txt --mail-type=END,FAIL
srun hostname
"""


def write_config(directory: Path, user: pwd.struct_passwd, exec_root: Path) -> str:
    for name, data in (("secret", CLIENT_SECRET.encode()), ("key", JWT_KEY)):
        (directory / name).write_bytes(data)
        (directory / name).chmod(0o600)
    config = directory / "config.ini"
    config.write_text(f"""[jobbergate]
api_url = {API}
[oidc]
issuer = {ISSUER}
client_id = {CLIENT_ID}
client_secret_file = {directory / 'secret'}
[slurmrestd]
url = {SLURM}
jwt_key_file = {directory / 'key'}
[submit]
execution_directory = {exec_root}/{{username}}
[mapper]
min_uid = 1
[run]
state_dir = {directory / 'state'}
lock_file = {directory / 'lock'}
deadline = 3600
[logging]
level = warning
""")
    config.chmod(0o600)
    return str(config)


def one_size(size: int, user: pwd.struct_passwd) -> dict[str, float]:
    directory = Path(tempfile.mkdtemp(prefix="jgs-bench-"))
    exec_root = Path(tempfile.mkdtemp(prefix="jgs-bench-exec-"))
    exec_root.chmod(0o755)
    os.chown(exec_root, user.pw_uid, user.pw_gid)
    try:
        config = write_config(directory, user, exec_root)
        with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
            api = FakeJobbergate(rsps, FakeIssuer(rsps))
            slurm = FakeSlurm(rsps, JWT_KEY)
            for submission_id in range(1, size + 1):
                api.add_submission(submission_id, {"job.sh": SCRIPT, "input.dat": b"x" * 4096},
                                   email=f"{user.pw_name}@example.com")
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
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(exec_root, ignore_errors=True)


def translation_rate(rounds: int = 2000) -> float:
    began = time.perf_counter()
    for _ in range(rounds):
        jobbergate_sync.build_job_request(SCRIPT.decode(), ["--partition=debug", "-N 2"], "bench", "/home/u",
                                          {"PATH": "/bin"}, "tag", 40)
    return rounds / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,500")
    sizes = [int(size) for size in parser.parse_args().sizes.split(",")]
    user = pwd.getpwnam("nobody") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
    print(f"#SBATCH parse + translate: {translation_rate():,.0f} scripts/s")
    print(f"{'pending':>8} {'submit pass s':>14} {'ms/submission':>14} {'update pass s':>14} {'slurmrestd calls (update)':>26}")
    for size in sizes:
        figures = one_size(size, user)
        print(f"{size:>8} {figures['submit_pass_s']:>14.2f} {figures['per_submission_ms']:>14.1f} "
              f"{figures['update_pass_s']:>14.2f} {figures['slurm_calls_in_update']:>26}")


if __name__ == "__main__":
    main()
