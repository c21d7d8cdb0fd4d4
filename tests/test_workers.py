"""Submissions side by side: the download cache of a pass, no read-back of a job just submitted, and
the `[run] workers` threads (same outcomes as one at a time, exactly once, deadline, order of a dry
run's plan, what ends a pass, counters)."""

from __future__ import annotations

import json
import os
import pwd
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests

import jobbergate_sync
from fakes import API, run, tag
from jobbergate_sync import CrashPoint, DownloadCache, ScriptFile

SWEEP_FILES = {"job.sh": b"#!/bin/bash\n#SBATCH --time=5\necho sweep\n", "input.txt": b"shared input\n"}


def summary_of(capsys) -> dict:
    """The fields of the pass's summary line (the last JSON log line)."""
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    return next(line for line in reversed(lines) if line["message"].startswith("pass finished"))


def file_downloads(stack) -> list[str]:
    return [url for name, url, _ in stack.api.calls if name == "file"]


# ---------------------------------------------------------------------------------------------
# The download cache
# ---------------------------------------------------------------------------------------------


def test_a_sweep_downloads_each_file_once_and_stages_it_for_every_submission(stack, config_file, email, job_user,
                                                                            exec_root):
    for submission_id in range(1, 21):
        stack.api.add_submission(submission_id, SWEEP_FILES, email=email, script_id=7,
                                 execution_directory=f"{exec_root}/{job_user.pw_name}/run-{submission_id}")

    assert run(config_file(**{"run.workers": 4})) == 0

    assert sorted(file_downloads(stack)) == sorted(f"{API}/job-scripts/7/upload/{name}" for name in SWEEP_FILES)
    assert len(stack.slurm.submitted) == 20
    for submission_id in range(1, 21):
        assert stack.api.status(submission_id) == "SUBMITTED"
        directory = exec_root / job_user.pw_name / f"run-{submission_id}"
        for name, content in SWEEP_FILES.items():
            assert (directory / name).read_bytes() == content
            assert (directory / name).stat().st_uid == job_user.pw_uid


@pytest.mark.skipif(os.geteuid() != 0, reason="staging as two different users needs root")
def test_submissions_of_one_script_by_two_users_are_each_staged_as_their_own_user(stack, config_file, exec_root):
    other = pwd.getpwnam("daemon")
    own_directory = exec_root / other.pw_name
    own_directory.mkdir()
    os.chown(own_directory, other.pw_uid, other.pw_gid)
    owners = {1: "nobody", 2: "daemon", 3: "nobody", 4: "daemon"}
    for submission_id, owner in owners.items():
        stack.api.add_submission(submission_id, SWEEP_FILES, email=f"{owner}@example.com", script_id=7,
                                 execution_directory=f"{exec_root}/{owner}/run-{submission_id}")

    assert run(config_file(**{"run.workers": 4, "mapper.min_uid": 1})) == 0

    assert len(file_downloads(stack)) == len(SWEEP_FILES)
    assert sorted(entry["user"] for entry in stack.slurm.submitted) == ["daemon", "daemon", "nobody", "nobody"]
    for submission_id, owner in owners.items():
        staged = exec_root / owner / f"run-{submission_id}" / "job.sh"
        assert staged.read_bytes() == SWEEP_FILES["job.sh"]
        assert staged.stat().st_uid == pwd.getpwnam(owner).pw_uid


def test_a_failed_download_is_not_kept_for_the_submissions_that_share_the_file(stack, config_file, email):
    for submission_id in (1, 2, 3):
        stack.api.add_submission(submission_id, {"job.sh": SWEEP_FILES["job.sh"]}, email=email, script_id=7)
    stack.api.answers["file"] = [(404, {"detail": "job_script_files row not found"})]

    assert run(config_file(**{"run.workers": 1})) == 0

    assert [stack.api.status(i) for i in (1, 2, 3)] == ["REJECTED", "SUBMITTED", "SUBMITTED"]
    assert len(file_downloads(stack)) == 2  # the refused one, then one download for the other two


def test_an_interrupted_download_is_retried_and_nothing_half_written_is_staged(stack, config_file, email, job_user,
                                                                               exec_root):
    for submission_id in (1, 2):
        stack.api.add_submission(submission_id, {"job.sh": SWEEP_FILES["job.sh"]}, email=email, script_id=7,
                                 execution_directory=f"{exec_root}/{job_user.pw_name}/run-{submission_id}")
    stack.api.answers["file"] = [requests.ConnectionError("connection reset mid-download")]

    assert run(config_file(**{"run.workers": 2})) == 0

    assert len(file_downloads(stack)) == 2  # the failed attempt and its retry; the second submission reuses it
    for submission_id in (1, 2):
        staged = exec_root / job_user.pw_name / f"run-{submission_id}" / "job.sh"
        assert staged.read_bytes() == SWEEP_FILES["job.sh"]


class StubApi:
    """Serves file contents by (parent id, name) and counts downloads."""

    def __init__(self, contents: dict[tuple[int, str], bytes]):
        self.contents = contents
        self.downloads: list[tuple[int, str]] = []

    def download(self, parent_id: int, filename: str, destination, max_bytes: int) -> int:
        self.downloads.append((parent_id, filename))
        destination.write(self.contents[(parent_id, filename)])
        destination.flush()
        return len(self.contents[(parent_id, filename)])


def pending_item(submission_id: int, parent_id: int, *names: str) -> dict:
    return {"id": submission_id, "job_script": {"files": [{"parent_id": parent_id, "filename": name} for name in names]}}


def test_the_cache_lets_a_file_go_after_its_last_submission_and_closes_everything_at_the_end():
    api = StubApi({(7, "job.sh"): b"seven", (8, "job.sh"): b"eight"})
    items = [pending_item(1, 7, "job.sh"), pending_item(2, 7, "job.sh"), pending_item(3, 8, "job.sh")]
    with tempfile.TemporaryDirectory() as directory:
        cache = DownloadCache(api, directory, 1000)
        for item in items:
            cache.expect(item)
        first = cache.open_file(ScriptFile(7, "job.sh", True), 1)
        cache.release(items[0])
        assert (7, "job.sh") in cache.kept  # submission 2 still needs it
        second = cache.open_file(ScriptFile(7, "job.sh", True), 2)
        cache.release(items[1])
        assert (7, "job.sh") not in cache.kept
        assert jobbergate_sync.read_whole(first) == jobbergate_sync.read_whole(second) == b"seven"
        third = cache.open_file(ScriptFile(8, "job.sh", True), 3)
        assert list(cache.kept) == [(8, "job.sh")]
        cache.close()
        assert cache.kept == {} and cache.kept_bytes == 0
        assert jobbergate_sync.read_whole(third) == b"eight"  # a submission's own descriptor outlives the cache's
        assert os.listdir(directory) == []  # unlinked from the start
        for descriptor in (first, second, third):
            os.close(descriptor)
    assert api.downloads == [(7, "job.sh"), (8, "job.sh")]


def test_the_cache_keeps_at_most_its_budget_oldest_first():
    api = StubApi({(parent, "f"): bytes(40) for parent in (1, 2, 3)})
    cache = DownloadCache(api, None, 1000, budget=100)
    for parent in (1, 2, 3):
        cache.expect(pending_item(parent, parent, "f"))
        cache.expect(pending_item(parent + 10, parent, "f"))  # a later submission shares each file
    descriptors = [cache.open_file(ScriptFile(parent, "f", True), parent) for parent in (1, 2, 3)]
    assert list(cache.kept) == [(2, "f"), (3, "f")] and cache.kept_bytes == 80
    os.close(cache.open_file(ScriptFile(1, "f", True), 11))  # let go for the budget: downloaded again
    assert api.downloads == [(1, "f"), (2, "f"), (3, "f"), (1, "f")]
    assert all(jobbergate_sync.read_whole(descriptor) == bytes(40) for descriptor in descriptors)
    for descriptor in descriptors:
        os.close(descriptor)
    cache.close()


# ---------------------------------------------------------------------------------------------
# No read-back after a submit
# ---------------------------------------------------------------------------------------------


def test_a_submitted_job_is_reported_pending_without_reading_it_back(stack, config_file, email):
    for submission_id in range(1, 6):
        stack.api.add_submission(submission_id, email=email)

    assert run(config_file()) == 0

    job_reads = [url for method, url, _ in stack.slurm.requests if method == "GET" and "/job/" in url]
    assert job_reads == []
    reports = stack.api.called("submitted")
    assert sorted(report["slurm_job_id"] for report in reports) == [100, 101, 102, 103, 104]
    assert {report["slurm_job_state"] for report in reports} == {"PENDING"}
    assert stack.api.called("update") == []


def test_a_job_id_from_an_earlier_pass_is_still_read_for_its_state(stack, config_file, email, crash_at):
    stack.api.add_submission(1, email=email)
    config = config_file()
    crash_at(CrashPoint.AFTER_JOURNAL_JOB, config)
    stack.slurm.jobs[100].update(job_state="RUNNING", state_reason="None")

    assert run(config) == 0

    assert [report["slurm_job_state"] for report in stack.api.called("submitted")] == ["RUNNING"]


# ---------------------------------------------------------------------------------------------
# The workers
# ---------------------------------------------------------------------------------------------


def mixed_backlog(stack, email: str) -> None:
    """Good submissions, refused ones and followed ones, in one pass."""
    for submission_id in range(1, 11):
        stack.api.add_submission(submission_id, email=email)
    stack.api.add_submission(11, email="root@example.com")  # refused: root
    stack.api.add_submission(12, {"job.sh": b"no shebang\n"}, email=email)  # refused: not a script
    stack.api.add_submission(13, email=email, sbatch_arguments=["--no-such-option"])
    for submission_id, state in ((20, "COMPLETED"), (21, "RUNNING"), (22, "FAILED")):
        stack.api.add_submission(submission_id, email=email, status="SUBMITTED", slurm_job_id=submission_id * 10)
        stack.slurm.add_job(submission_id * 10, state)


@pytest.mark.parametrize("workers", [1, 4])
def test_one_worker_and_four_give_the_same_outcomes_and_counts(stack, config_file, email, capsys, workers):
    mixed_backlog(stack, email)

    assert run(config_file(**{"run.workers": workers})) == 0

    statuses = {submission_id: stack.api.status(submission_id) for submission_id in stack.api.submissions}
    assert statuses == {**{i: "SUBMITTED" for i in range(1, 11)}, 11: "REJECTED", 12: "REJECTED", 13: "REJECTED",
                        20: "DONE", 21: "SUBMITTED", 22: "ABORTED"}
    summary = summary_of(capsys)
    assert (summary["submitted"], summary["rejected"], summary["updated"], summary["errors"]) == (10, 3, 3, 0)
    assert sorted(job["job"]["comment"] for job in stack.slurm.submitted) == sorted(
        tag(i) for i in range(1, 11))


@pytest.mark.parametrize("point", [CrashPoint.AFTER_JOURNAL_INTENT, CrashPoint.AFTER_SLURM_SUBMIT,
                                   CrashPoint.AFTER_JOURNAL_JOB, CrashPoint.AFTER_AGENT_SUBMITTED])
def test_exactly_once_with_four_workers_when_the_pass_dies_mid_way(stack, config_file, email, crash_at, point):
    for submission_id in range(1, 13):
        stack.api.add_submission(submission_id, email=email)
    config = config_file(**{"run.workers": 4})

    crash_at(point, config)
    assert run(config) == 0

    comments = [job["job"]["comment"] for job in stack.slurm.submitted]
    assert sorted(comments) == sorted(tag(i) for i in range(1, 13))  # each once
    for submission_id in range(1, 13):
        submission = stack.api.submissions[submission_id]
        assert submission["status"] == "SUBMITTED"
        assert stack.slurm.jobs[submission["slurm_job_id"]]["comment"] == tag(submission_id)


def test_a_dry_run_prints_its_plan_in_the_pending_order_whichever_worker_ends_first(stack, config_file, email,
                                                                                   capsys):
    for submission_id in range(1, 13):
        stack.api.add_submission(submission_id, email=email)
    original = stack.api._file

    def early_ones_slow(request, body, script_id, filename):
        time.sleep(0.2 if int(script_id) - 1000 <= 3 else 0)
        return original(request, body, script_id, filename)

    stack.api._file = early_ones_slow

    assert run(config_file(**{"run.workers": 4}), "--dry-run") == 0

    planned = [int(line.split()[3]) for line in capsys.readouterr().out.splitlines() if line.startswith("would submit")]
    assert planned == list(range(1, 13))


def test_no_submission_starts_after_the_deadline_and_those_under_way_finish(stack, config_file, email, capsys):
    for submission_id in range(1, 21):
        stack.api.add_submission(submission_id, email=email)
    stack.slurm.slow_down_submits(0.4)

    assert run(config_file(**{"run.workers": 4, "run.deadline": 1})) == 0

    statuses = [stack.api.status(i) for i in range(1, 21)]
    submitted = statuses.count("SUBMITTED")
    assert 4 <= submitted < 20
    assert statuses.count("CREATED") == 20 - submitted  # nothing half done: submitted means reported
    assert len(stack.slurm.submitted) == submitted
    summary = summary_of(capsys)
    assert summary["submitted"] == submitted


def test_an_authentication_failure_in_one_worker_ends_the_pass(stack, config_file, email):
    for submission_id in range(1, 21):
        stack.api.add_submission(submission_id, email=email)
    stack.slurm.answers["submit"] = [401]

    assert run(config_file(**{"run.workers": 4})) == jobbergate_sync.EX_NOPERM

    submitted = [stack.api.status(i) for i in range(1, 21)].count("SUBMITTED")
    assert submitted <= 3  # at most the other workers' items under way finished; none started after
    assert stack.api.health == []  # the pass ended: no later phase ran


def test_workers_replace_a_refused_api_token_once(stack, config_file, email):
    config = config_file(**{"run.workers": 4})
    assert run(config) == 0
    for submission_id in range(1, 13):
        stack.api.add_submission(submission_id, email=email)
    stack.api.revoked.add(stack.issuer.issued[0])

    assert run(config) == 0

    assert len(stack.issuer.issued) == 2
    assert all(stack.api.status(i) == "SUBMITTED" for i in range(1, 13))


def test_lines_logged_by_a_worker_name_its_submission(stack, config_file, email, capsys):
    stack.api.add_submission(1, email=email)
    stack.api.answers["file"] = [requests.ConnectionError("lost")]  # retried, logged deep in the HTTP layer

    run(config_file(**{"run.workers": 4}))

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    retry = next(line for line in lines if line["message"].startswith("retrying after"))
    assert retry["submission_id"] == 1  # logged without a context of its own, inside submission 1's work


@pytest.mark.parametrize("value", ["0", "33", "four"])
def test_workers_must_be_a_number_from_1_to_32(stack, config_file, capsys, value):
    assert run(config_file(**{"run.workers": value})) == jobbergate_sync.EX_CONFIG
    assert "[run] workers" in capsys.readouterr().err


def test_the_connection_pool_keeps_a_connection_per_worker():
    http = jobbergate_sync.Http(jobbergate_sync.Deadline(10), 1, 0, workers=6)
    adapter = http.session.get_adapter("https://api.example")
    assert adapter._pool_maxsize == 6 and http.session.get_adapter("http://slurm.example") is adapter


def test_journal_writes_from_many_threads_all_land(tmp_path: Path):
    journal = jobbergate_sync.Journal(str(tmp_path / "journal.sqlite3"))

    def record(first: int) -> None:
        for submission_id in range(first, first + 50):
            journal.record_intent(submission_id, f"tag-{submission_id}", "alice", "job", "/home/alice")
            journal.record_job(submission_id, submission_id + 1000)

    threads = [threading.Thread(target=record, args=(first,)) for first in (0, 50, 100, 150)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert journal.size() == 200
    assert {entry.slurm_job_id - entry.submission_id for entry in journal.entries()} == {1000}
