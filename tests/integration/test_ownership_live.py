"""Whose job a submission may follow, on the real stack: a Jobbergate user creates a submission naming
another user's running Slurm job (the API accepts a slurm_job_id at creation and marks it SUBMITTED),
then cancels it. The tool reports nothing of that job, cancels nothing, and ends the submission."""

from __future__ import annotations

import pytest

import helpers
from helpers import state_of
from scenario import unique

CLUSTER = "other-slurm"  # a cluster of its own, so that no other test's pass takes the submission


def legs() -> list[str]:
    try:
        return sorted(helpers.get_stack().legs)
    except helpers.StackNotUp:
        return ["none"]  # the suite's conftest skips every test without the stack


@pytest.mark.parametrize("leg", legs())
def test_bob_naming_alices_running_job_gets_nothing_of_it_and_cancels_nothing(alice, bob, make_tool, slurm_on, leg):
    tool, slurm = make_tool("owner-check", cluster=CLUSTER, leg=leg), slurm_on(leg)
    job_id = slurm.slurm_submit("alice", "#!/bin/bash\nsleep 300\n", name=unique("alices-private-run"))
    try:
        script = bob.create_job_script(unique("script"), {"job.sh": b"#!/bin/bash\ntrue\n"})
        sub = bob.create_submission(script["id"], unique("sub"), client_id=CLUSTER, slurm_job_id=job_id)
        assert sub["status"] == "SUBMITTED"
        bob.cancel(sub["id"])

        result = tool.run()

        assert result.returncode == 1, result.stderr[-2000:]
        current = bob.get_submission(sub["id"])
        assert current["status"] == "ABORTED"
        assert "not a job of this submission's owner" in current["report_message"]
        assert "alices-private-run" not in (current["slurm_job_info"] or "")
        assert state_of(slurm.slurm_job(job_id)) in ("PENDING", "RUNNING")
        [error] = [line for line in result.log if line["level"] == "ERROR"]
        assert error["submission_id"] == sub["id"] and error["slurm_job_id"] == job_id
        assert "belongs to alice, not to the submission's owner bob" in error["message"]
    finally:
        slurm.slurm_cancel(job_id, "alice")
