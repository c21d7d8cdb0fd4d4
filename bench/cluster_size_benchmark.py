#!/usr/bin/env python3
"""Prints what an update pass reads from slurmrestd on a busy cluster, before (GET jobs: every job
slurmctld holds) and after (SlurmRest.states: our jobs only), on the real integration stack.
Figures, not asserts.

    .venv/bin/python bench/cluster_size_benchmark.py [--leg 2205] [--others 10000] [--ours 100]

The leg's slurmctld is given OTHERS held one-job submissions of bob (through slurmrestd, in
parallel; not a job array, which is one record in slurmctld until its tasks start, not OTHERS of
them) and OURS held jobs of alice, the jobs a pass follows. Each read runs in a fresh process (its peak
RSS is the read's own plus the import of the tool); bytes are the response bodies' and the
slurmrestd time the sum of the requests' wall time. On a leg without GET jobs/state (22.05,
v0.0.38) states() asks GET jobs?update_time=: the first read of a pass is a full one; while no job
changed, the next are answered 304 from what the first remembered; a change anywhere on the cluster
brings every job again. Every job created is cancelled at the end (also on failure).
Needs MaxJobCount above OTHERS + OURS in the leg's slurm.conf (stack.sh sets 20000).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "integration"), str(ROOT / "tests")]

import provenance  # noqa: E402

STACK_SH = ROOT / "tests" / "integration" / "stack.sh"
SUBMITTERS = 2  # submitting threads
# slurmctld is left this long after the submissions, and between two reads: update_time asks from a
# few seconds (UPDATE_TIME_MARGIN) before the last full read, as a pass a minute later would.
SETTLE_SECONDS = 15


def slurm_command(leg: str, *command: str) -> str:
    """A Slurm command as root inside the leg's root; its standard output."""
    result = subprocess.run(["bash", str(STACK_SH), "slurm", leg, *command], capture_output=True, text=True, check=True)
    return result.stdout


def submit_held(leg: str, user: str, count: int) -> list[int]:
    """`count` held one-line jobs of `user`, submitted through slurmrestd by SUBMITTERS threads; their ids."""
    import helpers

    slurm = helpers.SlurmControl(helpers.get_stack(), leg)

    job = {"name": "jgs-bench", "hold": True, "current_working_directory": "/tmp", "standard_output": "/dev/null"}
    environment = {"PATH": "/usr/bin:/bin"}
    if helpers.api_minor(slurm.api_version) >= 40:
        body = {"job": {**job, "script": "#!/bin/sh\ntrue\n", "environment": ["PATH=/usr/bin:/bin"]}}
    else:
        body = {"script": "#!/bin/sh\ntrue\n", "job": {**job, "environment": environment}}

    def submit(_: int) -> int:
        # a held job comes with an error entry ("Job is in held state") beside its id; 22.05's
        # slurmrestd now and then drops a connection under load: that one is sent again
        for attempt in range(3):
            try:
                answer = slurm.request("POST", f"/slurm/{slurm.api_version}/job/submit", user, json=body).json()
                return int(answer["job_id"])
            except requests.ConnectionError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    with concurrent.futures.ThreadPoolExecutor(SUBMITTERS) as pool:
        return list(pool.map(submit, range(count)))


def read_child(directory: str, leg: str, how: str, ids_file: str) -> None:
    """One read in this fresh process; its figures as JSON."""
    import helpers
    import jobbergate_sync
    from tool import Tool

    stack = helpers.get_stack()
    tool = Tool(Path(directory), stack, stack.client_id, leg=leg, slurmrestd__timeout=120)
    config = jobbergate_sync.load_config(str(tool.config), {})
    http = jobbergate_sync.Http(jobbergate_sync.Deadline(600), 1, 0)
    figures = {"requests": 0, "bytes": 0, "seconds": 0.0}
    send = http.send

    def counted(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        response = send(*args, **kwargs)
        figures["seconds"] += time.perf_counter() - began
        figures["requests"] += 1
        figures["bytes"] += len(response.content)
        return response

    http.send = counted  # type: ignore[method-assign]
    slurm = jobbergate_sync.SlurmRest(config, http, states_path=str(Path(directory) / "slurm-jobs.json"))
    ours = json.loads(Path(ids_file).read_text())
    held = slurm.jobs() if how == "jobs" else slurm.states(ours)
    figures.update(held=sum(job_id in held for job_id in ours),
                   peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(figures))


def read(directory: str, leg: str, how: str, ids_file: str) -> dict[str, Any]:
    result = subprocess.run([sys.executable, __file__, "--child", directory, leg, how, ids_file],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"the {how} read failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        read_child(*sys.argv[2:6])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leg", default="2205")
    parser.add_argument("--others", type=int, default=10_000)
    parser.add_argument("--ours", type=int, default=100)
    arguments = parser.parse_args()
    provenance.print_header()
    leg = arguments.leg
    rows = []
    try:
        began = time.monotonic()
        submit_held(leg, "bob", arguments.others)
        ours = submit_held(leg, "alice", arguments.ours)
        print(f"leg {leg}: {arguments.others} held jobs of bob and {arguments.ours} of alice submitted "
              f"in {time.monotonic() - began:.0f} s", file=sys.stderr)
        time.sleep(SETTLE_SECONDS)
        with tempfile.TemporaryDirectory() as directory:
            ids_file = str(Path(directory) / "ours.json")
            Path(ids_file).write_text(json.dumps(ours))
            rows.append(("before: GET jobs", read(directory, leg, "jobs", ids_file)))
            rows.append(("after: states(), first read", read(directory, leg, "states", ids_file)))
            time.sleep(SETTLE_SECONDS)  # passes are a minute apart: the next asks from before the first read
            rows.append(("after: states(), nothing changed", read(directory, leg, "states", ids_file)))
            slurm_command(leg, "scontrol", "update", f"jobid={ours[0]}", "comment=changed")
            rows.append(("after: states(), a job changed", read(directory, leg, "states", ids_file)))
    finally:
        for user in ("bob", "alice"):
            subprocess.run(["bash", str(STACK_SH), "slurm", leg, "scancel", "-u", user, "-n", "jgs-bench"], check=False)
    print(f"Slurm leg {leg}: {arguments.others:,} held jobs of another user, {arguments.ours} of ours; one read per fresh process")
    print(f"{'read':<34} {'requests':>8} {'bytes':>12} {'slurmrestd s':>13} {'peak RSS MB':>12} {'ours held':>10}")
    for name, figures in rows:
        print(f"{name:<34} {figures['requests']:>8} {figures['bytes']:>12,} {figures['seconds']:>13.3f} "
              f"{figures['peak_mb']:>12.1f} {figures['held']:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
