"""slurmrestd v0.0.40 ... v0.0.44 behaviour, from shapes recorded on Slurm 24.11.5 and 25.11.7."""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

import pytest

import jobbergate_sync
from fakes import FakeSlurm, capture, run, slurm_of
from jobbergate_sync import dropped_fields, slurm_errors, slurm_warnings

# ---------------------------------------------------------------------------------------------
# Errors and warnings of a submit
# ---------------------------------------------------------------------------------------------


def test_slurms_reason_is_kept_and_the_generic_description_dropped() -> None:
    body = capture("v0.0.44_submit_unknown_partition.json")["response"]
    assert slurm_errors(body) == [(2000, "Invalid partition name specified")]


def test_warnings_are_read() -> None:
    body = capture("v0.0.40_submit_distribution_dropped.json")["response"]
    assert slurm_warnings(body) == [("data_parser/v0.0.40 does not support parser 208 for parsing. Output may be "
                                     "incomplete.", "#/job/distribution/")]


@pytest.mark.parametrize(
    ("name", "dropped"),
    [
        ("v0.0.40_submit_distribution_dropped.json", ["distribution"]),
        ("v0.0.40_submit_held_distribution.json", ["distribution"]),  # the held-state warnings are harmless
        ("v0.0.40_submit_int_memory_warning.json", []),  # a converted type: the value was used
    ],
)
def test_dropped_fields_from_recorded_warnings(name: str, dropped: list) -> None:
    record = capture(name)
    assert dropped_fields(slurm_warnings(record["response"]), record["request"]["body"]["job"]) == dropped


def test_unknown_and_deprecated_field_warnings() -> None:
    warnings = [('Ignoring unknown field "cores_per_socket" of type integer in JOB_DESC_MSG', "#/job/"),
                ('Field "exclusive" is deprecated', "#/job/exclusive/")]
    assert dropped_fields(warnings, ["cores_per_socket", "exclusive", "name"]) == ["cores_per_socket"]


def test_a_warning_naming_a_field_not_sent_drops_nothing() -> None:
    assert dropped_fields([("does not support parser 208", "#/job/distribution/")], ["name"]) == []


def test_unknown_partition_rejection_carries_slurms_reason(stack, config_file, email) -> None:
    slurm = slurm_of(stack, "v0.0.44")
    stack.api.add_submission(1, email=email)
    record = capture("v0.0.44_submit_unknown_partition.json")
    slurm.answers["submit"] = [(record["status"], record["response"])]
    assert run(config_file(**{"slurmrestd.api_version": "v0.0.44"})) == 0
    assert stack.api.status(1) == "REJECTED"
    assert stack.api.submissions[1]["report_message"] == "Slurm refused the job: Invalid partition name specified (error 2000)"


def test_a_dropped_option_rejects_the_submission_by_name_and_cancels_its_job(stack, config_file, email, job_user, tmp_path):
    slurm = slurm_of(stack, "v0.0.41")
    stack.api.add_submission(1, email=email, sbatch_arguments=["--cores-per-socket=4"])
    # Were the static table wrong: v0.0.41 answering as 24.11 does for a field it ignores.
    jobbergate_sync.OPTIONS_BY_LONG["cores-per-socket"] = jobbergate_sync.OptionSpec(
        "cores-per-socket", None, "required", jobbergate_sync.as_int("cores_per_socket", "cores-per-socket"))
    try:
        slurm.add_job(500, ["PENDING"], user=job_user.pw_name)
        slurm.answers["submit"] = [(200, {"job_id": 500, "step_id": "batch", "errors": [], "warnings": [
            {"description": 'Ignoring unknown field "cores_per_socket" of type integer in JOB_DESC_MSG',
             "source": "#/job/"}]})]
        assert run(config_file(**{"slurmrestd.api_version": "v0.0.41"})) == 0
    finally:
        jobbergate_sync.OPTIONS_BY_LONG["cores-per-socket"] = next(
            spec for spec in jobbergate_sync.OPTION_SPECS if spec.name == "cores-per-socket")
    assert stack.api.status(1) == "REJECTED"
    message = stack.api.submissions[1]["report_message"]
    assert message.startswith("this cluster's slurmrestd (API v0.0.41) ignored --cores-per-socket")
    assert slurm.cancelled == [(500, job_user.pw_name)]


def test_held_job_warnings_are_only_logged(stack, config_file, email, capsys) -> None:
    slurm = slurm_of(stack, "v0.0.40")
    stack.api.add_submission(1, email=email, sbatch_arguments=["--hold"])
    response = capture("v0.0.40_submit_held_distribution.json")["response"]
    response["warnings"] = [w for w in response["warnings"] if "held" in w["description"]]
    slurm.add_job(23, ["PENDING"])
    slurm.answers["submit"] = [(200, response)]
    assert run(config_file(**{"slurmrestd.api_version": "v0.0.40"}), "--log-format", "text") == 0
    assert stack.api.status(1) == "SUBMITTED"
    assert slurm.cancelled == []


@pytest.mark.parametrize("status", [401, 511])
def test_authentication_failure_is_401_or_511(stack, config_file, email, status) -> None:
    slurm = slurm_of(stack, "v0.0.44")
    stack.api.add_submission(1, email=email)
    slurm.answers["submit"] = [(status, "Authentication failure")]
    assert run(config_file(**{"slurmrestd.api_version": "v0.0.44"})) == jobbergate_sync.EX_NOPERM
    assert stack.api.status(1) == "CREATED"


# ---------------------------------------------------------------------------------------------
# Arrays: a submission follows every task
# ---------------------------------------------------------------------------------------------


def task(job_id: int, array_id: int, task_id: Any, state: str, code: int = 0, reason: str = "None") -> Dict[str, Any]:
    """A v0.0.42 array task record in the shape of the recorded ones."""
    record = json.loads(json.dumps(capture("v0.0.42_array_mixed.json")["response"]["jobs"][0]))
    record.update(job_id=job_id, job_state=[state], state_reason=reason)
    record["array_job_id"]["number"] = array_id
    if isinstance(task_id, str):  # the unsplit pending tasks
        record["array_task_id"], record["array_task_string"] = {"set": False, "infinite": False, "number": 0}, task_id
    else:
        record["array_task_id"]["number"] = task_id
    record["exit_code"]["return_code"]["number"] = code
    return record


def test_recorded_mixed_array_is_failed_naming_the_task() -> None:
    records = jobbergate_sync.job_records_of(capture("v0.0.42_array_mixed.json")["response"]["jobs"], 28)
    report = jobbergate_sync.report_from_records(28, records, jobbergate_sync.report_from_slurmctld)
    assert (report.job_id, report.state) == (28, "FAILED")
    assert report.reason == "array task 0 failed (exit code 3)"
    info = json.loads(report.info)
    assert info["array_job_id"] == 28
    assert [(t["task"], t["job_id"], t["state"]) for t in info["tasks"]] == [("0", 29, "FAILED"), ("1", 28, "COMPLETED")]


def test_recorded_unsplit_array_is_pending() -> None:
    records = capture("v0.0.42_array_pending.json")["response"]["jobs"]
    report = jobbergate_sync.report_from_records(3, jobbergate_sync.job_records_of(records, 3),
                                                 jobbergate_sync.report_from_slurmctld)
    assert report.state == "PENDING"
    assert json.loads(report.info)["tasks"][0]["task"] == "0-1"


@pytest.mark.parametrize(
    ("tasks", "state", "reason"),
    [
        ([task(28, 28, 1, "COMPLETED"), task(27, 28, 0, "RUNNING")], "RUNNING", "array: 1 of 2 task records finished"),
        ([task(28, 28, 1, "COMPLETED"), task(28, 28, "2-3", "PENDING")], "RUNNING", "array: 1 of 2 task records finished"),
        ([task(28, 28, 1, "COMPLETED"), task(29, 28, 0, "COMPLETED")], "COMPLETED", None),
        ([task(28, 28, 2, "TIMEOUT"), task(29, 28, 0, "CANCELLED"), task(30, 28, 1, "CANCELLED")], "CANCELLED",
         "array tasks 0, 1 cancelled; array task 2 timed out"),
        ([task(28, 28, 1, "TIMEOUT"), task(29, 28, 0, "FAILED", 2, "NonZeroExitCode")], "FAILED",
         "array task 0 failed (exit code 2); array task 1 timed out"),
    ],
)
def test_array_state_follows_all_tasks(tasks: list, state: str, reason: Any) -> None:
    report = jobbergate_sync.report_from_records(28, tasks, jobbergate_sync.report_from_slurmctld)
    assert (report.state, report.reason) == (state, reason)


def submitted_array(stack: Any, version: str, records: list, submission_id: int = 62) -> FakeSlurm:
    slurm = slurm_of(stack, version)
    stack.api.add_submission(submission_id, status="SUBMITTED", slurm_job_id=28)
    for record in records:
        slurm.jobs[record["job_id"]] = dict(record, user_name=slurm.default_user)  # the submission's owner's
    return slurm


def test_array_whose_last_task_ended_first_stays_running(stack, config_file) -> None:
    """Live on 25.11: the array's id (its last task) completed while task 0 still ran; closed DONE."""
    submitted_array(stack, "v0.0.42", [task(28, 28, 1, "COMPLETED"), task(27, 28, 0, "RUNNING")])
    assert run(config_file(**{"slurmrestd.api_version": "v0.0.42"})) == 0
    [update] = stack.api.called("update")
    assert update["slurm_job_state"] == "RUNNING"
    assert stack.api.status(62) == "SUBMITTED"


def test_array_with_a_failed_task_is_aborted(stack, config_file) -> None:
    submitted_array(stack, "v0.0.42", capture("v0.0.42_array_mixed.json")["response"]["jobs"])
    assert run(config_file(**{"slurmrestd.api_version": "v0.0.42"})) == 0
    [update] = stack.api.called("update")
    assert update["slurm_job_state"] == "FAILED"
    assert update["slurm_job_state_reason"] == "array task 0 failed (exit code 3)"
    assert stack.api.status(62) == "ABORTED"


def test_purged_array_is_read_from_slurmdbd(stack, config_file) -> None:
    slurm = submitted_array(stack, "v0.0.44", [])
    record = capture("slurmdb_v0.0.44_job_exit3.json")["response"]["jobs"][0]
    good = json.loads(json.dumps(record))
    good.update(job_id=28, state={"current": ["COMPLETED"], "reason": "None"})
    good["exit_code"]["return_code"]["number"] = 0
    bad = json.loads(json.dumps(record))
    bad["job_id"] = 29
    for record_, task_id in ((good, 1), (bad, 0)):
        record_["array"].update(job_id=28, task_id={"set": True, "infinite": False, "number": task_id})
        record_["user"] = slurm.default_user
    slurm.answers["dbd"] = [(200, {"jobs": [good, bad], "errors": [], "warnings": []})]
    assert run(config_file(**{"slurmrestd.api_version": "v0.0.44", "slurmrestd.slurmdbd": "true"})) == 0
    [update] = stack.api.called("update")
    assert (update["slurm_job_state"], update["slurm_job_state_reason"]) == ("FAILED", "array task 0 failed (exit code 3)")


def test_array_tasks_are_one_job_for_crash_recovery(stack, config_file) -> None:
    """All tasks carry the tag: they are one job under the array's id, not duplicates to cancel."""
    slurm = slurm_of(stack, "v0.0.42")
    records = capture("v0.0.42_array_mixed.json")["response"]["jobs"]
    slurm.answers["list"] = [(200, {"jobs": records, "errors": []})]
    rest = jobbergate_sync.SlurmRest(jobbergate_sync.load_config(config_file(**{"slurmrestd.api_version": "v0.0.42"}), {}),
                                     jobbergate_sync.Http(jobbergate_sync.Deadline(30), 0, 0))
    assert list(rest.jobs_with_tag("jobbergate-sync:test-cluster:62", "alice")) == [28]


# ---------------------------------------------------------------------------------------------
# Cancels: only as the owner; believe status[] (v0.0.42+) or the job's state afterwards
# ---------------------------------------------------------------------------------------------


def cancelled_submission(stack: Any, version: str, user: Optional[str] = None, state: str = "RUNNING") -> FakeSlurm:
    """The job of a cancelled submission, its owner's unless `user` says otherwise."""
    slurm = slurm_of(stack, version)
    stack.api.add_submission(1, status="CANCELLED", slurm_job_id=100)
    job = task(100, 0, 0, state)
    job["user_name"] = slurm.default_user if user is None else user
    slurm.jobs[100] = job
    return slurm


def reads_around_the_cancel(slurm: FakeSlurm, after: Dict[str, Any]) -> None:
    """GET job/100 answers the job as it is, then (the re-read after the DELETE) `after`: jobs/state
    gives only states, so the job's full record is read before a cancel."""
    slurm.answers["get"] = [(200, {"jobs": [record], "errors": []}) for record in (slurm.jobs[100], after)]


def test_cancel_is_sent_as_the_job_owner_from_the_record(stack, config_file) -> None:
    slurm = cancelled_submission(stack, "v0.0.42")
    slurm.answers["delete"] = [(200, capture("v0.0.42_delete_owner.json")["response"])]
    reads_around_the_cancel(slurm, dict(slurm.jobs[100], job_state=["CANCELLED"]))
    assert run(config_file(**{"slurmrestd.api_version": "v0.0.42"})) == 0
    [delete] = [headers for method, _, headers in slurm.requests if method == "DELETE"]
    assert delete["X-SLURM-USER-NAME"] == slurm.default_user
    assert stack.api.status(1) == "ABORTED"
    [update] = stack.api.called("update")
    assert update["slurm_job_state"] == "CANCELLED"


def test_no_cancel_as_anyone_else_when_the_owner_is_unknown(stack, config_file) -> None:
    slurm = cancelled_submission(stack, "v0.0.42", "")
    assert run(config_file(**{"slurmrestd.api_version": "v0.0.42"})) == 1
    assert [method for method, _, _ in slurm.requests if method == "DELETE"] == []


@pytest.mark.parametrize("name", ["v0.0.42_delete_finished.json", "v0.0.42_delete_purged.json"])
def test_cancel_that_status_says_failed_is_not_counted(stack, config_file, name, capsys) -> None:
    slurm = cancelled_submission(stack, "v0.0.42")
    slurm.answers["delete"] = [(200, capture(name)["response"])]
    assert run(config_file(**{"slurmrestd.api_version": "v0.0.42"}), "--log-format", "text") == 0
    assert "cancelled=0" in capsys.readouterr().err


def test_v41_cancel_is_confirmed_by_rereading_the_job(stack, config_file, capsys) -> None:
    slurm = cancelled_submission(stack, "v0.0.41")
    slurm.answers["delete"] = [(200, capture("v0.0.41_delete_finished.json")["response"])]  # 200 whatever happened
    reads_around_the_cancel(slurm, dict(slurm.jobs[100], job_state=["COMPLETED"]))
    assert run(config_file(**{"slurmrestd.api_version": "v0.0.41"}), "--log-format", "text") == 0
    assert "cancelled=0" in capsys.readouterr().err
    [update] = stack.api.called("update")
    assert update["slurm_job_state"] == "COMPLETED"


@pytest.mark.parametrize("version, state_after", [("v0.0.41", ["COMPLETING"]), ("v0.0.41", ["CANCELLED", "COMPLETING"])])
def test_a_job_being_killed_right_after_the_cancel_counts_as_cancelled(stack, config_file, capsys, version,
                                                                       state_after) -> None:
    slurm = cancelled_submission(stack, version)
    slurm.answers["delete"] = [(200, {"errors": []})]  # no status[] before v0.0.42
    reads_around_the_cancel(slurm, dict(slurm.jobs[100], job_state=state_after))
    assert run(config_file(**{"slurmrestd.api_version": version}), "--log-format", "text") == 0
    err = capsys.readouterr().err
    assert "cancelled=1" in err and "cancelled Slurm job 100 of cancelled submission" in err


def test_cancel_status_permission_denied_is_an_error(stack, config_file) -> None:
    slurm = cancelled_submission(stack, "v0.0.44")
    slurm.answers["delete"] = [(200, {"status": [{"error": {"string": "Access/permission denied", "code": 2002,
                                                           "message": "Access/permission denied"},
                                                 "step_id": "100", "job_id": {"set": True, "number": 100}}],
                                      "errors": [], "warnings": []})]
    assert run(config_file(**{"slurmrestd.api_version": "v0.0.44"})) == 1
    assert stack.api.called("update") == []


# ---------------------------------------------------------------------------------------------
# api_version = auto, slurmdbd = auto
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "versions", "slurmdb", "release", "chosen"),
    [
        ("openapi_v3_25.11.7.json", ("v0.0.41", "v0.0.42", "v0.0.43", "v0.0.44"), (), "25.11.7", "v0.0.44"),
        ("openapi_v3_25.11.7_dbd.json", ("v0.0.41", "v0.0.42", "v0.0.43", "v0.0.44"),
         ("v0.0.41", "v0.0.42", "v0.0.43", "v0.0.44"), "25.11.7", "v0.0.44"),
        ("openapi_v3_24.11.5.json", ("v0.0.40", "v0.0.41", "v0.0.42"), (), "24.11.5", "v0.0.42"),
        ("openapi_v3_22.05.8.json", ("v0.0.36", "v0.0.37", "v0.0.38"), ("v0.0.36", "v0.0.37", "v0.0.38"), None,
         "v0.0.38"),
    ],
)
def test_served_api_from_recorded_documents(name, versions, slurmdb, release, chosen) -> None:
    served = jobbergate_sync.served_api(capture(name)["response"])
    assert (served.versions, served.slurmdb_versions, served.release) == (versions, slurmdb, release)
    assert jobbergate_sync.choose_api_version(served, "http://slurm") == chosen


def test_no_supported_version_is_a_configuration_error() -> None:
    served = jobbergate_sync.ServedApi(("v0.0.36", "v0.0.37"), (), None)
    with pytest.raises(jobbergate_sync.ConfigError, match=r"serves v0\.0\.36, v0\.0\.37; this tool supports v0\.0\.38 to v0\.0\.44"):
        jobbergate_sync.choose_api_version(served, "http://slurm")


def test_auto_uses_the_newest_served_version_and_remembers_it(stack, config_file, email, tmp_path) -> None:
    slurm = slurm_of(stack, "v0.0.44")
    document = capture("openapi_v3_25.11.7_dbd.json")["response"]
    slurm.answers["openapi"] = [(200, document)]
    stack.api.add_submission(1, email=email)
    config = config_file()
    assert run(config) == 0
    assert stack.api.status(1) == "SUBMITTED"
    assert "script" in slurm.submitted[0]["job"]  # the v0.0.44 shape
    remembered = json.loads((tmp_path / "state" / "slurmrestd.json").read_text())
    assert (remembered["api_version"], remembered["slurmdbd"], remembered["release"]) == ("v0.0.44", True, "25.11.7")
    stack.api.add_submission(2, email=email)
    assert run(config) == 0
    assert [url for _, url, _ in slurm.requests].count("http://slurm.test:6820/openapi/v3") == 1


def test_auto_looks_again_when_the_version_is_no_longer_served(stack, config_file, email, tmp_path) -> None:
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / "slurmrestd.json").write_text(json.dumps(
        {"url": "http://slurm.test:6820", "api_version": "v0.0.40", "slurmdbd": False, "state_query": True,
         "release": "24.11.5"}))
    (tmp_path / "state" / "slurmrestd.json").chmod(0o600)
    slurm_of(stack, "v0.0.44")
    stack.api.add_submission(1, email=email)
    config = config_file()
    assert run(config) == jobbergate_sync.EX_UNAVAILABLE  # v0.0.40 is gone: 404
    assert not (tmp_path / "state" / "slurmrestd.json").exists()
    assert run(config) == 0
    assert stack.api.status(1) == "SUBMITTED"
    assert json.loads((tmp_path / "state" / "slurmrestd.json").read_text())["api_version"] == "v0.0.44"


def test_auto_without_a_supported_version_exits_78(stack, config_file, email) -> None:
    slurm = slurm_of(stack, "v0.0.44")
    slurm.answers["openapi"] = [(200, {"paths": {"/slurm/v0.0.36/job/submit": {}, "/slurm/v0.0.37/job/submit": {}}})]
    stack.api.add_submission(1, email=email)
    assert run(config_file()) == jobbergate_sync.EX_CONFIG
    assert stack.api.status(1) == "CREATED"


def test_a_pinned_version_needs_no_discovery(stack, config_file, email) -> None:
    slurm = slurm_of(stack, "v0.0.42")
    stack.api.add_submission(1, email=email)
    assert run(config_file(**{"slurmrestd.api_version": "v0.0.42", "slurmrestd.slurmdbd": "false"})) == 0
    assert stack.api.status(1) == "SUBMITTED"
    assert not [url for _, url, _ in slurm.requests if url.endswith("/openapi/v3")]


def test_slurmdbd_auto_follows_the_served_paths(stack, config_file) -> None:
    slurm = slurm_of(stack, "v0.0.44")
    slurm.serves_slurmdbd = True
    stack.api.add_submission(1, status="SUBMITTED", slurm_job_id=3)
    answer = capture("slurmdb_v0.0.44_job_exit3.json")["response"]
    answer["jobs"][0]["user"] = slurm.default_user  # the submission's owner's
    slurm.answers["dbd"] = [(200, answer)]
    assert run(config_file()) == 0
    [update] = stack.api.called("update")
    assert (update["slurm_job_state"], update["slurm_job_state_reason"]) == ("FAILED", "Failed (exit code 3)")
