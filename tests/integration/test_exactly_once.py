"""Exactly once past slurmctld's memory: a pass killed right after slurmrestd accepted a submit,
then the job runs, ends and is purged from slurmctld (MinJobAge) before the next pass. The next
pass must find the job in slurmdbd and never submit it a second time. And the other way round: a
job tagged for an earlier submission with the same id is never taken for this one's."""

from __future__ import annotations

import time

import pytest

import helpers
from jobbergate_sync import submission_tag
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


@pytest.mark.parametrize("leg", ["2411", "2511"])
def test_the_jobs_of_an_earlier_jobbergate_database_s_submission_with_the_same_id_are_not_adopted(
        alice, make_tool, slurm_on, stack, leg):
    """A recreated or restored Jobbergate database hands out submission ids from 1 again while Slurm keeps
    the jobs tagged with the old ones. A pass with no journal (a new or rebuilt head node) settles the
    pending submissions against slurmctld and slurmdbd before it submits: alice's running jobs tagged
    with this submission's id, one with another creation time and one in the form of the versions
    before the tag had one, are not its job, and are left alone."""
    slurm = slurm_on(leg)
    tool = make_tool(unique("earlier-db"), leg=leg)
    submission = new_submission(alice, QUICK_JOB)
    earlier_tags = (submission_tag(stack.client_id, submission["id"], "2026-01-02T03:04:05.000006Z"),
                    f"jobbergate-sync:{stack.client_id}:{submission['id']}")
    earlier = [slurm.slurm_submit("alice", "#!/bin/bash\nsleep 300\n", comment=comment, name=unique("earlier-db"))
               for comment in earlier_tags]
    try:
        result = tool.run()
        assert result.returncode == 0, result.stderr[-3000:]
        assert "settled 1 pending submission(s) against Slurm: 0 have a job with their tag" in result.stderr
        job_id = alice.get_submission(submission["id"])["slurm_job_id"]
        assert job_id not in (None, *earlier)
        assert [job["job_id"] for job in job_for(slurm, submission)] == [job_id]
        states = [helpers.state_of(slurm.slurm_job(old)) for old in earlier]
        assert set(states) <= {"PENDING", "RUNNING"}, states  # not cancelled as duplicates
    finally:
        for old in earlier:
            slurm.slurm_cancel(old)
