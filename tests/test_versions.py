"""slurmrestd v0.0.40 ... v0.0.44 behaviour, from shapes recorded on Slurm 24.11.5 and 25.11.7."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import pytest

import jobbergate_sync
from fakes import JWT_KEY, FakeSlurm
from jobbergate_sync import dropped_fields, main, slurm_errors, slurm_warnings

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "slurmrestd"


def capture(name: str) -> Dict[str, Any]:
    with open(FIXTURES / name, encoding="utf-8") as handle:
        return json.load(handle)


def run(config: str, *extra: str) -> int:
    return main(["--once", "--config", config, *extra])


def slurm_of(stack: Any, version: str) -> FakeSlurm:
    """A fake slurmrestd serving `version` in place of the stack's v0.0.38 one."""
    stack.slurm = FakeSlurm(stack.rsps, JWT_KEY, version)
    return stack.slurm


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


def test_held_job_warnings_are_only_logged(stack, config_file, email, caplog) -> None:
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
