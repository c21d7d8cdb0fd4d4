"""[metrics]: the Prometheus textfile and the healthchecks-style ping, after passes that succeed and
fail; neither ever changes a pass's exit code."""

from __future__ import annotations

import http.server
import json
import os
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

import jobbergate_sync
from fakes import CLIENT_SECRET, JWT_KEY, run
from jobbergate_sync import EX_NOPERM, EX_SOFTWARE, EX_TEMPFAIL, EX_UNAVAILABLE


def samples(path: Path) -> dict[str, float]:
    """Every sample of the textfile, parsed by prometheus_client, as 'name{labels}' -> value."""
    result = {}
    for family in text_string_to_metric_families(path.read_text()):
        assert family.name.startswith("jobbergate_sync_")
        assert family.type == "gauge" and family.documentation
        for sample in family.samples:
            labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
            result[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return result


@pytest.fixture
def textfile(tmp_path: Path) -> Path:
    directory = tmp_path / "textfile_collector"
    directory.mkdir()
    return directory / "jobbergate_sync.prom"


# ---------------------------------------------------------------------------------------------
# The textfile
# ---------------------------------------------------------------------------------------------


def test_textfile_after_a_successful_pass(stack, config_file, email, textfile):
    stack.api.add_submission(1, email=email)
    stack.api.add_submission(2, email="root@example.com")  # rejected: root
    stack.api.add_submission(3, status="SUBMITTED", slurm_job_id=300)
    stack.slurm.add_job(300, "COMPLETED")
    before = time.time()

    assert run(config_file(**{"metrics.textfile": textfile})) == 0

    values = samples(textfile)
    assert before <= values["jobbergate_sync_last_run_timestamp_seconds"] <= time.time()
    assert values["jobbergate_sync_last_success_timestamp_seconds"] == values["jobbergate_sync_last_run_timestamp_seconds"]
    assert values["jobbergate_sync_last_run_exit_code"] == 0
    assert 0 < values["jobbergate_sync_last_run_duration_seconds"] < 30
    assert values['jobbergate_sync_last_run_items{outcome="submitted"}'] == 1
    assert values['jobbergate_sync_last_run_items{outcome="rejected"}'] == 1
    assert values['jobbergate_sync_last_run_items{outcome="updated"}'] == 1
    assert values['jobbergate_sync_last_run_items{outcome="cancelled"}'] == 0
    assert values['jobbergate_sync_last_run_items{outcome="errors"}'] == 0
    assert values["jobbergate_sync_last_run_deadline_reached"] == 0
    assert values["jobbergate_sync_pending_submissions"] == 2
    assert values["jobbergate_sync_active_submissions"] == 2  # 3, and 1 once submitted in this pass
    assert values["jobbergate_sync_journal_entries"] == 2  # 1 and 3, until Jobbergate closes them
    assert stat.S_IMODE(textfile.stat().st_mode) == 0o644  # node_exporter does not run as root
    assert sorted(p.name for p in textfile.parent.iterdir()) == ["jobbergate_sync.prom"]  # no temporary left


def test_a_failed_pass_keeps_the_last_success_and_says_how_it_ended(stack, config_file, email, textfile):
    config = config_file(**{"metrics.textfile": textfile})
    assert run(config) == 0
    succeeded_at = samples(textfile)["jobbergate_sync_last_success_timestamp_seconds"]
    time.sleep(0.01)
    stack.api.add_submission(1, email=email)
    stack.slurm.down = True

    assert run(config) == EX_UNAVAILABLE

    values = samples(textfile)
    assert values["jobbergate_sync_last_run_exit_code"] == EX_UNAVAILABLE
    assert values["jobbergate_sync_last_success_timestamp_seconds"] == succeeded_at
    assert values["jobbergate_sync_last_run_timestamp_seconds"] > succeeded_at
    assert values['jobbergate_sync_last_run_items{outcome="errors"}'] >= 1
    assert values["jobbergate_sync_pending_submissions"] == 1


def test_a_pass_that_never_succeeded_has_a_zero_last_success(stack, config_file, textfile):
    stack.api.reject_all_tokens = True
    assert run(config_file(**{"metrics.textfile": textfile})) == EX_NOPERM
    values = samples(textfile)
    assert values["jobbergate_sync_last_run_exit_code"] == EX_NOPERM
    assert values["jobbergate_sync_last_success_timestamp_seconds"] == 0
    assert "jobbergate_sync_pending_submissions" not in values  # never listed: unknown, not 0


def test_an_internal_error_still_writes_the_textfile(stack, config_file, monkeypatch, textfile):
    def broken(self):
        raise RuntimeError("boom")

    monkeypatch.setattr(jobbergate_sync.SyncPass, "run", broken)
    assert run(config_file(**{"metrics.textfile": textfile})) == EX_SOFTWARE
    assert samples(textfile)["jobbergate_sync_last_run_exit_code"] == EX_SOFTWARE


def test_an_unwritable_textfile_is_a_warning_and_changes_no_exit_code(stack, config_file, email, tmp_path, capsys):
    stack.api.add_submission(1, email=email)
    missing = tmp_path / "no-such-directory" / "jobbergate_sync.prom"
    assert run(config_file(**{"metrics.textfile": missing}), "-q") == 0
    [line] = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert line["level"] == "WARNING" and "[metrics] textfile" in line["message"] and str(missing) in line["message"]
    assert stack.api.status(1) == "SUBMITTED"


def test_dry_run_and_a_held_lock_write_no_textfile(stack, config_file, textfile, tmp_path):
    config = config_file(**{"metrics.textfile": textfile})
    assert run(config, "--dry-run") == 0
    assert not textfile.exists()
    with jobbergate_sync.RunLock(str(tmp_path / "run" / "lock")):  # as a running pass holds it
        assert run(config) == EX_TEMPFAIL
    assert not textfile.exists()


def test_previous_success_reads_an_earlier_textfile():
    assert jobbergate_sync.previous_success("") is None
    assert jobbergate_sync.previous_success("jobbergate_sync_last_success_timestamp_seconds 1700000000.5\n") == 1700000000.5
    assert jobbergate_sync.previous_success("jobbergate_sync_last_success_timestamp_seconds garbage\n") is None


# ---------------------------------------------------------------------------------------------
# The ping, against a real HTTP listener on the loopback
# ---------------------------------------------------------------------------------------------


class PingServer:
    """A healthchecks-like endpoint: records each request's path and body, answers `status`."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str]] = []
        self.status = 200
        self.delay = 0.0
        self.released = threading.Event()  # ends a delayed answer early when the server closes
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                server.requests.append((self.command, self.path, body))
                server.released.wait(server.delay)
                self.send_response(server.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            do_GET = do_POST = _answer

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # Handler threads are joined on close: a thread left behind would make later tests fork a
        # multi-threaded process (the tool forks to become a job's user).
        self.httpd.daemon_threads = False
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/ping/3f1c2d4e-check"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.requests]

    def close(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def ping_server(stack) -> Iterator[PingServer]:
    server = PingServer()
    stack.rsps.add_passthru(server.url)  # the ping goes to the real listener, not the fakes
    yield server
    server.close()


# While the listener's thread runs, these passes only update jobs: a submit forks a child to
# become the job's user, and forking a multi-threaded process is what the tool never does.


def test_a_successful_pass_pings_start_then_success_with_its_log_tail(stack, config_file, ping_server):
    stack.api.add_submission(3, status="SUBMITTED", slurm_job_id=300)
    stack.slurm.add_job(300, "RUNNING")
    assert run(config_file(**{"metrics.ping_url": ping_server.url})) == 0
    assert ping_server.paths() == ["/ping/3f1c2d4e-check/start", "/ping/3f1c2d4e-check"]
    (_, _, start_body), (method, _, body) = ping_server.requests
    assert method == "POST" and start_body == ""
    lines = body.splitlines()
    assert lines[0] == "exit_code=0"
    assert lines[-1].endswith("INFO pass finished: exit_code=0 submitted=0 rejected=0 updated=1 cancelled=0 "
                              f"errors=0 duration={lines[-1].rsplit('=', 1)[1]}")
    assert any("INFO" in line and "submission_id=3 slurm_job_id=300" in line for line in lines)  # this pass's lines
    assert len(lines) <= 1 + jobbergate_sync.PING_TAIL_LINES


def test_a_failed_pass_pings_its_exit_code_and_no_secret(stack, config_file, ping_server):
    stack.api.add_submission(3, status="SUBMITTED", slurm_job_id=300)
    stack.slurm.down = True
    assert run(config_file(**{"metrics.ping_url": ping_server.url})) == EX_UNAVAILABLE
    assert ping_server.paths() == ["/ping/3f1c2d4e-check/start", f"/ping/3f1c2d4e-check/{EX_UNAVAILABLE}"]
    body = ping_server.requests[-1][2]
    assert body.startswith(f"exit_code={EX_UNAVAILABLE}\n")
    assert "slurm.test" in body and "WARNING pass finished: exit_code=69" in body
    slurm_tokens = {headers["X-SLURM-USER-TOKEN"] for _, _, headers in stack.slurm.requests}
    for secret in (CLIENT_SECRET, JWT_KEY.decode(), *stack.issuer.issued, *slurm_tokens):
        assert secret not in body


def test_an_authentication_failure_pings_77(stack, config_file, ping_server):
    stack.api.reject_all_tokens = True
    assert run(config_file(**{"metrics.ping_url": ping_server.url})) == EX_NOPERM
    assert ping_server.paths()[-1] == f"/ping/3f1c2d4e-check/{EX_NOPERM}"


def test_dry_run_sends_no_ping(stack, config_file, ping_server):
    assert run(config_file(**{"metrics.ping_url": ping_server.url}), "--dry-run") == 0
    assert ping_server.requests == []


def test_a_ping_refused_with_404_is_a_warning_only(stack, config_file, ping_server, capsys):
    ping_server.status = 404
    assert run(config_file(**{"metrics.ping_url": ping_server.url}), "-q") == 0
    err = capsys.readouterr().err
    assert err.count("answered HTTP 404") == 2  # start and end
    assert "3f1c2d4e-check" not in err  # the check's URL is its key: never logged


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_dead_ping_url_changes_nothing_but_a_warning(stack, config_file, email, textfile, capsys):
    url = f"http://127.0.0.1:{closed_port()}/ping/dead"
    stack.rsps.add_passthru(url)
    stack.api.add_submission(1, email=email)
    began = time.monotonic()
    assert run(config_file(**{"metrics.ping_url": url, "metrics.textfile": textfile})) == 0
    assert time.monotonic() - began < 5
    assert stack.api.status(1) == "SUBMITTED"
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    warnings = [line["message"] for line in lines if line["level"] == "WARNING"]
    assert len(warnings) == 2 and all("monitoring ping to 127.0.0.1 failed" in w for w in warnings)
    assert lines[-1]["message"].startswith("pass finished: exit_code=0")  # the summary is still last
    assert samples(textfile)["jobbergate_sync_last_run_exit_code"] == 0


def test_a_ping_that_never_answers_costs_at_most_its_timeout(stack, config_file, ping_server, capsys):
    ping_server.delay = 3
    began = time.monotonic()
    assert run(config_file(**{"metrics.ping_url": ping_server.url, "metrics.ping_timeout": 0.3}), "-q") == 0
    assert time.monotonic() - began < 2.5  # two pings, each given up after 0.3 s
    assert capsys.readouterr().err.count("ReadTimeout") == 2


def test_the_ping_body_is_capped_and_redacted(monkeypatch):
    redactor = jobbergate_sync.SecretRedactor()
    redactor.add(CLIENT_SECRET)
    monkeypatch.setattr(jobbergate_sync, "REDACTOR", redactor)
    body = jobbergate_sync.ping_body(1, [f"line {CLIENT_SECRET}", "x" * 50000, "last"]).decode()
    assert body.startswith("exit_code=1\n") and body.endswith("last\n")
    assert CLIENT_SECRET not in body
    assert len(body.encode()) <= jobbergate_sync.PING_BODY_LIMIT + 20


@pytest.mark.parametrize(("exit_code", "path"), [(None, "/start"), (0, ""), (1, "/1"), (69, "/69"), (78, "/78")])
def test_ping_targets_follow_healthchecks(exit_code, path):
    assert jobbergate_sync.ping_target("https://hc-ping.com/abc/", exit_code) == f"https://hc-ping.com/abc{path}"


def test_textfile_is_replaced_atomically(tmp_path, monkeypatch):
    path = tmp_path / "jobbergate_sync.prom"
    path.write_text("old\n")

    def crash(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        jobbergate_sync.write_textfile(str(path), "new\n")
    assert path.read_text() == "old\n"  # never half-written
    assert [p.name for p in tmp_path.iterdir()] == ["jobbergate_sync.prom"]


def test_quiet_stays_silent_when_the_pass_and_its_textfile_went_well(stack, config_file, email, textfile, capsys):
    stack.api.add_submission(1, email=email)
    assert run(config_file(**{"metrics.textfile": textfile}), "-q") == 0
    assert capsys.readouterr().err == ""
    assert samples(textfile)['jobbergate_sync_last_run_items{outcome="submitted"}'] == 1
