"""The command line: exit codes, lock, quiet mode, logging without secrets, deadline."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import threading

import pytest

import jobbergate_sync
from fakes import API, CLIENT_SECRET, JWT_KEY
from jobbergate_sync import main


def test_help_documents_every_exit_code(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for code in ("0 ", "1 ", "64", "69", "70", "75", "77", "78"):
        assert f"  {code}" in out
    assert "--dry-run" in out and "--once" in out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert jobbergate_sync.__version__ in capsys.readouterr().out


def test_usage_error_is_64(capsys):
    assert main(["--no-such-flag"]) == jobbergate_sync.EX_USAGE
    assert "No such option" in capsys.readouterr().err


def test_missing_config_is_78(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "absent.ini")]) == jobbergate_sync.EX_CONFIG
    assert "absent.ini does not exist" in capsys.readouterr().err


def test_unknown_key_is_78_and_named(config_file, capsys):
    path = config_file(**{"run.colour": "blue"})
    assert main(["--config", path]) == jobbergate_sync.EX_CONFIG
    assert "unknown key 'colour' in [run]" in capsys.readouterr().err


def test_config_from_environment_variable(config_file, monkeypatch, capsys):
    monkeypatch.setenv("JOBBERGATE_SYNC_CONFIG", config_file())
    assert main(["--check-config"]) == 0
    assert "configuration is valid" in capsys.readouterr().out


def test_state_dir_open_to_others_is_refused(config_file, tmp_path, capsys):
    (tmp_path / "state").mkdir(mode=0o755)
    (tmp_path / "state").chmod(0o755)
    assert main(["--config", config_file()]) == jobbergate_sync.EX_CONFIG
    assert "state_dir" in capsys.readouterr().err


def test_lock_held_exits_75_and_touches_nothing(stack, config_file, tmp_path):
    config = config_file()
    with jobbergate_sync.RunLock(str(tmp_path / "run" / "lock")):  # as a running pass holds it
        assert main(["--config", config]) == jobbergate_sync.EX_TEMPFAIL
    assert stack.api.calls == [] and stack.issuer.issued == []


def test_a_killed_lock_holder_does_not_block_the_next_run(stack, config_file, tmp_path):
    config = config_file()
    lock = tmp_path / "run" / "lock"
    lock.parent.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT, 0o600)\nfcntl.flock(fd, fcntl.LOCK_EX)\n"
         "print('locked', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["--config", config]) == jobbergate_sync.EX_TEMPFAIL
    finally:
        holder.kill()
        holder.wait()
    assert main(["--config", config]) == 0


def test_quiet_is_silent_when_all_went_well(stack, config_file, email, capsys):
    stack.api.add_submission(1, email=email)
    assert main(["--once", "-q", "--config", config_file()]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    assert stack.api.status(1) == "SUBMITTED"


def test_quiet_still_reports_failures(stack, config_file, email, capsys):
    stack.api.add_submission(1, email=email)
    stack.slurm.down = True
    assert main(["--once", "-q", "--config", config_file()]) == jobbergate_sync.EX_UNAVAILABLE
    assert "slurm.test" in capsys.readouterr().err


class FakeTty(io.StringIO):
    """stderr as a terminal: someone running the tool by hand."""

    def isatty(self):
        return True


@pytest.fixture
def at_terminal(monkeypatch):
    """Call it in the test body: pytest's output capture replaces sys.stderr after fixtures ran."""

    def install():
        stream = FakeTty()
        monkeypatch.setattr(sys, "stderr", stream)
        return stream

    return install


def test_at_a_terminal_the_log_is_text(stack, config_file, email, at_terminal):
    terminal = at_terminal()
    stack.api.add_submission(1, email=email)
    assert main(["--once", "--config", config_file()]) == 0
    lines = terminal.getvalue().splitlines()
    assert lines and not any(line.startswith("{") for line in lines)
    assert re.search(r" INFO pass finished: exit_code=0 submitted=1 ", lines[-1])


def test_under_cron_the_log_is_json_lines(stack, config_file, email, capsys):
    stack.api.add_submission(1, email=email)
    assert main(["--once", "--config", config_file()]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]  # every line is JSON
    assert lines[-1]["message"].startswith("pass finished: exit_code=0") and lines[-1]["submitted"] == 1


def test_quiet_at_a_terminal_is_silent_when_all_went_well(stack, config_file, email, at_terminal):
    terminal = at_terminal()
    stack.api.add_submission(1, email=email)
    assert main(["--once", "-q", "--config", config_file()]) == 0
    assert terminal.getvalue() == ""


def test_quiet_shows_a_failed_pass_in_the_format_of_its_destination(stack, config_file, email, at_terminal):
    terminal = at_terminal()
    stack.api.add_submission(1, email=email)
    stack.slurm.down = True
    config = config_file()
    assert main(["--once", "-q", "--config", config]) == jobbergate_sync.EX_UNAVAILABLE
    assert re.search(r" WARNING pass finished: exit_code=69 ", terminal.getvalue().splitlines()[-1])
    terminal.seek(0)
    terminal.truncate()
    assert main(["--once", "-q", "--config", config, "--log-format", "json"]) == jobbergate_sync.EX_UNAVAILABLE
    last = json.loads(terminal.getvalue().splitlines()[-1])
    assert last["level"] == "WARNING" and last["exit_code"] == 69


def test_internal_error_is_70_with_a_traceback(stack, config_file, monkeypatch, capsys):
    def broken(self):
        raise RuntimeError("boom")

    monkeypatch.setattr(jobbergate_sync.SyncPass, "run", broken)
    assert main(["--config", config_file(), "--log-format", "text"]) == jobbergate_sync.EX_SOFTWARE
    err = capsys.readouterr().err
    assert "internal error" in err and "RuntimeError: boom" in err


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_no_secret_reaches_the_log(stack, config_file, email, capsys, log_format):
    stack.api.add_submission(1, email=email)
    stack.api.add_submission(2, email="root@example.com")
    stack.api.add_submission(3, status="SUBMITTED", slurm_job_id=300)
    stack.slurm.add_job(300, "COMPLETED")
    config = config_file()
    assert main(["--config", config, "-v", "--log-format", log_format]) == 0
    stack.api.reject_all_tokens = True  # a failing pass logs more
    assert main(["--config", config, "-v", "--log-format", log_format]) == jobbergate_sync.EX_NOPERM
    err = capsys.readouterr().err
    secrets = [CLIENT_SECRET, JWT_KEY.decode(), *stack.issuer.issued,
               *{headers["X-SLURM-USER-TOKEN"] for _, _, headers in stack.slurm.requests}]
    assert len(secrets) >= 5
    for secret in secrets:
        assert secret not in err
    assert "submission_id" in err  # the log did say what happened
    if log_format == "json":
        lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        assert any(line.get("submission_id") == 1 and line.get("slurm_job_id") == 100 for line in lines)
        assert any(line["level"] == "DEBUG" for line in lines)


def test_verbose_logs_every_http_exchange_and_the_job_request_without_the_script(stack, config_file, email, capsys):
    stack.api.add_submission(1, {"job.sh": b"#!/bin/bash\n#SBATCH --job-name=verbose-demo\necho secret-script-body\n"},
                             email=email)

    assert main(["--config", config_file(), "-v", "--log-format", "json"]) == 0

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    debug = [line["message"] for line in lines if line["level"] == "DEBUG"]
    assert any(re.fullmatch(r"POST http://slurm\.test:6820/slurm/v0\.0\.38/job/submit -> HTTP 200 in [\d.]+ s", m)
               for m in debug)
    assert any(m.startswith(f"GET {API}/job-submissions/agent/pending?") and "-> HTTP 200" in m for m in debug)
    [request] = [m for m in debug if m.startswith("job request for slurmrestd")]
    assert '"name": "verbose-demo"' in request
    assert "secret-script-body" not in request


def test_deadline_leaves_the_rest_for_the_next_pass(stack, config_file, email, capsys):
    for submission_id in (1, 2):
        stack.api.add_submission(submission_id, email=email)
    stack.slurm.slow_down_submits(1.2)
    config = config_file(**{"run.deadline": 1, "run.workers": 1})  # one at a time: the second starts late
    assert main(["--config", config]) == 0
    assert "deadline" in capsys.readouterr().err
    assert sorted(stack.api.status(i) for i in (1, 2)) == ["CREATED", "SUBMITTED"]


def test_console_script_entry_point_runs(tmp_path):
    result = subprocess.run([sys.executable, "-c", "import jobbergate_sync; jobbergate_sync.console_main()",
                             "--config", str(tmp_path / "none.ini")], capture_output=True, text=True)
    assert result.returncode == jobbergate_sync.EX_CONFIG
    assert "does not exist" in result.stderr


def test_the_watchdog_ends_a_pass_stuck_past_its_deadline(config_file):
    """Whatever a pass waits for, it ends soon after its deadline with its summary line and 69, and so
    releases the lock: here every phase blocks for ever."""
    hangs = ("import sys, threading, jobbergate_sync as j\n"
             "j.WATCHDOG_GRACE_SECONDS = 0.5\n"
             "j.SyncPass.run = lambda self: threading.Event().wait()\n"
             "sys.exit(j.main(sys.argv[1:]))\n")
    result = subprocess.run([sys.executable, "-c", hangs, "--once", "--log-format", "text", "--config",
                             config_file(**{"run.deadline": 1})], capture_output=True, text=True, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == jobbergate_sync.EX_UNAVAILABLE
    assert "past its 1 s deadline; the watchdog ends it" in lines[-2]
    assert "pass finished: exit_code=69" in lines[-1]


def test_a_pass_that_ends_by_an_interrupt_leaves_no_watchdog_behind(stack, config_file, monkeypatch):
    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(jobbergate_sync.SyncPass, "run", interrupted)
    config = jobbergate_sync.load_config(config_file(), {})
    jobbergate_sync.prepare_state_dir(config.run.state_dir)
    with pytest.raises(KeyboardInterrupt):
        jobbergate_sync.run_once(config, dry_run=False)
    watchdogs = [thread for thread in threading.enumerate() if thread.name == "watchdog"]
    for thread in watchdogs:
        thread.join(5)  # a cancelled one ends at once; a live one would wait for the deadline plus its grace
    assert not any(thread.is_alive() for thread in watchdogs)
