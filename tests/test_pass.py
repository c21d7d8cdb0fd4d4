"""One pass end to end against the fakes: submit pending, update active, health, exit codes."""

from __future__ import annotations

import json
import os
from urllib.parse import urlparse

import pytest
import requests

import jobbergate_sync
from fakes import journal_rows, run, tag
from jobbergate_sync import CrashPoint

SCRIPT = b"""#!/bin/bash
#SBATCH --job-name=from-script
#SBATCH --time=10 --output=out-%j.txt
#SBATCH --ntasks 2   # two tasks
echo hello
#SBATCH --partition=ignored-after-the-block
"""


def test_happy_path_submits_writes_files_as_the_user_and_reports(stack, config_file, email, job_user, exec_root, tmp_path):
    stack.api.add_submission(1, {"job.sh": SCRIPT, "helper.sh": b"echo helper\n"}, email=email,
                             sbatch_arguments=["--time=20", "-N 2"], name="my-submission")

    assert run(config_file()) == 0

    [submitted] = stack.slurm.submitted
    job = submitted["job"]
    assert submitted["user"] == job_user.pw_name
    assert submitted["script"] == SCRIPT.decode()
    assert job["name"] == "from-script"
    assert job["time_limit"] == 20  # sbatch_arguments win over #SBATCH
    assert job["tasks"] == 2 and job["nodes"] == "2"
    assert "partition" not in job  # a line after the block is not a directive
    workdir = exec_root / job_user.pw_name
    assert job["current_working_directory"] == str(workdir)
    assert job["standard_output"] == f"{workdir}/out-%j.txt"
    assert job["environment"] == {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": job_user.pw_dir,
                                  "USER": job_user.pw_name, "LOGNAME": job_user.pw_name}
    assert job["comment"] == tag(1)
    for name, content in (("job.sh", SCRIPT), ("helper.sh", b"echo helper\n")):
        path = workdir / name
        assert path.read_bytes() == content
        assert path.stat().st_uid == job_user.pw_uid
    assert stack.api.status(1) == "SUBMITTED"
    [report] = stack.api.called("submitted")
    assert report["slurm_job_id"] == 100 and report["slurm_job_state"] == "PENDING"
    assert "slurm_job_state_reason" not in report  # not read back: its reason comes with a later update
    assert json.loads(report["slurm_job_info"])["job_id"] == 100
    assert stack.api.called("update") == []  # not updated again in the pass that reported it
    assert stack.api.health == [90]
    assert journal_rows(tmp_path) == [(1, 100, 1, "PENDING")]


def test_reads_every_page_before_acting_and_deduplicates(stack, config_file, email):
    for submission_id in range(1, 251):
        stack.api.add_submission(submission_id, email=email)

    assert run(config_file(**{"jobbergate.page_size": 100})) == 0

    names = [name for name, _, _ in stack.api.calls]
    pending_pages = [url for name, url, _ in stack.api.calls if name == "pending"]
    assert len(pending_pages) == 3
    assert names.index("submitted") > max(i for i, name in enumerate(names) if name == "pending")
    assert len(stack.slurm.submitted) == 250
    assert all(stack.api.status(i) == "SUBMITTED" for i in range(1, 251))


def test_max_pages_leaves_the_rest_for_the_next_pass(stack, config_file, email):
    for submission_id in range(1, 6):
        stack.api.add_submission(submission_id, email=email)
    config = config_file(**{"jobbergate.page_size": 2, "jobbergate.max_pages": 2})

    assert run(config) == 0
    assert len(stack.slurm.submitted) == 4
    assert run(config) == 0
    assert len(stack.slurm.submitted) == 5


def test_token_is_cached_0600_and_reused_across_passes(stack, config_file, tmp_path):
    config = config_file()
    assert run(config) == 0
    assert run(config) == 0
    assert len(stack.issuer.issued) == 1
    cache = tmp_path / "state" / "token.json"
    assert cache.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700


def test_token_near_expiry_is_replaced(stack, config_file):
    stack.issuer.ttl = 30  # below the 60 s margin: never reusable
    config = config_file()
    assert run(config) == 0
    assert run(config) == 0
    assert len(stack.issuer.issued) == 2


def test_401_fetches_a_new_token_once_and_retries(stack, config_file):
    config = config_file()
    assert run(config) == 0
    stack.api.revoked.add(stack.issuer.issued[0])
    assert run(config) == 0
    assert len(stack.issuer.issued) == 2


def test_persistent_401_is_an_authentication_failure(stack, config_file):
    config = config_file()
    assert run(config) == 0
    stack.api.reject_all_tokens = True
    assert run(config) == jobbergate_sync.EX_NOPERM
    assert len(stack.issuer.issued) == 2  # the cached token, then exactly one fresh one


def test_wrong_client_secret_exits_77(stack, config_file, tmp_path):
    config = config_file()
    (tmp_path / "client_secret").write_text("wrong-secret")
    assert run(config) == jobbergate_sync.EX_NOPERM
    assert stack.api.calls == []


@pytest.mark.parametrize("owner, message", [
    ("ghost-user-xyz@example.com", "'ghost-user-xyz@example.com' maps to user 'ghost-user-xyz', which does not exist"),
    ("root@example.com", "'root@example.com' maps to 'root' (uid 0), a system account"),
    ("daemon@example.com", "'daemon@example.com' maps to 'daemon' (uid 1), a system account"),
])
def test_unmappable_owners_are_rejected_and_nothing_is_submitted(stack, config_file, owner, message):
    stack.api.add_submission(1, email=owner)
    assert run(config_file()) == 0
    assert stack.api.status(1) == "REJECTED"
    assert message in stack.api.submissions[1]["report_message"]
    assert stack.slurm.submitted == []


@pytest.mark.parametrize("files, arguments, message", [
    ({"../x": b"#!/bin/sh\n"}, None, "'../x' is not a plain file name"),
    ({"job.sh": b"#!/bin/sh\n", "a/b": b""}, None, "'a/b' is not a plain file name"),
    ({"job.sh": b"#!/bin/sh\n#SBATCH --uid=0\n"}, None, "--uid is not allowed"),
    ({"job.sh": b"#!/bin/sh\n"}, ["--export=ALL"], "--export=ALL is not allowed"),
    ({"job.sh": b"#!/bin/sh\n"}, ["--burst-buffer=x"], "unsupported option --burst-buffer"),
    ({"job.sh": b"echo no shebang\n"}, None, "does not start with '#!'"),
    ({"job.sh": b"#!/bin/sh\n\xff\xfe"}, None, "is not UTF-8 text"),
])
def test_bad_input_is_rejected_with_a_message_naming_it(stack, config_file, email, files, arguments, message):
    stack.api.add_submission(1, files, entrypoint=next(iter(files)), email=email, sbatch_arguments=arguments)
    assert run(config_file()) == 0
    assert stack.api.status(1) == "REJECTED"
    assert message in stack.api.submissions[1]["report_message"]
    assert stack.slurm.submitted == []


def test_file_larger_than_the_cap_is_rejected(stack, config_file, email):
    stack.api.add_submission(1, {"job.sh": b"#!/bin/sh\n", "big.dat": b"x" * 5000}, email=email)
    assert run(config_file(**{"submit.max_file_size": 4096})) == 0
    assert "'big.dat' of job script 1001 is larger than the 4096-byte limit" in stack.api.submissions[1]["report_message"]


def test_files_over_the_total_limit_are_rejected_naming_the_total_and_the_limit(stack, config_file, email, exec_root):
    files = {"job.sh": b"#!/bin/sh\n", **{f"part{i}.dat": b"x" * 3000 for i in range(3)}}  # each under max_file_size
    stack.api.add_submission(1, files, email=email)
    assert run(config_file(**{"submit.max_file_size": 4096, "submit.max_total_size": 8000})) == 0
    assert stack.api.status(1) == "REJECTED"
    assert stack.api.submissions[1]["report_message"] == (
        "the job script's files total more than the 8000-byte limit of this cluster ([submit] max_total_size): "
        "part2.dat goes past it after 6010 bytes of other files")
    assert stack.slurm.submitted == [] and not any(exec_root.rglob("*.dat"))


def test_a_file_shared_through_the_download_cache_counts_towards_the_total(stack, config_file, email):
    files = {"job.sh": b"#!/bin/sh\n", "big.dat": b"x" * 5000}
    stack.api.add_submission(1, files, email=email, script_id=7)
    stack.api.add_submission(2, files, email=email, script_id=7)
    assert run(config_file(**{"submit.max_total_size": 4000, "run.workers": 1})) == 0
    assert [stack.api.status(1), stack.api.status(2)] == ["REJECTED", "REJECTED"]
    assert "big.dat goes past it after 10 bytes" in stack.api.submissions[2]["report_message"]


def test_too_little_free_space_in_the_state_directory_leaves_the_submission_for_the_next_pass(
        stack, config_file, email, monkeypatch, capsys):
    real_statvfs = os.statvfs

    def nearly_full(path):
        info = real_statvfs(path)
        return os.statvfs_result((info.f_bsize, 4096, info.f_blocks, 100, 100, *info[5:]))  # 400 KiB free

    stack.api.add_submission(1, email=email)
    monkeypatch.setattr(os, "statvfs", nearly_full)
    assert run(config_file()) == 1
    assert stack.api.status(1) == "CREATED"
    assert stack.slurm.submitted == []
    assert "has 409600 bytes free, less than the" in capsys.readouterr().err


def test_slurm_refusal_rejects_with_slurms_message(stack, config_file, email, tmp_path):
    stack.api.add_submission(1, email=email)
    stack.slurm.answers.setdefault("submit", []).append(
        (500, {"errors": [{"error_code": 2000, "error": "Invalid partition name specified"}]}))
    assert run(config_file()) == 0
    assert stack.api.status(1) == "REJECTED"
    assert stack.api.submissions[1]["report_message"] == "Slurm refused the job: Invalid partition name specified (error 2000)"
    assert journal_rows(tmp_path) == []


@pytest.mark.parametrize("answer", [
    requests.ConnectionError("refused"),
    (500, {"errors": [{"error_code": 5005, "error": "Zero Bytes were transmitted or received"}]}),
    (502, {}),
    (429, {}),
])
def test_transient_slurm_failures_leave_the_submission_created(stack, config_file, email, answer):
    stack.api.add_submission(1, email=email)
    stack.api.add_submission(2, email=email)
    stack.slurm.answers.setdefault("submit", []).append(answer)
    config = config_file()

    assert run(config) == jobbergate_sync.EX_UNAVAILABLE
    assert stack.api.status(1) == stack.api.status(2) == "CREATED"
    assert stack.api.called("rejected") == []
    assert len([r for r in stack.slurm.requests if r[0] == "POST"]) == 1  # the peer is marked down: no second try

    assert run(config) == 0
    assert stack.api.status(1) == stack.api.status(2) == "SUBMITTED"
    assert len(stack.slurm.submitted) == 2


def test_api_outage_exits_69_and_rejects_nothing(stack, config_file, email):
    stack.api.add_submission(1, email=email)
    stack.api.answers["pending"] = [503, 503]
    assert run(config_file()) == jobbergate_sync.EX_UNAVAILABLE
    assert stack.api.status(1) == "CREATED"
    assert len(stack.api.called("pending")) == 2  # retried, then gave up


def test_oidc_outage_exits_69(stack, config_file):
    stack.issuer.answers["token"] = [requests.ConnectionError("down")] * 2
    assert run(config_file()) == jobbergate_sync.EX_UNAVAILABLE


def test_garbage_page_is_an_outage_not_a_rejection(stack, config_file, email):
    stack.api.add_submission(1, email=email)
    stack.api.answers["pending"] = [(200, "<html>proxy error</html>")] * 2
    assert run(config_file()) == jobbergate_sync.EX_UNAVAILABLE
    assert stack.api.status(1) == "CREATED"


@pytest.mark.parametrize("point", [CrashPoint.AFTER_FILES_WRITTEN, CrashPoint.AFTER_SLURM_SUBMIT,
                                   CrashPoint.AFTER_JOURNAL_JOB, CrashPoint.AFTER_AGENT_SUBMITTED])
def test_a_pass_interrupted_at_any_step_never_submits_twice(stack, config_file, email, crash_at, point):
    stack.api.add_submission(1, email=email)
    config = config_file()
    crash_at(point, config)

    assert run(config) == 0
    assert run(config) == 0
    assert len(stack.slurm.submitted) == 1
    assert stack.api.status(1) == "SUBMITTED"
    assert stack.api.submissions[1]["slurm_job_id"] == 100
    assert len(stack.api.called("submitted")) == 1


def test_lost_submitted_response_is_resolved_by_reading_the_submission(stack, config_file, email, tmp_path):
    stack.api.add_submission(1, email=email)
    stack.api.submitted_reply_after_processing = requests.ConnectionError("reset after processing")
    config = config_file()

    assert run(config) == jobbergate_sync.EX_UNAVAILABLE
    assert stack.api.status(1) == "SUBMITTED"
    assert journal_rows(tmp_path) == [(1, 100, 0, None)]

    assert run(config) == 0  # found in active with our job id: recorded as reported
    assert len(stack.slurm.submitted) == 1
    assert journal_rows(tmp_path)[0][2] == 1


def test_400_on_submitted_reads_the_submission_before_deciding(stack, config_file, email):
    stack.api.add_submission(1, email=email)
    stack.api.submitted_reply_after_processing = 400  # the report landed, the answer says it was a repeat
    assert run(config_file()) == 0
    assert stack.api.status(1) == "SUBMITTED"
    assert stack.slurm.cancelled == []
    assert len(stack.api.called("submitted")) == 1


def test_someone_else_submitted_it_so_our_job_is_cancelled(stack, config_file, email, job_user, tmp_path):
    stack.api.add_submission(1, email=email)
    stack.api.before_submitted = lambda sub: sub.update(status="SUBMITTED", slurm_job_id=555)
    stack.slurm.add_job(555, "RUNNING", "None", job_user.pw_name)
    assert run(config_file()) == 1
    assert stack.slurm.cancelled == [(100, job_user.pw_name)]
    assert stack.api.submissions[1]["slurm_job_id"] == 555
    assert journal_rows(tmp_path) == [(1, 555, 1, "RUNNING")]  # tracks the other agent's job, not ours


def submitted(stack, submission_id: int, job_id: int, state="RUNNING", reason="None", user=None, **job):
    stack.api.add_submission(submission_id, status="SUBMITTED", slurm_job_id=job_id)
    return stack.slurm.add_job(job_id, state, reason, user, **job)


def test_update_reports_changes_only(stack, config_file):
    job = submitted(stack, 1, 100, "RUNNING")
    config = config_file()
    assert run(config) == 0
    assert run(config) == 0
    assert [body["slurm_job_state"] for body in stack.api.called("update")] == ["RUNNING"]
    job.update(job_state="COMPLETED")
    assert run(config) == 0
    assert stack.api.status(1) == "DONE"
    assert [body["slurm_job_state"] for body in stack.api.called("update")] == ["RUNNING", "COMPLETED"]
    assert all(body["slurm_job_id"] == 100 for body in stack.api.called("update"))
    jobs_calls = [url for method, url, _ in stack.slurm.requests if urlparse(url).path.endswith("/jobs")]
    assert len(jobs_calls) == 3  # one list call per pass, not one per job


def test_journal_forgets_closed_submissions(stack, config_file, tmp_path):
    job = submitted(stack, 1, 100, "RUNNING")
    config = config_file()
    assert run(config) == 0
    assert len(journal_rows(tmp_path)) == 1
    job.update(job_state="FAILED", state_reason="NonZeroExitCode", exit_code=768)
    assert run(config) == 0
    assert stack.api.status(1) == "ABORTED"
    assert stack.api.submissions[1]["report_message"] == "NonZeroExitCode (exit code 3)"
    assert run(config) == 0
    assert journal_rows(tmp_path) == []


@pytest.mark.parametrize("state, reported, status", [
    (["COMPLETED", "COMPLETING"], "COMPLETED", "DONE"),
    ("OUT_OF_MEMORY", "FAILED", "ABORTED"),
    ("TIMEOUT", "TIMEOUT", "ABORTED"),
    ("CANCELLED by 0", "CANCELLED", "ABORTED"),
])
def test_state_shapes_are_normalised(stack, config_file, state, reported, status):
    submitted(stack, 1, 100, state)
    assert run(config_file()) == 0
    [update] = stack.api.called("update")
    assert update["slurm_job_state"] == reported
    assert stack.api.status(1) == status


def test_purged_job_is_looked_up_in_slurmdbd(stack, config_file, job_user):
    stack.api.add_submission(1, status="SUBMITTED", slurm_job_id=100)
    stack.slurm.accounting[100] = {"job_id": 100, "user": job_user.pw_name, "state": {"current": "FAILED", "reason": "None"},
                                   "exit_code": {"status": "SUCCESS", "return_code": 0}}
    assert run(config_file(**{"slurmrestd.slurmdbd": "true"})) == 0
    [update] = stack.api.called("update")
    assert update["slurm_job_state"] == "FAILED"
    assert stack.api.status(1) == "ABORTED"


def test_purged_job_without_slurmdbd_is_unknown(stack, config_file):
    stack.api.add_submission(1, status="SUBMITTED", slurm_job_id=100)
    assert run(config_file()) == 0
    [update] = stack.api.called("update")
    assert update["slurm_job_state"] == "UNKNOWN"
    assert update["slurm_job_state_reason"] == "Slurm has no record of job 100"


def test_unreachable_slurm_never_reports_unknown(stack, config_file):
    stack.api.add_submission(1, status="SUBMITTED", slurm_job_id=100)
    stack.slurm.down = True
    assert run(config_file()) == jobbergate_sync.EX_UNAVAILABLE
    assert stack.api.called("update") == []
    assert stack.api.status(1) == "SUBMITTED"


def test_bad_token_answer_for_one_job_is_not_unknown(stack, config_file):
    stack.api.add_submission(1, status="SUBMITTED", slurm_job_id=100)
    stack.slurm.answers["get"] = [(500, {"errors": [{"description": "Unable to find JobId=100", "error_number": -1}],
                                         "jobs": []})] * 2
    assert run(config_file()) == 1
    assert stack.api.called("update") == []


def test_cancelled_submission_with_a_job_is_cancelled_as_its_owner(stack, config_file, job_user):
    stack.api.add_submission(1, status="CANCELLED", slurm_job_id=100)
    stack.slurm.add_job(100, "RUNNING", "None")
    config = config_file()
    assert run(config) == 0
    assert stack.slurm.cancelled == [(100, job_user.pw_name)]
    assert stack.api.status(1) == "ABORTED"


def test_cancelled_submission_without_a_job_is_closed(stack, config_file):
    stack.api.add_submission(1, status="CANCELLED")
    assert run(config_file()) == 0
    [update] = stack.api.called("update")
    assert "slurm_job_id" not in update and update["slurm_job_state"] == "CANCELLED"
    assert stack.api.status(1) == "ABORTED"
    assert stack.slurm.cancelled == []


def test_cancelled_after_an_interrupted_submit_records_then_cancels_the_job(stack, config_file, email, crash_at):
    stack.api.add_submission(1, email=email)
    config = config_file()
    crash_at(CrashPoint.AFTER_SLURM_SUBMIT, config)
    stack.api.submissions[1]["status"] = "CANCELLED"  # the user cancelled meanwhile

    assert run(config) == 0  # finds job 100 by its tag and records it (allowed on CANCELLED)
    assert stack.api.submissions[1]["slurm_job_id"] == 100
    assert run(config) == 0  # now cancels it in Slurm
    assert [job_id for job_id, _ in stack.slurm.cancelled] == [100]
    assert stack.api.status(1) == "ABORTED"
    assert len(stack.slurm.submitted) == 1


def test_write_files_false_sends_the_script_only(stack, config_file, email, exec_root, job_user):
    stack.api.add_submission(1, email=email)
    stack.api.add_submission(2, {"job.sh": b"#!/bin/sh\n", "data.txt": b"1"}, email=email)
    assert run(config_file(**{"submit.write_files": "false"})) == 0
    assert stack.api.status(1) == "SUBMITTED"
    assert stack.slurm.submitted[0]["script"] == "#!/bin/bash\necho hello\n"
    assert not (exec_root / job_user.pw_name / "job.sh").exists()
    assert stack.api.status(2) == "REJECTED"
    assert "write_files = false" in stack.api.submissions[2]["report_message"]


def test_dry_run_changes_nothing(stack, config_file, email, tmp_path, exec_root, capsys):
    stack.api.add_submission(1, email=email)
    stack.api.add_submission(2, email="root@example.com")
    submitted(stack, 3, 300, "COMPLETED")
    stack.api.add_submission(4, status="CANCELLED", slurm_job_id=400)
    stack.slurm.add_job(400, "RUNNING", "None")

    assert run(config_file(), "--dry-run") == 0

    out = capsys.readouterr().out
    assert "would submit submission 1" in out
    assert "would reject submission 2" in out
    assert "would update submission 3: COMPLETED" in out
    assert "would cancel Slurm job 400" in out
    writes = [name for name, _, _ in stack.api.calls if name not in ("pending", "active", "file", "get")]
    assert writes == []
    assert [r for r in stack.slurm.requests if r[0] != "GET"] == []
    assert not (tmp_path / "state").exists() and not (tmp_path / "run").exists()
    assert list(exec_root.iterdir()) == []
    assert [stack.api.status(i) for i in (1, 2, 3, 4)] == ["CREATED", "CREATED", "SUBMITTED", "CANCELLED"]


@pytest.mark.parametrize("field, value", [
    ("owner_email", 42), ("name", None), ("sbatch_arguments", "--time=5"), ("job_script", None),
    ("execution_directory", ["/tmp"]),
])
def test_a_pending_item_with_a_missing_or_mistyped_field_is_rejected_naming_it(stack, config_file, email,
                                                                               field, value):
    stack.api.add_submission(1, email=email)
    stack.api.add_submission(2, email=email)
    stack.api.submissions[1][field] = value

    assert run(config_file()) == 0

    assert stack.api.status(1) == "REJECTED"
    assert repr(field) in stack.api.submissions[1]["report_message"]
    assert stack.api.status(2) == "SUBMITTED"
    assert len(stack.slurm.submitted) == 1


def test_a_malformed_file_list_is_rejected(stack, config_file, email):
    stack.api.add_submission(1, email=email)
    stack.api.submissions[1]["job_script"]["files"] = [{"filename": "job.sh", "file_type": "ENTRYPOINT"}]
    assert run(config_file()) == 0
    assert "malformed job script file entry" in stack.api.submissions[1]["report_message"]
    assert stack.slurm.submitted == []


def test_an_item_without_an_id_is_skipped_counted_and_the_rest_proceed(stack, config_file, email):
    stack.api.add_submission(1, email=email)
    page = {"items": [{"name": "no id at all"}, {"id": "7", "name": "string id"},
                      stack.api.submissions[1] | {"status": None}], "total": 3, "page": 1, "size": 100, "pages": 1}
    stack.api.answers["pending"] = [(200, json.dumps(page))]

    assert run(config_file()) == jobbergate_sync.EXIT_ITEMS_FAILED

    assert stack.api.status(1) == "SUBMITTED"


def test_a_huge_page_count_reads_only_max_pages(stack, config_file, email):
    stack.api.add_submission(1, email=email)
    page = {"items": [stack.api.submissions[1]], "total": 10 ** 9, "page": 1, "size": 1, "pages": 10 ** 9}
    stack.api.answers["pending"] = [(200, json.dumps(page))] * 3

    assert run(config_file(**{"jobbergate.max_pages": 3})) == 0

    assert len(stack.api.called("pending")) == 3
    assert len(stack.slurm.submitted) == 1  # the same item on every page is submitted once


def test_an_empty_page_before_the_announced_last_ends_the_listing(stack, config_file, email):
    stack.api.add_submission(1, email=email)
    first = {"items": [stack.api.submissions[1]], "total": 3, "page": 1, "size": 1, "pages": 3}
    empty = {"items": [], "total": 1, "page": 2, "size": 1, "pages": 3}
    stack.api.answers["pending"] = [(200, json.dumps(first)), (200, json.dumps(empty))]

    assert run(config_file()) == 0

    assert len(stack.api.called("pending")) == 2
    assert stack.api.status(1) == "SUBMITTED"


def test_a_pass_killed_while_caching_its_token_leaves_no_cache_and_no_temporary_file(stack, config_file, email,
                                                                                      crash_at, tmp_path):
    stack.api.add_submission(1, email=email)
    config = config_file()
    crash_at(CrashPoint.TOKEN_CACHE, config)
    state = tmp_path / "state"
    assert not (state / "token.json").exists() and not list(state.glob(".tmp-*"))

    assert run(config) == 0
    assert (state / "token.json").stat().st_mode & 0o777 == 0o600
    assert len(stack.slurm.submitted) == 1


def test_a_job_ended_by_the_update_phase_is_reported_in_the_pass_that_submitted_it(stack, config_file, email):
    stack.api.add_submission(1, email=email)
    stack.api.add_submission(2, email=email)
    submit = stack.slurm._submit

    def submit_then_end_the_first(*args):
        answer = submit(*args)
        if 100 in stack.slurm.jobs:  # job 100 fails at once; job 101 waits with the reason Priority
            stack.slurm.jobs[100].update(job_state="FAILED", state_reason="NonZeroExitCode", exit_code=3 << 8)
        return answer

    stack.slurm._submit = submit_then_end_the_first

    assert run(config_file(**{"run.workers": 1})) == 0

    [update] = stack.api.called("update")
    assert update["slurm_job_id"] == 100 and update["slurm_job_state"] == "FAILED"
    assert update["slurm_job_state_reason"] == "NonZeroExitCode (exit code 3)"
    assert stack.api.status(2) == "SUBMITTED"  # only its reason is new: left for the next pass
