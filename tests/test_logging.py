"""SecretRedactor and setup_logging: secrets never reach a log line; context fields are carried."""

from __future__ import annotations

import io
import json
import logging
from typing import Any, Callable, Iterator, List

import pytest

import jobbergate_sync
from jobbergate_sync import SecretRedactor, log, log_fields, setup_logging

SECRET = "client-secret-value-42"
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdW4iOiJhbGljZSJ9.c2lnbmF0dXJl"


@pytest.fixture(autouse=True)
def isolated_logger(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A fresh global redactor, and the tool's logger restored afterwards."""
    monkeypatch.setattr(jobbergate_sync, "REDACTOR", SecretRedactor())
    saved = (list(log.handlers), log.level, log.propagate)
    yield
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    for handler in saved[0]:
        log.addHandler(handler)
    log.setLevel(saved[1])
    log.propagate = saved[2]


@pytest.fixture
def capture() -> Callable[[str, str], io.StringIO]:
    def _capture(log_format: str, level: str = "debug") -> io.StringIO:
        stream = io.StringIO()
        setup_logging(log_format, level, stream=stream)
        jobbergate_sync.REDACTOR.add(SECRET)
        jobbergate_sync.REDACTOR.add(TOKEN)
        return stream

    return _capture


def json_lines(stream: io.StringIO) -> List[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# SecretRedactor on its own
# ---------------------------------------------------------------------------------------------


def test_redact_replaces_every_occurrence_of_every_secret() -> None:
    redactor = SecretRedactor()
    redactor.add(SECRET)
    redactor.add(TOKEN)
    text = f"secret={SECRET} token={TOKEN} again {SECRET}"
    assert redactor.redact(text) == "secret=*** token=*** again ***"


@pytest.mark.parametrize("value", [None, "", "abc", "12345"])
def test_empty_and_short_values_are_not_registered(value: Any) -> None:
    # Redacting very short strings would mangle ordinary words in every log line.
    redactor = SecretRedactor()
    redactor.add(value)
    assert redactor.secrets == []
    assert redactor.redact("abc 12345") == "abc 12345"


def test_filter_merges_arguments_and_redacts() -> None:
    redactor = SecretRedactor()
    redactor.add(SECRET)
    record = logging.LogRecord("jobbergate_sync", logging.INFO, __file__, 1, "value %s and %d", (SECRET, 3), None)
    assert redactor.filter(record) is True
    assert record.getMessage() == "value *** and 3"
    assert record.args == ()


# ---------------------------------------------------------------------------------------------
# setup_logging, both formats, debug level
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_secrets_in_messages_are_redacted(capture, log_format: str) -> None:
    stream = capture(log_format)
    log.debug("debug with secret %s", SECRET)
    log.info(f"inline token {TOKEN} in the message")
    log.warning("both: %s / %s", SECRET, TOKEN)
    output = stream.getvalue()
    assert SECRET not in output
    assert TOKEN not in output
    assert output.count("***") == 4
    assert "debug with secret ***" in output  # debug level is really emitted
    assert "inline token *** in the message" in output
    assert "both: *** / ***" in output


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_secrets_in_tracebacks_are_redacted(capture, log_format: str) -> None:
    stream = capture(log_format)
    try:
        raise RuntimeError(f"request failed: client_secret={SECRET}&token={TOKEN}")
    except RuntimeError:
        log.exception("submitting failed for %s", SECRET)
    output = stream.getvalue()
    assert SECRET not in output
    assert TOKEN not in output
    assert "Traceback (most recent call last)" in output
    assert "RuntimeError: request failed: client_secret=***&token=***" in output
    if log_format == "json":
        (line,) = json_lines(stream)
        assert line["message"] == "submitting failed for ***"
        assert "RuntimeError: request failed: client_secret=***&token=***" in line["exc_info"]


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_secret_in_a_chained_exception_is_redacted(capture, log_format: str) -> None:
    stream = capture(log_format)
    try:
        try:
            raise ValueError(TOKEN)
        except ValueError as inner:
            raise KeyError("outer") from inner
    except KeyError:
        log.error("failed", exc_info=True)
    output = stream.getvalue()
    assert TOKEN not in output
    assert "ValueError: ***" in output


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_secret_registered_after_setup_is_redacted(capture, log_format: str) -> None:
    stream = capture(log_format)
    late = "minted-late-token-0123456789"
    jobbergate_sync.REDACTOR.add(late)
    log.info("late %s", late)
    assert late not in stream.getvalue()
    assert "late ***" in stream.getvalue()


def test_info_level_drops_debug_lines(capture) -> None:
    stream = capture("text", "info")
    log.debug("hidden detail")
    log.info("shown")
    output = stream.getvalue()
    assert "hidden detail" not in output
    assert "shown" in output


# ---------------------------------------------------------------------------------------------
# Context fields
# ---------------------------------------------------------------------------------------------


def test_ctx_drops_empty_fields() -> None:
    assert log_fields(submission_id=7, slurm_job_id=None, user="alice") == {"extra": {"submission_id": 7, "user": "alice"}}
    assert log_fields() == {"extra": {}}


def test_json_lines_carry_context_fields(capture) -> None:
    stream = capture("json")
    log.info("submitted", **log_fields(submission_id=7, slurm_job_id=42))
    log.debug("only the submission", **log_fields(submission_id=8, slurm_job_id=None))
    log.info("no context")
    first, second, third = json_lines(stream)
    assert first["message"] == "submitted"
    assert first["submission_id"] == 7
    assert first["slurm_job_id"] == 42
    assert first["level"] == "INFO"
    assert "time" in first
    assert second["submission_id"] == 8
    assert second["level"] == "DEBUG"
    assert "slurm_job_id" not in second
    assert "submission_id" not in third and "slurm_job_id" not in third


def test_text_lines_show_context_fields(capture) -> None:
    stream = capture("text")
    log.info("submitted", **log_fields(submission_id=7, slurm_job_id=42))
    log.info("only the submission", **log_fields(submission_id=8))
    log.info("no context")
    first, second, third = stream.getvalue().splitlines()
    assert first.endswith("INFO submitted [submission_id=7 slurm_job_id=42]")
    assert second.endswith("INFO only the submission [submission_id=8]")
    assert third.endswith("INFO no context")
    assert "[" not in third


def test_text_context_and_secret_together(capture) -> None:
    stream = capture("text")
    log.warning("retrying with %s", TOKEN, **log_fields(submission_id=3, slurm_job_id=99))
    line = stream.getvalue().strip()
    assert line.endswith("WARNING retrying with *** [submission_id=3 slurm_job_id=99]")


def test_setup_logging_replaces_earlier_handlers(capture) -> None:
    first = capture("text")
    second = capture("json")
    log.info("once")
    assert first.getvalue() == ""
    assert json_lines(second)[0]["message"] == "once"
    assert len(log.handlers) == 1
    assert log.propagate is False


def test_a_secret_containing_another_is_hidden_whole() -> None:
    redactor = SecretRedactor()
    redactor.add("abcdef")
    redactor.add("abcdef-and-more")
    assert redactor.redact("token abcdef-and-more here") == "token *** here"


# ---------------------------------------------------------------------------------------------
# format = auto: text at a terminal, JSON lines anywhere else
# ---------------------------------------------------------------------------------------------


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_text_on_a_terminal() -> None:
    stream = FakeTty()
    setup_logging("auto", "info", stream=stream)
    log.info("hello", **log_fields(submission_id=7))
    assert stream.getvalue().rstrip("\n").endswith("INFO hello [submission_id=7]")


def test_auto_is_json_lines_elsewhere() -> None:
    stream = io.StringIO()
    setup_logging("auto", "info", stream=stream)
    log.info("hello", **log_fields(submission_id=7))
    [line] = json_lines(stream)
    assert line["message"] == "hello" and line["submission_id"] == 7


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_an_explicit_format_wins_over_the_terminal(log_format: str) -> None:
    stream = FakeTty()
    setup_logging(log_format, "info", stream=stream)
    log.info("hello")
    assert stream.getvalue().startswith("{") == (log_format == "json")


def test_auto_logs_json_lines_to_the_file_and_text_to_the_terminal(tmp_path) -> None:
    stream, path = FakeTty(), tmp_path / "jobbergate-sync.log"
    setup_logging("auto", "info", log_file=str(path), stream=stream)
    log.info("detail")
    log.warning("look here")
    assert [json.loads(line)["message"] for line in path.read_text().splitlines()] == ["detail", "look here"]
    assert stream.getvalue().rstrip("\n").endswith("WARNING look here")  # the terminal gets warnings only


@pytest.mark.parametrize("stream", [object(), io.StringIO()], ids=["no-isatty", "closed"])
def test_auto_without_a_usable_isatty_is_json(stream: Any) -> None:
    if isinstance(stream, io.StringIO):
        stream.close()
    assert jobbergate_sync.resolve_log_format("auto", stream) == "json"


# ---------------------------------------------------------------------------------------------
# The log file under logrotate ("create" rotation: the file is moved away, a new one started)
# ---------------------------------------------------------------------------------------------


def test_a_rotated_log_file_is_reopened(tmp_path) -> None:
    path = tmp_path / "jobbergate-sync.log"
    setup_logging("json", "info", log_file=str(path), stream=io.StringIO())
    log.info("before rotation")
    path.rename(tmp_path / "jobbergate-sync.log.1")
    log.info("after rotation")
    assert [json.loads(line)["message"] for line in path.read_text().splitlines()] == ["after rotation"]
    rotated = (tmp_path / "jobbergate-sync.log.1").read_text().splitlines()
    assert [json.loads(line)["message"] for line in rotated] == ["before rotation"]


def test_a_log_file_removed_by_rotation_is_recreated(tmp_path) -> None:
    path = tmp_path / "jobbergate-sync.log"
    setup_logging("json", "info", log_file=str(path), stream=io.StringIO())
    log.info("first")
    path.unlink()
    log.info("second")
    assert [json.loads(line)["message"] for line in path.read_text().splitlines()] == ["second"]
