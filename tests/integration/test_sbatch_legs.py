"""The sbatch backend on each leg's own Slurm, the tool running inside the leg's root: `check`, and
a pass while slurmctld is stopped. (Every other Slurm-facing scenario runs in test_matrix.py, whose
sbatch targets are selected with ``-k sbatch``.)"""

from __future__ import annotations

from typing import Any, Callable

import pytest

import helpers
from scenario import new_submission, status_of
from tool import Tool


def stack_legs() -> list[str]:
    try:
        return list(helpers.get_stack().legs)
    except helpers.StackNotUp:
        return ["none"]


LEGS = stack_legs()
legs = pytest.mark.parametrize("leg", LEGS)


def sbatch_tool(make_tool: Callable[..., Tool], leg: str) -> Tool:
    if leg == "none":
        pytest.fail(helpers.NOT_UP, pytrace=False)
    return make_tool(f"sbatch-{leg}", cluster=f"sbatch-{leg}", leg=leg, backend="sbatch")


@legs
def test_check_finds_the_commands_slurmctld_and_slurmdbd(make_tool, stack, leg):
    tool = sbatch_tool(make_tool, leg)
    result = tool.check()
    assert result.returncode == 0, result.stdout
    lines = {line[5:].split(":", 1)[0]: line for line in result.stdout.splitlines()}
    assert f"sbatch {stack.leg(leg).version}" in lines["Slurm commands"], result.stdout
    assert lines["slurmctld"].startswith("ok   slurmctld: squeue answered"), result.stdout
    assert lines["slurmdbd"].startswith("ok   slurmdbd: sacct answered"), result.stdout
    assert "slurmrestd" not in result.stdout


@legs
def test_slurmctld_stopped_exits_69_leaves_the_submission_created_then_submits_once(
        make_tool, services, alice: Any, leg):
    tool = sbatch_tool(make_tool, leg)
    sub = new_submission(alice, {"job.sh": b"#!/bin/bash\ntrue\n"}, client_id=f"sbatch-{leg}",
                         execution_directory=f"/home/alice/jgs-sbatch/{leg}")
    services.stop(f"slurmctld@{leg}")
    result = tool.run()
    assert result.returncode == 69, result.stderr[-2000:]
    assert "Unable to contact slurm controller" in result.stderr
    assert status_of(alice, sub) == "CREATED"
    services.start(f"slurmctld@{leg}")
    tool.run_until(lambda: status_of(alice, sub) in ("SUBMITTED", "DONE"))
    job_id = alice.get_submission(sub["id"])["slurm_job_id"]
    tag = f"jobbergate-sync:sbatch-{leg}:{sub['id']}"

    def accounted() -> list[str]:
        listing = helpers.slurm_cli("sacct", "-n", "-X", "-P", "-o", "JobIDRaw,Comment", "--starttime=now-15minutes",
                                    leg=leg).stdout
        return [line.split("|", 1)[0] for line in listing.splitlines() if line.split("|", 1)[-1].startswith(tag)]

    helpers.wait_for(accounted, 60, 1, f"slurmdbd's record of job {job_id}")
    assert accounted() == [str(job_id)]  # submitted exactly once
