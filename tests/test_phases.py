"""The pass's phases share its deadline: a backlog of submissions never keeps the update phase (its
state reports and cancels) or the health ping from running."""

from __future__ import annotations

import jobbergate_sync
from fakes import run


def test_a_backlog_that_fills_the_submit_share_still_updates_active_jobs_and_pings(stack, config_file, email, capsys):
    for submission_id in range(1, 11):
        stack.api.add_submission(submission_id, email=email)
    stack.slurm.slow_down_submits(0.5)
    stack.api.add_submission(50, email=email, status="SUBMITTED", slurm_job_id=500)
    stack.slurm.add_job(500, "COMPLETED")
    stack.api.add_submission(51, email=email, status="CANCELLED", slurm_job_id=501)
    stack.slurm.add_job(501, "RUNNING")

    config = config_file(**{"run.deadline": 2, "run.submit_share": 0.5, "run.workers": 1})
    assert run(config, "--log-format", "text") == 0

    statuses = [stack.api.status(i) for i in range(1, 11)]
    assert 1 <= statuses.count("SUBMITTED") < 10 and statuses.count("CREATED") == 10 - statuses.count("SUBMITTED")
    assert stack.api.status(50) == "DONE"
    assert [job_id for job_id, _ in stack.slurm.cancelled] == [501] and stack.api.status(51) == "ABORTED"
    assert stack.api.health == [90]
    assert "the submit phase reached the submit share of the deadline (1 s)" in capsys.readouterr().err


def test_a_bug_in_the_submit_phase_still_lets_the_update_phase_and_the_ping_run(stack, config_file, email,
                                                                               monkeypatch, capsys):
    def broken(self, deadline):
        raise RuntimeError("a bug in the submit phase")

    monkeypatch.setattr(jobbergate_sync.SubmitPhase, "run", broken)
    stack.api.add_submission(50, email=email, status="SUBMITTED", slurm_job_id=500)
    stack.slurm.add_job(500, "COMPLETED")

    assert run(config_file(), "--log-format", "text") == jobbergate_sync.EX_SOFTWARE

    assert stack.api.status(50) == "DONE" and stack.api.health == [90]
    err = capsys.readouterr().err
    assert "RuntimeError: a bug in the submit phase" in err and "internal error" in err

