"""Exactly once past slurmctld's memory: a pass killed right after slurmrestd accepted a submit,
then the job runs, ends and is purged from slurmctld (MinJobAge) before the next pass. The next
pass must find the job in slurmdbd and never submit it a second time."""

from __future__ import annotations

import time

import helpers
from scenario import job_for, new_submission, status_of, tag, unique

QUICK_JOB = {"job.sh": b"#!/bin/bash\nsleep 1\n"}


def jobs_in_slurmdbd(stack: helpers.Stack, comment: str) -> list[str]:
    """Ids of every job slurmdbd recorded with this comment (AccountingStoreFlags=job_comment)."""
    proc = helpers.slurm_cli("sacct", "-a", "-X", "-n", "-P", "-o", "JobID,Comment", "-S", "now-2hours",
                             leg=stack.default_leg)
    return [line.split("|", 1)[0] for line in proc.stdout.splitlines() if line.split("|", 1)[-1] == comment]


def crash_after_submit_and_wait_for_purge(alice, tool, slurm, figures) -> tuple[dict, int]:
    submission = new_submission(alice, QUICK_JOB)
    crashed = tool.run(env={"JOBBERGATE_SYNC_CRASH_AT": "after-slurm-submit"})
    assert crashed.returncode == -9, crashed.stderr
    figures.record("crash_points", 1)
    (job,) = job_for(slurm, submission)
    deadline = time.monotonic() + 240
    while slurm.slurm_job(job["job_id"]) is not None:  # MinJobAge=30: gone some 30-80 s after its end
        assert time.monotonic() < deadline, "slurmctld never purged the job"
        time.sleep(3)
    return submission, job["job_id"]


def test_killed_after_submit_and_purged_is_found_in_slurmdbd_not_submitted_again(alice, make_tool, slurm, stack, figures):
    tool = make_tool(unique("crash-purge"))  # the shipped purge_horizon (300 s), ten times this MinJobAge (30 s)
    submission, job_id = crash_after_submit_and_wait_for_purge(alice, tool, slurm, figures)

    tool.run_until(lambda: status_of(alice, submission) == "DONE")

    assert alice.get_submission(submission["id"])["slurm_job_id"] == job_id
    in_slurmdbd = helpers.wait_for(lambda: jobs_in_slurmdbd(stack, tag(submission)), 30, 1, "the job in slurmdbd")
    assert in_slurmdbd == [str(job_id)]
    figures.record("submissions_followed")
    figures.record("duplicates", len(in_slurmdbd) - 1)


def test_killed_after_submit_and_purged_with_slurmdbd_down_waits_and_never_resubmits(alice, make_tool, slurm, stack,
                                                                                     services, figures):
    tool = make_tool(unique("crash-purge-dbd"), slurmrestd__purge_horizon=30)
    submission, job_id = crash_after_submit_and_wait_for_purge(alice, tool, slurm, figures)
    services.stop("slurmdbd")

    result = tool.run()

    assert result.returncode == 69, result.stderr[-2000:]
    assert status_of(alice, submission) == "CREATED"
    assert job_for(slurm, submission) == []  # nothing new in slurmctld
    services.start("slurmdbd")
    tool.run_until(lambda: status_of(alice, submission) == "DONE")
    assert alice.get_submission(submission["id"])["slurm_job_id"] == job_id
    assert jobs_in_slurmdbd(stack, tag(submission)) == [str(job_id)]
    figures.record("submissions_followed")
