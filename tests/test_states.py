"""Slurm job states and errors: normalisation, exit codes, reports, and real slurmrestd 22.05.8 captures."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

import pytest

from fakes import capture
from jobbergate_sync import (
    JOBBERGATE_JOB_STATES,
    SLURM_ERROR_INVALID_JOB_ID,
    UNKNOWN_EXIT_CODE_REASON,
    StateReport,
    describe_errors,
    exit_code_text,
    is_transient_slurm_code,
    normalise_job_state,
    normalise_state_name,
    report_from_slurmctld,
    report_from_slurmdbd,
    slurm_errors,
    state_report,
    unwrap_number,
)


def response_of(name: str) -> Any:
    return capture(name)["response"]


# ---------------------------------------------------------------------------------------------
# State names
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("RUNNING", "RUNNING"),
        ("running", "RUNNING"),
        ("  COMPLETED  ", "COMPLETED"),
        ("CANCELLED by 0", "CANCELLED"),
        ("CANCELLED by 1001", "CANCELLED"),
        ("CANCELLED+", "CANCELLED"),
        ("OUT_OF_ME+", "OUT_OF_MEMORY"),
        ("NODE_FA+", "NODE_FAIL"),
        ("RESV_DEL_+", "RESV_DEL_HOLD"),
        ("REQUEUE+", None),  # ambiguous: REQUEUED, REQUEUE_FED, REQUEUE_HOLD
        ("COMPLET+", None),  # ambiguous: COMPLETED, COMPLETING
        ("PEND", None),  # truncated without the '+' marker
        ("BOGUS", None),
        ("RECONFIG_FAIL", None),  # a Slurm flag Jobbergate does not know
        ("", None),
        ("   ", None),
        (None, None),
        (3, None),
        (["RUNNING"], None),
    ],
)
def test_normalise_state_name(raw: Any, expected: Optional[str]) -> None:
    assert normalise_state_name(raw) == expected


@pytest.mark.parametrize("name", sorted(JOBBERGATE_JOB_STATES))
def test_every_jobbergate_state_is_kept(name: str) -> None:
    assert normalise_state_name(name) == name
    assert normalise_state_name(name.lower()) == name


def test_jobbergate_accepts_exactly_25_states() -> None:
    assert len(JOBBERGATE_JOB_STATES) == 25
    assert {"COMPLETED", "OUT_OF_MEMORY", "UNKNOWN", "RESV_DEL_HOLD"} <= JOBBERGATE_JOB_STATES


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("PENDING", "PENDING"),
        ("COMPLETING", "COMPLETING"),  # v0.0.38: a flag shown instead of the base state
        (["COMPLETED", "COMPLETING"], "COMPLETED"),
        (["COMPLETING", "COMPLETED"], "COMPLETED"),  # the base state wins wherever it is
        (["PENDING", "REQUEUED"], "PENDING"),
        (["RUNNING", "CONFIGURING"], "RUNNING"),
        (["COMPLETING"], "COMPLETING"),  # only flags: the first known one
        (["RECONFIG_FAIL", "REQUEUED"], "REQUEUED"),
        (["BOGUS", "FAILED"], "FAILED"),
        (["CANCELLED by 0"], "CANCELLED"),
        (["OUT_OF_ME+"], "OUT_OF_MEMORY"),
        ([], None),
        (["BOGUS"], None),
        (None, None),
        ({"current": "RUNNING"}, None),
    ],
)
def test_normalise_job_state(raw: Any, expected: Optional[str]) -> None:
    assert normalise_job_state(raw) == expected


# ---------------------------------------------------------------------------------------------
# Numbers and exit codes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (5, 5), (0, 0), (None, None), (True, None), ("5", None),
        ({"set": True, "infinite": False, "number": 7}, 7),
        ({"set": False, "infinite": False, "number": 7}, None),
        ({"set": True, "infinite": True, "number": 0}, None),
        ({"number": 3}, 3),
    ],
)
def test_unwrap_number(value: Any, expected: Optional[int]) -> None:
    assert unwrap_number(value) == expected


def _number(value: int, set_: bool = True) -> Dict[str, Any]:
    return {"set": set_, "infinite": False, "number": value}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # v0.0.38: raw wait status
        (0, None),
        (768, "exit code 3"),
        (256, "exit code 1"),
        (2048, "exit code 8"),
        (15, "signal 15"),
        (9, "signal 9"),
        (4021, "signal 53"),  # the [live] JobLaunchFailure: scontrol shows ExitCode=0:53
        # v0.0.39: {set, infinite, number} holding the raw status
        (_number(768), "exit code 3"),
        (_number(15), "signal 15"),
        (_number(0), None),
        (_number(768, set_=False), None),
        ({"set": True, "infinite": True, "number": 0}, None),
        # v0.0.40+: structured
        ({"status": ["ERROR"], "return_code": _number(3), "signal": {"id": _number(0, set_=False), "name": ""}},
         "exit code 3"),
        ({"status": ["SIGNALED"], "return_code": _number(0), "signal": {"id": _number(9), "name": "KILL"}},
         "signal KILL"),
        ({"status": ["SIGNALED"], "return_code": _number(0), "signal": {"id": _number(15), "name": ""}}, "signal 15"),
        ({"status": ["SUCCESS"], "return_code": _number(0), "signal": {"id": _number(0, set_=False), "name": ""}},
         None),
        ({"status": ["ERROR"], "return_code": 2}, "exit code 2"),
        # nothing usable
        (None, None),
        ("768", None),
    ],
)
def test_exit_code_text(value: Any, expected: Optional[str]) -> None:
    assert exit_code_text(value) == expected


# ---------------------------------------------------------------------------------------------
# state_report
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "reason", "exit_code", "expected_state", "expected_reason"),
    [
        ("OUT_OF_MEMORY", "None", None, "FAILED", "OutOfMemory"),
        (["OUT_OF_MEMORY"], "OutOfMemory", 0, "FAILED", "OutOfMemory"),
        ("OUT_OF_ME+", None, 9, "FAILED", "OutOfMemory (signal 9)"),
        ("FAILED", "NonZeroExitCode", 768, "FAILED", "NonZeroExitCode (exit code 3)"),
        ("FAILED", None, 256, "FAILED", "Failed (exit code 1)"),
        ("FAILED", "None", 0, "FAILED", None),
        ("FAILED", "", None, "FAILED", None),
        ("TIMEOUT", "TimeLimit", 15, "TIMEOUT", "TimeLimit"),  # exit detail only for FAILED
        ("CANCELLED", "None", 15, "CANCELLED", None),
        ("RUNNING", "None", 0, "RUNNING", None),
        ("PENDING", "Priority", 0, "PENDING", "Priority"),
        (["COMPLETED", "COMPLETING"], "None", _number(0), "COMPLETED", None),
        ("PENDING", 5, None, "PENDING", None),  # a non-string reason is dropped
    ],
)
def test_state_report(state, reason, exit_code, expected_state, expected_reason) -> None:
    record = {"job_id": 12, "job_state": state, "state_reason": reason}
    report = state_report(12, state, reason, exit_code, record)
    assert report == StateReport(12, expected_state, expected_reason, json.dumps(record, sort_keys=True))


def test_state_report_unknown_state_is_none() -> None:
    assert state_report(12, "BOGUS", "None", 0, {}) is None
    assert state_report(12, None, "None", 0, {}) is None


def test_state_report_info_is_the_json_of_the_record() -> None:
    record = {"z": 1, "a": {"nested": [1, 2]}, "job_state": "OUT_OF_MEMORY"}
    report = state_report(3, "OUT_OF_MEMORY", None, None, record)
    assert report is not None
    assert json.loads(report.info) == record  # the original OUT_OF_MEMORY stays visible in the info
    assert report.info.index('"a"') < report.info.index('"z"')  # sorted keys: stable text


# ---------------------------------------------------------------------------------------------
# Reports from the real captures
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "job_id", "state", "reason"),
    [
        ("final_normal.json", 4, "COMPLETED", None),
        ("final_exit3.json", 6, "FAILED", "NonZeroExitCode (exit code 3)"),
        ("final_timeout.json", 5, "TIMEOUT", "TimeLimit"),
        ("final_cancelled.json", 7, "CANCELLED", None),
        ("final_nocwd.json", None, "FAILED", "JobLaunchFailure (signal 53)"),
    ],
)
def test_report_from_slurmctld_final_captures(name: str, job_id: Optional[int], state: str, reason: Optional[str]) -> None:
    job = capture(name)["final_job"]
    report = report_from_slurmctld(job)
    assert report is not None
    assert report.job_id == job["job_id"]
    if job_id is not None:
        assert report.job_id == job_id
    assert report.state == state
    assert report.reason == reason
    assert json.loads(report.info) == job


@pytest.mark.parametrize(
    ("name", "state", "reason"),
    [
        ("get_job_pending.json", "PENDING", "Priority"),
        ("get_job_completed.json", "COMPLETED", None),
        ("get_job_cancelled_pending.json", "CANCELLED", "Priority"),
    ],
)
def test_report_from_slurmctld_get_job_captures(name: str, state: str, reason: Optional[str]) -> None:
    job = response_of(name)["jobs"][0]
    report = report_from_slurmctld(job)
    assert report is not None
    assert (report.job_id, report.state, report.reason) == (job["job_id"], state, reason)


@pytest.mark.parametrize(
    ("name", "job_id", "state"),
    [
        ("dbd_get_job_after_purge_ok.json", 17, "COMPLETED"),
        ("dbd_get_job_after_purge_fail.json", 18, "FAILED"),
        ("dbd_get_job_after_purge_cancel.json", 19, "CANCELLED"),
        ("dbd_get_job_running.json", 17, "PENDING"),
    ],
)
def test_report_from_slurmdbd_captures(name: str, job_id: int, state: str) -> None:
    job = response_of(name)["jobs"][0]
    report = report_from_slurmdbd(job)
    assert report is not None
    assert (report.job_id, report.state) == (job_id, state)
    # state.reason is "None" and the dbv0.0.38 exit_code is the buggy SUCCESS/0: a failed job's is unknown
    assert report.reason == (UNKNOWN_EXIT_CODE_REASON if state == "FAILED" else None)
    assert json.loads(report.info) == job


def test_report_from_slurmdbd_ignores_exit_code() -> None:
    job = {"job_id": 5, "state": {"current": "FAILED", "reason": "NonZeroExitCode"},
           "exit_code": {"status": "SUCCESS", "return_code": 0}}
    report = report_from_slurmdbd(job)
    assert report is not None
    assert (report.state, report.reason) == ("FAILED", "NonZeroExitCode")


def test_report_from_slurmdbd_v40_list_state() -> None:
    report = report_from_slurmdbd({"job_id": 9, "state": {"current": ["OUT_OF_MEMORY"], "reason": "None"}})
    assert report is not None
    assert (report.state, report.reason) == ("FAILED", "OutOfMemory")


@pytest.mark.parametrize("job", [{"job_id": 5}, {"job_id": 5, "state": "COMPLETED"}, {"job_id": 5, "state": {}}])
def test_report_from_slurmdbd_without_a_state_dict_is_none(job: Dict[str, Any]) -> None:
    assert report_from_slurmdbd(job) is None


# ---------------------------------------------------------------------------------------------
# slurmrestd errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "errors"),
    [
        ("get_job_after_purge.json", [(2017, "Invalid job id specified: Unable to find JobId=4")]),
        ("get_unknown_job.json", [(2017, "Invalid job id specified: Unable to find JobId=999999")]),
        ("bad_signature.json", [(5005, "Zero Bytes were transmitted or received")]),
        ("name_token_mismatch.json", [(5005, "Zero Bytes were transmitted or received")]),
        ("expired_token.json", [(-1, "Failed while looking for jobs")]),
        ("garbage_token.json", [(-1, "Failed while looking for jobs")]),
        ("unknown_partition.json", [(2000, "Invalid partition name specified")]),
        ("unknown_field.json", [(None, 'Unknown key "no_such_field"'), (9001, "Failure during parsing")]),
        ("submit_env_list.json", [(-1, "environment must be a dictionary"),
                                  (-1, 'Unable to process key "environment"'), (9001, "Failure during parsing")]),
        ("delete_by_other_user.json", [(2002, "unable to kill JobId=7 with signal 9: Access/permission denied")]),
        ("dbd_get_job_unknown.json", [(9003, "Nothing found with query")]),
        ("get_job_completed.json", []),
        ("dbd_get_job_after_purge_ok.json", []),
    ],
)
def test_slurm_errors_on_captures(name: str, errors: List[Tuple[Optional[int], str]]) -> None:
    assert slurm_errors(response_of(name)) == errors


def test_purged_job_answer_carries_invalid_job_id() -> None:
    record = capture("get_job_after_purge.json")
    assert record["status"] == 500
    codes = [code for code, _ in slurm_errors(record["response"])]
    assert codes == [SLURM_ERROR_INVALID_JOB_ID] == [2017]


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        (None, []),
        ("Authentication failure", []),
        ([], []),
        ({}, []),
        ({"errors": None}, []),
        ({"errors": "boom"}, []),
        ({"errors": ["boom", 3]}, []),
        ({"errors": [{}]}, [(None, "unspecified error")]),
        ({"errors": [{"error_code": "2000", "error": "x"}]}, [(None, "x")]),
        ({"errors": [{"error_number": 1, "error_code": 2, "error": "e", "description": "d"}]}, [(1, "e: d")]),
    ],
)
def test_slurm_errors_is_lenient(body: Any, errors: List[Tuple[Optional[int], str]]) -> None:
    assert slurm_errors(body) == errors


@pytest.mark.parametrize(
    ("code", "transient"),
    [
        (5005, True), (5000, True), (5999, True), (1000, True), (1999, True), (1007, True),
        (2000, False), (2017, False), (2002, False), (2009, False), (2127, False), (9001, False), (9003, False),
        (-1, False), (0, False), (999, False), (6000, False), (None, False),
    ],
)
def test_is_transient_slurm_code(code: Optional[int], transient: bool) -> None:
    assert is_transient_slurm_code(code) is transient


@pytest.mark.parametrize(
    ("name", "transient"),
    [
        ("bad_signature.json", True),  # 5005: slurmctld refused the token, the job is not at fault
        ("name_token_mismatch.json", True),
        ("unknown_partition.json", False),  # 2000: the job itself is wrong: permanent
        ("get_job_after_purge.json", False),
        ("expired_token.json", False),
        ("garbage_token.json", False),
        ("unknown_field.json", False),
    ],
)
def test_transience_of_captured_errors(name: str, transient: bool) -> None:
    codes = [code for code, _ in slurm_errors(response_of(name))]
    assert any(is_transient_slurm_code(code) for code in codes) is transient


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("get_job_after_purge.json", "Invalid job id specified: Unable to find JobId=4 (error 2017)"),
        ("unknown_partition.json", "Invalid partition name specified (error 2000)"),
        ("bad_signature.json", "Zero Bytes were transmitted or received (error 5005)"),
        ("expired_token.json", "Failed while looking for jobs (error -1)"),
        ("unknown_field.json", 'Unknown key "no_such_field"; Failure during parsing (error 9001)'),
        ("get_job_completed.json", ""),
    ],
)
def test_describe_errors_on_captures(name: str, text: str) -> None:
    assert describe_errors(slurm_errors(response_of(name))) == text
