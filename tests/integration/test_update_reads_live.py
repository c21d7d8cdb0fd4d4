"""Live: an update pass asks slurmrestd for the jobs it follows only, on a Slurm with jobs/state
(24.11) and on one without it (22.05, GET jobs with update_time)."""

from __future__ import annotations

import re
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

import pytest

import helpers
from scenario import new_submission, status_of

JOB = {"job.sh": b"#!/bin/bash\n#SBATCH --time=5\nsleep 120\n"}
REQUEST_LINE = re.compile(r"^(GET|POST|PUT|DELETE) (\S+) -> HTTP (\d+)")


def slurm_requests(result: Any, url: str) -> list[tuple[str, str, dict[str, list[str]]]]:
    """(method, path, query) of each request the pass made to slurmrestd at `url` (its debug log)."""
    found = []
    for line in result.log:
        match = REQUEST_LINE.match(line["message"])
        if match and match.group(2).startswith(url):
            address = urlparse(match.group(2))
            found.append((match.group(1), address.path, parse_qs(address.query)))
    return found


def job_reads(result: Any, url: str) -> list[tuple[str, str, dict[str, list[str]]]]:
    """The pass's reads of slurmctld's job lists (GET jobs, GET jobs/state)."""
    return [(method, path, query) for method, path, query in slurm_requests(result, url)
            if method == "GET" and "/jobs" in path]


@pytest.mark.parametrize("leg", ["2411", "2205"])
def test_an_update_pass_reads_only_the_jobs_it_follows(make_tool: Callable[..., Any], stack: Any, alice: Any,
                                                       leg: str) -> None:
    if leg not in stack.legs:
        pytest.skip(f"leg {leg} is not up")
    tool = make_tool("tool", leg=leg)
    submissions = [new_submission(alice, JOB, execution_directory="/home/alice") for _ in range(2)]
    try:
        assert tool.run().returncode == 0
        ids = sorted(alice.get_submission(sub["id"])["slurm_job_id"] for sub in submissions)
        assert all(status_of(alice, sub) == "SUBMITTED" for sub in submissions)
        result = tool.run("-v")
        assert result.returncode == 0, result.stderr[-2000:]
        if leg == "2411":
            [(_, path, query)] = job_reads(result, tool.leg.url)
            assert path.endswith("/jobs/state/")
            assert sorted(map(int, query["job_id"])) == ids
        else:
            # the submit pass's update read every job and remembered ours: this one asks what changed since
            assert [(path.rsplit("/", 1)[-1], "update_time" in query)
                    for _, path, query in job_reads(result, tool.leg.url)] == [("jobs", True)]
    finally:
        for sub in submissions:
            alice.cancel(sub["id"])
        helpers.slurm_cli("scancel", "--user=alice", leg=leg)  # leave the leg idle for the other tests
