"""Live: a job's profile goes from Slurm's acct_gather_profile/influxdb plugin, through InfluxDB 1.x,
to jobbergate-api's agent/metrics, on every Slurm leg."""

from __future__ import annotations

import sqlite3
import subprocess
from typing import Any, Callable

import pytest

import helpers
from scenario import new_submission, status_of
from tool import slurm_bin

HELD_MB = 200


def cluster_of(leg: str) -> str:
    """A cluster (OIDC client) other tests seldom use: the first tool of a test drains its cluster's
    submissions, and tests cancel alice's jobs, while this one waits a minute for its job."""
    return f"matrix-{leg}-sbatch-purge"


def job(srun: str) -> dict[str, bytes]:
    """Step 0 burns a CPU and holds HELD_MB for about 40 s; step 1 is short: a job of two steps."""
    return {"job.sh": f"""#!/bin/bash
#SBATCH --time=5
{srun} python3 -c "
import time
held = bytearray({HELD_MB} * 1024 * 1024)
for page in range(0, len(held), 4096):
    held[page] = 1
end = time.time() + 40
while time.time() < end:
    sum(range(10000))
"
{srun} python3 -c "import time; time.sleep(8)"
""".encode()}


def stored_rss(stack: Any, submission_id: int) -> list[tuple[int, int, int]]:
    """(step, task, max RSS in KB) of what the API stored for the submission, from its database."""
    query = (f"SELECT step, task, max(memory_rss) FROM job_submission_metrics WHERE job_submission_id = {submission_id} "
             "GROUP BY step, task ORDER BY step, task")
    out = subprocess.run(["psql", stack.env["JGS_DATABASE_URL"], "-tAF,", "-c", query], capture_output=True, text=True,
                         check=True).stdout
    return [tuple(map(int, line.split(","))) for line in out.split()]


@pytest.mark.parametrize("leg", ["2205", "2411", "2511"])
def test_a_job_s_profile_reaches_the_api(make_tool: Callable[..., Any], stack: Any, bob: Any, leg: str) -> None:
    if leg not in stack.legs:
        pytest.skip(f"leg {leg} is not up")
    cluster = cluster_of(leg)
    tool = make_tool("tool", cluster=cluster, leg=leg, influxdb__url=stack.env.get("JGS_INFLUXDB_URL", "http://127.0.0.1:8086"),
                     influxdb__database=stack.env.get(f"JGS_SLURM_{leg}_INFLUXDB_DATABASE", f"slurm_{leg}"))
    srun = f"{slurm_bin(tool.leg.root)}/srun"  # the job's PATH may not hold the leg's Slurm commands
    submission = new_submission(bob, job(srun), execution_directory="/home/bob", client_id=cluster)
    agent = helpers.AgentClient(stack, cluster)
    try:
        check = tool.check()
        assert f"ok   InfluxDB: {tool.settings['influxdb.url']}" in check.stdout, check.stdout
        tool.run_until(lambda: bob.get_submission(submission["id"])["slurm_job_state"] == "RUNNING", timeout=120, pause=5)
        # InfluxDB unreachable for a pass: its metrics wait, the pass is otherwise whole
        outage = tool.run(env={"JOBBERGATE_SYNC_INFLUXDB_URL": "http://127.0.0.1:9"})
        assert outage.returncode == 0 and outage.summary()["influxdb_failures"] == 1, outage.stderr[-2000:]
        tool.run_until(lambda: status_of(bob, submission) in ("DONE", "ABORTED", "REJECTED"), timeout=240, pause=5)
        assert status_of(bob, submission) == "DONE", bob.get_submission(submission["id"])
        assert tool.run().returncode == 0  # the last collection, after the job's end
        marks = agent.call("GET", f"/job-submissions/agent/metrics/{submission['id']}")["max_times"]
        steps = {mark["step"] for mark in marks}
        assert {0, 1} <= steps, marks
        job_id = bob.get_submission(submission["id"])["slurm_job_id"]
        ended_at = helpers.slurm_cli("env", "SLURM_TIME_FORMAT=%s", "sacct", "-X", "-n", "-P", "-o", "End", "-j",
                                     str(job_id), leg=leg, check=True).stdout.split()[0]
        assert max(mark["max_time"] for mark in marks) >= int(ended_at), marks  # the samples flushed at the end
        rss = {step: value for step, task, value in stored_rss(stack, submission["id"])}
        assert rss[0] >= HELD_MB * 1024, rss  # KB, as the plugin reports it
        with sqlite3.connect(tool.journal) as journal:  # followed no longer
            assert journal.execute("SELECT count(*) FROM metric_jobs").fetchone()[0] == 0
    finally:
        current = bob.get_submission(submission["id"])
        if current["status"] not in ("DONE", "ABORTED", "REJECTED"):
            bob.cancel(submission["id"])
        if current.get("slurm_job_id"):
            helpers.slurm_cli("scancel", str(current["slurm_job_id"]), leg=leg)
