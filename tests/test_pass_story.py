"""A pass always finishes its story: a phase that cannot list its work ends alone, a wrong API URL is
a configuration error, and whatever happens the summary line, with the exit code, comes last."""

from __future__ import annotations

import inspect
import json

import pytest
import requests

import jobbergate_sync
from jobbergate_sync import main


def run_logged(config: str, capsys) -> tuple[int, list[dict]]:
    code = main(["--once", "--config", config, "--log-format", "json"])
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    return code, lines


def assert_summary_last(code: int, lines: list[dict]) -> None:
    last = lines[-1]
    assert last["message"].startswith("pass finished") and f"exit_code={code}" in last["message"]
    assert last["exit_code"] == code
    assert sum(line["message"].startswith("pass finished") for line in lines) == 1


def test_api_url_without_the_mount_is_a_configuration_error_naming_the_setting(stack, config_file, email, capsys):
    stack.api.add_submission(1, email=email)

    code, lines = run_logged(config_file(jobbergate__api_url="http://api.test"), capsys)

    assert code == jobbergate_sync.EX_CONFIG
    [error] = [line["message"] for line in lines if line["level"] == "ERROR"]
    assert "[jobbergate] api_url = http://api.test" in error and "must end with /jobbergate" in error
    assert "HTTP 404" in error
    role_check = ["http://slurm.test:6820/openapi/v3", "http://slurm.test:6820/slurm/v0.0.38/ping"]
    assert [url for _, url, _ in stack.slurm.requests] == role_check and stack.api.status(1) == "CREATED"
    assert_summary_last(code, lines)


def test_a_failed_pending_list_ends_the_submit_phase_only(stack, config_file, email, capsys):
    stack.api.add_submission(1, email=email)
    stack.api.add_submission(2, status="SUBMITTED", slurm_job_id=200)
    stack.slurm.add_job(200, "COMPLETED")
    stack.api.answers["pending"] = [422]

    code, lines = run_logged(config_file(), capsys)

    assert code == jobbergate_sync.EXIT_ITEMS_FAILED
    assert any(line["message"].startswith("submit phase ended: GET") for line in lines)
    assert stack.api.status(2) == "DONE"  # the update phase ran
    assert stack.api.health == [90]  # and the health ping
    assert stack.api.status(1) == "CREATED" and stack.slurm.submitted == []
    assert_summary_last(code, lines)


def test_an_api_outage_while_listing_skips_what_needs_the_api_and_exits_69(stack, config_file, email, capsys):
    stack.api.add_submission(1, email=email)
    stack.api.answers["pending"] = [503, 503]

    code, lines = run_logged(config_file(), capsys)

    assert code == jobbergate_sync.EX_UNAVAILABLE
    assert len(stack.api.called("pending")) == 2 and stack.api.called("active") == [] and stack.api.health == []
    messages = [line["message"] for line in lines]
    assert any(m.startswith("update phase ended: left for the next pass: api is unreachable") for m in messages)
    assert_summary_last(code, lines)


def test_slurmrestd_down_still_pings_health(stack, config_file, email, capsys):
    stack.api.add_submission(1, email=email)
    stack.api.add_submission(2, status="SUBMITTED", slurm_job_id=200)
    stack.slurm.down = True

    code, lines = run_logged(config_file(), capsys)

    assert code == jobbergate_sync.EX_UNAVAILABLE
    assert stack.api.health == [90]
    assert stack.api.status(1) == "CREATED" and stack.api.called("update") == []
    assert_summary_last(code, lines)


def test_an_unexpected_exception_is_70_with_a_traceback_and_the_summary_still_last(stack, config_file, capsys,
                                                                                    monkeypatch):
    stack.api.add_submission(2, status="SUBMITTED", slurm_job_id=200)
    stack.slurm.add_job(200, "RUNNING")

    def broken(self):  # outside any one item's work (inside one, it is that item's failure)
        raise KeyError("slurm_job_id")

    monkeypatch.setattr(jobbergate_sync.UpdatePhase, "run", broken)

    code, lines = run_logged(config_file(), capsys)

    assert code == jobbergate_sync.EX_SOFTWARE
    [bug] = [line for line in lines if line["message"].startswith("internal error")]
    assert "KeyError: 'slurm_job_id'" in bug["exc_info"]
    assert_summary_last(code, lines)


@pytest.mark.parametrize("case, expected", [
    ("ok", 0), ("item-failed", 1), ("unavailable", 69), ("auth", 77), ("bad-journal", 78),
])
def test_the_summary_line_is_last_with_the_exit_code_whatever_happened(stack, config_file, email, tmp_path, capsys,
                                                                        case, expected):
    stack.api.add_submission(1, email=email)
    if case == "item-failed":
        stack.api.add_submission(2, status="SUBMITTED")  # active without a Slurm job id
    elif case == "unavailable":
        stack.issuer.answers["token"] = [requests.ConnectionError("down")] * 2
    elif case == "auth":
        stack.api.reject_all_tokens = True
    elif case == "bad-journal":
        (tmp_path / "state").mkdir(mode=0o700)
        (tmp_path / "state" / "journal.sqlite3").write_bytes(b"")
        (tmp_path / "state" / "journal.sqlite3").chmod(0o644)

    code, lines = run_logged(config_file(), capsys)

    assert code == expected
    assert_summary_last(code, lines)
    assert lines[-1]["level"] == ("INFO" if code == 0 else "WARNING")


def test_quiet_mode_still_shows_how_a_failed_pass_ended(stack, config_file, capsys):
    stack.issuer.answers["token"] = [requests.ConnectionError("down")] * 2
    assert main(["--once", "-q", "--config", config_file(), "--log-format", "text"]) == 69
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "WARNING pass finished: exit_code=69" in last


def test_every_exception_class_says_what_the_pass_does_with_it():
    outcomes = {
        jobbergate_sync.ConfigError: "78", jobbergate_sync.AuthError: "77", jobbergate_sync.Forbidden: "77",
        jobbergate_sync.Unavailable: "69",
        jobbergate_sync.PeerDown: "69", jobbergate_sync.LockHeld: "75", jobbergate_sync.ItemError: "next pass",
        jobbergate_sync.Rejection: "rejected", jobbergate_sync.SubmitUnsettled: "rejected",
        jobbergate_sync.DroppedOptions: "rejected", jobbergate_sync.TooLarge: "rejected",
        jobbergate_sync.ForeignJob: "ended",
        jobbergate_sync.DeadlineReached: "next pass", jobbergate_sync.ApiConflict: "next pass",
        jobbergate_sync.SyncError: "70",
        jobbergate_sync.Standby: "exit 0",
    }
    defined = {obj for _, obj in inspect.getmembers(jobbergate_sync, inspect.isclass)
               if issubclass(obj, Exception) and obj.__module__ == "jobbergate_sync"}
    assert defined == set(outcomes)
    for cls, outcome in outcomes.items():
        assert outcome in (cls.__doc__ or ""), cls.__name__
