"""Exactly once past slurmctld's memory: settling a submit interrupted before its job id reached the
journal, when slurmctld may have purged the job (MinJobAge) and only slurmdbd can tell."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
import requests

import jobbergate_sync
from fakes import journal_rows, run, tag
from jobbergate_sync import CrashPoint

TAG = tag(1)
LEGACY_TAG = "jobbergate-sync:test-cluster:1"  # the id alone, as versions before the job script's time wrote it
DBD_DOWN = (500, {"errors": [{"error_number": 7000, "error": "Unable to connect to database"}]})


def journal(tmp_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp_path / "state" / "journal.sqlite3", isolation_level=None)


def age_intent(tmp_path: Path, seconds: float) -> float:
    """Move the journal's intent `seconds` into the past, as if the pass had crashed that long ago."""
    with journal(tmp_path) as db:
        db.execute("UPDATE submissions SET intent_at = intent_at - ?, created_at = created_at - ?", (seconds, seconds))
        return db.execute("SELECT intent_at FROM submissions").fetchone()[0]


@pytest.fixture
def submitted_then_crashed(stack, config_file, email, crash_at, tmp_path):
    """Slurm accepted job 100 for submission 1 and the pass died before the journal had the job id;
    then the job ran, ended, and `purge` makes slurmctld forget it. At "after-journal-intent" the pass
    died before its submit was sent."""
    def make(age: float, point: CrashPoint = CrashPoint.AFTER_SLURM_SUBMIT, **settings: str) -> tuple[str, float]:
        stack.api.add_submission(1, email=email)
        config = config_file(**settings)
        crash_at(point, config)
        assert journal_rows(tmp_path) == [(1, None, 0, None)]
        return config, age_intent(tmp_path, age)

    return make


@pytest.fixture
def never_reached_slurm(stack, config_file, email, tmp_path):
    """The pass recorded its intent, then the submit never reached Slurm (connection refused)."""
    def make(age: float, **settings: str) -> tuple[str, float]:
        stack.api.add_submission(1, email=email)
        config = config_file(**settings)
        stack.slurm.answers["submit"] = [requests.ConnectionError("refused")]
        assert run(config) == jobbergate_sync.EX_UNAVAILABLE
        assert stack.slurm.submitted == [] and journal_rows(tmp_path) == [(1, None, 0, None)]
        return config, age_intent(tmp_path, age)

    return make


def dbd_lookups(stack) -> list[str]:
    return [url for method, url, _ in stack.slurm.requests if "/slurmdb/" in url or url.endswith("/diag")]


def test_found_by_its_tag_in_slurmdbd_after_the_purge(stack, submitted_then_crashed, tmp_path):
    config, intent_at = submitted_then_crashed(600, slurmrestd__slurmdbd="true")
    stack.slurm.purge(100, submitted_at=intent_at + 1, job_comment=True)

    assert run(config) == 0

    assert len(stack.slurm.submitted) == 1
    [report] = stack.api.called("submitted")
    assert report["slurm_job_id"] == 100 and report["slurm_job_state"] == "COMPLETED"
    assert stack.api.status(1) == "DONE"  # agent/submitted alone would leave a finished job SUBMITTED
    assert journal_rows(tmp_path) == [(1, 100, 1, "COMPLETED")]
    assert run(config) == 0
    assert len(stack.slurm.submitted) == 1 and len(stack.api.called("update")) == 1


def test_found_by_owner_name_directory_and_time_without_stored_comments(stack, submitted_then_crashed, job_user,
                                                                        tmp_path):
    config, intent_at = submitted_then_crashed(600, slurmrestd__slurmdbd="true")
    ours = stack.slurm.purge(100, submitted_at=intent_at + 1, job_comment=False)
    decoys = {
        7: {"user": "someone-else"},
        8: {"working_directory": "/elsewhere"},
        9: {"name": "another-name"},
        10: {"time": {"submission": int(intent_at) - 3600}},  # before the intent: an older run
        11: {"comment": {"job": tag(2), "administrator": None, "system": None}},
    }
    for job_id, differences in decoys.items():
        stack.slurm.accounting[job_id] = {**ours, "job_id": job_id, **differences}

    assert run(config) == 0

    assert len(stack.slurm.submitted) == 1
    assert stack.api.submissions[1]["slurm_job_id"] == 100
    assert journal_rows(tmp_path) == [(1, 100, 1, "COMPLETED")]


def test_two_jobs_that_could_be_it_are_never_guessed_between(stack, submitted_then_crashed, caplog):
    config, intent_at = submitted_then_crashed(600, slurmrestd__slurmdbd="true")
    ours = stack.slurm.purge(100, submitted_at=intent_at + 1, job_comment=False)
    stack.slurm.accounting[101] = {**ours, "job_id": 101, "time": {"submission": int(intent_at) + 2}}

    assert run(config) == 0

    assert stack.api.status(1) == "REJECTED"
    assert "slurmdbd holds 2 jobs that could be it (100, 101)" in stack.api.submissions[1]["report_message"]
    assert len(stack.slurm.submitted) == 1


@pytest.mark.parametrize("age, outcome", [(0, "SUBMITTED"), (600, "REJECTED")])
def test_killed_between_intent_and_submit(stack, submitted_then_crashed, age, outcome):
    """The common case: nothing reached Slurm. Soon after, slurmctld's silence proves it; past the
    horizon without slurmdbd nothing can, and the job is not risked twice."""
    config, _ = submitted_then_crashed(age, CrashPoint.AFTER_JOURNAL_INTENT)

    assert run(config) == 0

    assert stack.api.status(1) == outcome
    assert len(stack.slurm.submitted) == (1 if outcome == "SUBMITTED" else 0)


def test_a_young_intent_whose_job_has_already_been_purged_is_settled_by_slurmdbd(stack, submitted_then_crashed,
                                                                                tmp_path):
    """MinJobAge (30 s here) below purge_horizon (300 s, the default): the job ended and slurmctld forgot
    it a minute after the crash. slurmctld's silence proves nothing; slurmdbd finds it, whatever the age."""
    config, intent_at = submitted_then_crashed(60, slurmrestd__slurmdbd="true", slurmrestd__purge_horizon=300)
    stack.slurm.purge(100, submitted_at=intent_at + 1)

    assert run(config) == 0

    assert len(stack.slurm.submitted) == 1  # never run twice
    assert stack.api.submissions[1]["slurm_job_id"] == 100 and journal_rows(tmp_path) == [(1, 100, 1, "COMPLETED")]


def test_a_young_intent_absent_everywhere_is_submitted_once_slurmdbd_says_so(stack, never_reached_slurm):
    config, _ = never_reached_slurm(10, slurmrestd__slurmdbd="true", slurmrestd__purge_horizon=300)

    assert run(config) == 0

    assert len(stack.slurm.submitted) == 1 and stack.api.status(1) == "SUBMITTED"
    assert dbd_lookups(stack) != []


def test_old_intent_absent_everywhere_is_submitted_once_slurmdbd_is_complete(stack, never_reached_slurm):
    config, _ = never_reached_slurm(600, slurmrestd__slurmdbd="true")
    stack.slurm.dbd_backlog = 3  # slurmctld still holds records slurmdbd has not got

    assert run(config) == jobbergate_sync.EX_UNAVAILABLE
    assert stack.slurm.submitted == [] and stack.api.status(1) == "CREATED"

    stack.slurm.dbd_backlog = 0
    assert run(config) == 0
    assert len(stack.slurm.submitted) == 1 and stack.api.status(1) == "SUBMITTED"
    # The window opens a clock slack (60 s) before the intent: 660 s ago, in whole minutes plus a margin.
    assert any(url.endswith("/slurmdb/v0.0.38/jobs?start_time=now-13minutes") for url in dbd_lookups(stack))


def test_a_backlog_that_drains_within_seconds_is_waited_for_before_slurmdbd_is_read(stack, never_reached_slurm):
    config, _ = never_reached_slurm(600, slurmrestd__slurmdbd="true")
    stack.slurm.dbd_backlogs = [2]  # then empty: slurmctld has handed slurmdbd its records
    stack.slurm.requests.clear()

    assert run(config) == 0

    assert len(stack.slurm.submitted) == 1 and stack.api.status(1) == "SUBMITTED"
    lookups = dbd_lookups(stack)
    assert [url.endswith("/diag") for url in lookups[:3]] == [True, True, False]  # the backlog read twice, then slurmdbd


def test_old_intent_absent_everywhere_is_rejected_when_slurmctld_does_not_report_its_backlog(stack,
                                                                                            never_reached_slurm):
    config, _ = never_reached_slurm(600, slurmrestd__slurmdbd="true")
    stack.slurm.dbd_backlog = None

    assert run(config) == 0

    assert stack.slurm.submitted == [] and stack.api.status(1) == "REJECTED"
    assert "whether slurmdbd has every job record" in stack.api.submissions[1]["report_message"]


def test_slurmdbd_down_leaves_it_for_the_next_pass_with_exit_69(stack, submitted_then_crashed, tmp_path):
    config, intent_at = submitted_then_crashed(600, slurmrestd__slurmdbd="true")
    stack.slurm.purge(100, submitted_at=intent_at + 1)
    stack.slurm.answers["dbd_jobs"] = [DBD_DOWN]

    assert run(config) == jobbergate_sync.EX_UNAVAILABLE

    assert stack.api.status(1) == "CREATED" and stack.api.called("rejected") == []
    assert len(stack.slurm.submitted) == 1 and journal_rows(tmp_path) == [(1, None, 0, None)]
    assert run(config) == 0  # slurmdbd is back: found by its tag
    assert stack.api.submissions[1]["slurm_job_id"] == 100 and len(stack.slurm.submitted) == 1


def test_no_slurmdbd_and_an_old_intent_is_rejected_telling_the_owner_it_may_have_run(
        stack, submitted_then_crashed, tmp_path, capsys):
    config, intent_at = submitted_then_crashed(600)
    stack.slurm.purge(100, submitted_at=intent_at + 1)

    assert run(config, "--log-format", "json") == 0

    when = jobbergate_sync.utc_text(intent_at)
    message = stack.api.submissions[1]["report_message"]
    assert stack.api.status(1) == "REJECTED"
    assert f"may already have run since {when}" in message and "resubmit" in message
    assert len(stack.slurm.submitted) == 1  # never a second submit
    assert journal_rows(tmp_path) == []
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    [error] = [line for line in lines if line["level"] == "ERROR"]
    assert error["submission_id"] == 1 and TAG in error["message"] and when in error["message"]
    assert run(config) == 0 and len(stack.slurm.submitted) == 1


def test_a_cancelled_submission_with_an_unsettled_intent_is_closed_not_submitted(stack, submitted_then_crashed):
    config, intent_at = submitted_then_crashed(600)
    stack.slurm.purge(100, submitted_at=intent_at + 1)
    stack.api.submissions[1]["status"] = "CANCELLED"

    assert run(config) == 0

    assert stack.api.status(1) == "ABORTED" and len(stack.slurm.submitted) == 1


OLD_SCHEMA = """CREATE TABLE submissions (submission_id INTEGER PRIMARY KEY, tag TEXT NOT NULL, username TEXT,
    slurm_job_id INTEGER, reported INTEGER NOT NULL DEFAULT 0, last_state TEXT, last_reason TEXT,
    last_reported_at REAL, created_at REAL NOT NULL)"""


def old_journal(tmp_path: Path, intent_created_at: float) -> Path:
    (tmp_path / "state").mkdir(mode=0o700)
    path = tmp_path / "state" / "journal.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(OLD_SCHEMA)
        db.execute("INSERT INTO submissions (submission_id, tag, username, created_at) VALUES (1, ?, 'alice', ?)",
                   (LEGACY_TAG, intent_created_at))
        db.execute("INSERT INTO submissions (submission_id, tag, slurm_job_id, reported, last_state, created_at) "
                   "VALUES (2, 'jobbergate-sync:test-cluster:2', 200, 1, 'RUNNING', 5.0)")
    path.chmod(0o600)
    return path


def test_an_old_journal_gains_the_intent_columns_and_keeps_its_rows(tmp_path):
    path = old_journal(tmp_path, 1234.5)

    entries = {entry.submission_id: entry for entry in jobbergate_sync.Journal(str(path)).entries()}

    assert entries[1].intent_at == 1234.5 and entries[1].job_name is None and entries[1].working_directory is None
    assert entries[2].intent_at is None and entries[2].slurm_job_id == 200 and entries[2].reported
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == jobbergate_sync.JOURNAL_VERSION
    jobbergate_sync.Journal(str(path))  # a second open is a no-op
    scratch = jobbergate_sync.Journal.scratch_copy_of(str(path))
    assert scratch.get(1).intent_at == 1234.5


def test_an_intent_from_an_old_journal_is_settled_by_tag_or_rejected(stack, config_file, email, tmp_path):
    old_journal(tmp_path, time.time() - 3600)
    stack.api.add_submission(1, email=email)
    stack.api.add_submission(2, status="SUBMITTED", slurm_job_id=200)
    stack.slurm.add_job(200, "RUNNING")

    assert run(config_file(slurmrestd__slurmdbd="true")) == 0

    assert stack.api.status(1) == "REJECTED"  # no record by tag, and no name and directory to search by
    assert "predates the job name and directory" in stack.api.submissions[1]["report_message"]
    assert stack.slurm.submitted == []


def test_the_journal_s_record_of_an_earlier_submission_with_the_same_id_is_forgotten_and_this_one_submitted(
        stack, config_file, email, tmp_path, capsys):
    """Jobbergate's database recreated or restored: its submission 1 is not the one the journal holds."""
    config = config_file()
    stack.api.add_submission(1, email=email)
    assert run(config) == 0
    earlier_job = stack.api.submissions[1]["slurm_job_id"]
    stack.api.add_submission(1, email=email, script_created_at="2026-12-04T09:15:02.118204Z")
    capsys.readouterr()

    assert run(config, "--log-format", "text") == 0

    assert len(stack.slurm.submitted) == 2
    assert stack.api.status(1) == "SUBMITTED" and stack.api.submissions[1]["slurm_job_id"] != earlier_job
    assert stack.slurm.submitted[1]["job"]["comment"] == tag(1, script_created_at="2026-12-04T09:15:02.118204Z")
    [warning] = warnings_of(capsys)
    assert "forgetting the journal's record of an earlier submission with the same id" in warning and TAG in warning


def test_a_pending_submissions_intent_is_kept_however_old(stack, never_reached_slurm, tmp_path):
    config, _ = never_reached_slurm(2 * jobbergate_sync.STALE_INTENT_SECONDS, slurmrestd__slurmdbd="true")
    stack.slurm.answers["dbd_jobs"] = [DBD_DOWN]

    assert run(config) == jobbergate_sync.EX_UNAVAILABLE

    assert journal_rows(tmp_path) == [(1, None, 0, None)]  # not pruned as stale: it is all that stops a resubmit


@pytest.mark.parametrize("version, expected", [
    ("v0.0.38", {"start_time": "now-12minutes"}),  # no users= there (error 9000), sacct-style times
    ("v0.0.41", {"users": "alice", "start_time": "now-12minutes"}),  # 24.11 refuses an epoch there (error 9202)
])
def test_the_slurmdbd_query_fits_the_api_version(version, expected, monkeypatch):
    seen = {}
    rest = jobbergate_sync.SlurmRest.__new__(jobbergate_sync.SlurmRest)
    rest.base, rest.api_version_setting, rest.query_user = "http://s", version, "slurm"

    def request(method, path, user, idempotent, params):
        seen.update({key: str(value) for key, value in dict(params).items()})
        return type("Response", (), {"status_code": 200, "text": ""})(), {"errors": [], "jobs": [{"job_id": 1}, "junk"]}

    rest._request = request
    monkeypatch.setattr(jobbergate_sync.time, "time", lambda: 1000 + 600)
    assert rest.accounting_jobs_since("alice", 1000) == [{"job_id": 1}]
    assert seen == expected


# ---------------------------------------------------------------------------------------------
# A tag is only a comment: anyone can write it into a job of their own
# ---------------------------------------------------------------------------------------------


def warnings_of(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if " WARNING " in line]


def test_a_tagged_job_of_another_user_is_ignored_and_the_owners_job_adopted(stack, submitted_then_crashed, capsys):
    config, _ = submitted_then_crashed(0)
    stack.slurm.add_job(50, "PENDING", "JobHeldUser", "evil1", TAG)  # planted by another user, lower id

    assert run(config, "--log-format", "text") == 0

    assert stack.api.submissions[1]["slurm_job_id"] == 100 and stack.slurm.cancelled == []
    [warning] = [line for line in warnings_of(capsys) if "ignoring" in line]
    assert "Slurm job 50 of user evil1" in warning and TAG in warning


def test_a_planted_tag_never_stands_in_for_a_submit_that_did_not_reach_slurm(stack, submitted_then_crashed, job_user):
    config, _ = submitted_then_crashed(0, CrashPoint.AFTER_JOURNAL_INTENT)
    stack.slurm.add_job(50, "RUNNING", "None", "evil1", TAG)

    assert run(config) == 0

    [submitted] = stack.slurm.submitted
    assert submitted["user"] == job_user.pw_name and stack.api.submissions[1]["slurm_job_id"] == 100
    assert stack.slurm.cancelled == []


def test_a_tagged_job_of_the_owner_submitted_before_the_intent_is_not_adopted(stack, submitted_then_crashed, capsys):
    config, intent_at = submitted_then_crashed(0)
    stack.slurm.add_job(60, "RUNNING", "None", stack.slurm.jobs[100]["user_name"], TAG)
    stack.slurm.jobs[60]["submit_time"] = int(intent_at) - 3600

    assert run(config, "--log-format", "text") == 0

    assert stack.api.submissions[1]["slurm_job_id"] == 100
    assert any("Slurm job 60" in line and "outside the submit's window" in line for line in warnings_of(capsys))


def test_two_tagged_jobs_of_the_owner_are_unsettled_and_neither_is_cancelled(stack, submitted_then_crashed):
    config, _ = submitted_then_crashed(0)
    stack.slurm.add_job(101, "PENDING", "Priority", stack.slurm.jobs[100]["user_name"], TAG)

    assert run(config) == 0

    assert stack.api.status(1) == "REJECTED" and stack.slurm.cancelled == []
    assert "slurmctld holds 2 job(s)" in stack.api.submissions[1]["report_message"]
    assert len(stack.slurm.submitted) == 1


def test_a_tagged_slurmdbd_record_of_another_user_is_ignored(stack, submitted_then_crashed, capsys):
    """slurmdbd on v0.0.38 cannot select a user's jobs: everyone's come back."""
    config, intent_at = submitted_then_crashed(600, slurmrestd__slurmdbd="true")
    ours = stack.slurm.purge(100, submitted_at=intent_at + 1)
    stack.slurm.accounting[50] = {**ours, "job_id": 50, "user": "evil1"}

    assert run(config, "--log-format", "text") == 0

    assert stack.api.submissions[1]["slurm_job_id"] == 100 and len(stack.slurm.submitted) == 1
    assert any("Slurm job 50 of user evil1 in slurmdbd" in line for line in warnings_of(capsys))
