"""Whose job a submission may follow: only its owner's. Any Jobbergate user can create a submission
naming any Slurm job id (the API marks it SUBMITTED), so the update phase reports or cancels a job
only when Slurm's records of it name the submission's mapped owner."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fakes import run
from jobbergate_sync import ForeignJob, JournalEntry, intent_window, require_job_owner, tagged_job_standing


def deletes(stack) -> list[tuple[str, dict]]:
    return [(url, headers) for method, url, headers in stack.slurm.requests if method == "DELETE"]


def error_lines(capsys) -> list[dict]:
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    return [line for line in lines if line["level"] == "ERROR"]


@pytest.mark.parametrize("status", ["SUBMITTED", "CANCELLED"])
@pytest.mark.parametrize("victim", ["alice", "root"])
def test_a_submission_naming_another_users_job_gets_nothing_of_it_and_is_ended(stack, config_file, email, job_user,
                                                                                 capsys, status, victim):
    stack.slurm.add_job(555, "RUNNING", "None", victim)
    stack.slurm.jobs[555].update(comment="victim's private job", name="secret-run")
    stack.api.add_submission(900, email=email, status=status, slurm_job_id=555)

    assert run(config_file(), "--log-format", "json") == 1

    assert deletes(stack) == [] and stack.slurm.jobs[555]["job_state"] == "RUNNING"
    [update] = stack.api.called("update")
    assert update["slurm_job_state"] == "UNKNOWN" and update["slurm_job_id"] == 555
    for sent in (update["slurm_job_info"], update["slurm_job_state_reason"]):
        assert "private" not in sent and "secret-run" not in sent and victim not in sent
    assert stack.api.status(900) == "ABORTED"
    assert "not a job of this submission's owner" in stack.api.submissions[900]["report_message"]
    [error] = error_lines(capsys)
    assert error["submission_id"] == 900 and error["slurm_job_id"] == 555
    assert f"belongs to {victim}, not to the submission's owner {job_user.pw_name}" in error["message"]
    assert stack.api.health == [90]


def test_an_owner_mapped_to_root_gets_nothing_of_roots_job(stack, config_file, capsys):
    """The owner is mapped with every check of a submit: root@ maps to root, under min_uid."""
    stack.slurm.add_job(555, "RUNNING", "None", "root")
    stack.api.add_submission(900, email="root@example.com", status="CANCELLED", slurm_job_id=555)

    assert run(config_file(), "--log-format", "json") == 1

    assert deletes(stack) == [] and stack.api.status(900) == "ABORTED"
    [update] = stack.api.called("update")
    assert "maps to no usable account on this cluster" in update["slurm_job_state_reason"]
    assert json.loads(update["slurm_job_info"]) == {"job_id": 555, "error": update["slurm_job_state_reason"]}
    [error] = error_lines(capsys)
    assert error["submission_id"] == 900 and "(uid 0), a system account" in error["message"]


def test_another_users_job_purged_to_slurmdbd_is_not_reported_either(stack, config_file, email):
    stack.slurm.accounting[555] = {"job_id": 555, "user": "alice", "state": {"current": "FAILED", "reason": "None"},
                                   "working_directory": "/home/alice/secret"}
    stack.api.add_submission(900, email=email, status="SUBMITTED", slurm_job_id=555)

    assert run(config_file(**{"slurmrestd.slurmdbd": "true"})) == 1

    [update] = stack.api.called("update")
    assert update["slurm_job_state"] == "UNKNOWN" and "secret" not in update["slurm_job_info"]


def test_the_owners_own_jobs_are_still_cancelled_as_the_owner_with_one_request_for_the_unjournalled(
        stack, config_file, email, job_user):
    """Submission 1 went through this tool: its journal row says whose job 100 is. Submission 900 named
    its job at creation (no journal row): its owner comes from GET job-submissions/900."""
    stack.api.add_submission(1, email=email)
    config = config_file()
    assert run(config) == 0
    stack.api.submissions[1]["status"] = "CANCELLED"
    stack.slurm.add_job(555, "RUNNING", "None", job_user.pw_name)
    stack.api.add_submission(900, email=email, status="CANCELLED", slurm_job_id=555)

    assert run(config) == 0

    assert sorted(stack.slurm.cancelled) == [(100, job_user.pw_name), (555, job_user.pw_name)]
    assert stack.api.status(1) == stack.api.status(900) == "ABORTED"
    assert [url for name, url, _ in stack.api.calls if name == "get"] == [
        "http://api.test/jobbergate/job-submissions/900"]


def test_an_array_with_one_task_of_another_user_is_not_followed(stack, config_file, email, job_user):
    """Every record must be the owner's: one that is not (a forged or foreign record) stops it all."""
    for job_id, user in ((28, job_user.pw_name), (29, "alice")):
        stack.slurm.add_job(job_id, "RUNNING", "None", user)
        stack.slurm.jobs[job_id]["array_job_id"] = 28
        stack.slurm.jobs[job_id]["array_task_id"] = job_id - 28
    stack.api.add_submission(900, email=email, status="CANCELLED", slurm_job_id=28)

    assert run(config_file()) == 1

    assert deletes(stack) == [] and stack.api.status(900) == "ABORTED"


# ---------------------------------------------------------------------------------------------
# The pure checks
# ---------------------------------------------------------------------------------------------

USERS = st.sampled_from(["alice", "bob", "root", ""])


@given(owner=USERS.filter(bool), users=st.lists(USERS, min_size=1, max_size=5),
       key=st.sampled_from(["user_name", "user"]))
def test_a_job_is_the_owners_only_when_every_record_names_the_owner(owner, users, key):
    records = [{"job_id": 5, key: user} for user in users]
    if set(users) == {owner}:
        require_job_owner(5, records, owner)
    else:
        with pytest.raises(ForeignJob) as refused:
            require_job_owner(5, records, owner)
        assert not any(user and user in refused.value.message for user in users)  # the owner is told no name


def entry_at(intent_at: float, username: str = "alice") -> JournalEntry:
    return JournalEntry(7, "jobbergate-sync:c:7", username, None, False, None, None, None, intent_at, intent_at)


@given(users=st.sets(USERS, min_size=1, max_size=3),
       submitted=st.lists(st.one_of(st.none(), st.integers(0, 4000)), min_size=1, max_size=3))
def test_a_tagged_job_is_adopted_only_when_the_journal_users_and_submitted_in_the_window(users, submitted):
    entry = entry_at(2000.0)
    window = intent_window(entry, 30)
    standing, why = tagged_job_standing(users, submitted, entry, window)
    if users != {"alice"}:
        assert standing is False and "belongs to" in why
    elif None in submitted:
        assert standing is None
    else:
        assert standing is all(window[0] <= when <= window[1] for when in submitted)
