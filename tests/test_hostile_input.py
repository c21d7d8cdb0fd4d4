"""No submission can stop a pass: whatever a user writes in #SBATCH lines and sbatch_arguments comes out
of parsing and translation as a Rejection or a job, and an unexpected failure on one submission is that
submission's failure alone (rejected once it has failed so in three passes in a row)."""

from __future__ import annotations

import itertools
import json
import sqlite3

import pytest
import responses
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jobbergate_sync
from fakes import JWT_KEY, FakeIssuer, FakeJobbergate, FakeSlurm, run
from jobbergate_sync import (
    NEWEST_API_MINOR,
    OLDEST_API_MINOR,
    OPTION_SPECS,
    SBATCH_COMMAND_SPECS,
    Rejection,
    build_job_request,
    build_sbatch_request,
    main,
    parse_options,
)
from properties import examples

ENVIRONMENT = {"PATH": "/usr/bin:/bin", "HOME": "/home/u", "USER": "u", "LOGNAME": "u"}
MINORS = range(OLDEST_API_MINOR, NEWEST_API_MINOR + 1)
NUMERIC_OPTIONS = ("nodes", "ntasks", "cpus-per-task", "ntasks-per-node", "mincpus", "threads-per-core",
                   "sockets-per-node", "mem", "mem-per-cpu", "tmp", "time", "time-min", "nice")


def job_for(words: list[str], minor: int) -> jobbergate_sync.JobRequest:
    script = "#!/bin/bash\n" + "".join(f"#SBATCH {word}\n" for word in words[:2]) + "echo hi\n"
    return build_job_request(script, words[2:], "name", "/home/u", ENVIRONMENT, "tag", minor, "24.11.5")


@pytest.mark.parametrize("option", NUMERIC_OPTIONS)
@pytest.mark.parametrize("digits", [19, 5000])
def test_a_number_longer_than_18_digits_is_a_rejection_naming_the_option(option, digits):
    for minor in MINORS:
        with pytest.raises(Rejection, match=f"--{option}"):
            job_for([f"--{option}={'9' * digits}"], minor)


@pytest.mark.parametrize("value", ["2-" + "9" * 19, "1:" + "9" * 5000, "9" * 19 + "-1:00:00"])
def test_every_part_of_a_time_is_bounded(value):
    with pytest.raises(Rejection, match="--time"):
        job_for([f"--time={value}"], NEWEST_API_MINOR)


def test_a_signal_delay_is_bounded():
    with pytest.raises(Rejection, match="--signal"):
        job_for(["--signal=B:USR1@" + "9" * 5000], NEWEST_API_MINOR)


def test_an_18_digit_number_still_translates():
    assert job_for(["--ntasks=" + "9" * 18], 38).payload["job"]["tasks"] == 10 ** 18 - 1


@pytest.mark.parametrize("value", ["now-9999999999999days", "now+9999999999999weeks", "now+" + "9" * 19,
                                   "now+" + "9" * 5000 + "days", "uts" + "9" * 19, "uts" + "1" * 5000, "9999-12-31"])
def test_a_begin_time_far_out_is_a_time_or_a_rejection_never_an_error(value):
    for minor in MINORS:  # far but representable (9999-12-31) goes through; beyond any clock is refused
        try:
            job_for([f"--begin={value}"], minor)
        except Rejection as exc:
            assert "--begin" in str(exc)


def test_digits_other_than_ascii_are_no_number():
    with pytest.raises(Rejection, match="--ntasks"):
        job_for(["--ntasks=\u0663"], NEWEST_API_MINOR)  # ARABIC-INDIC DIGIT THREE: int() would take it


# Words a hostile user would try: every option this tool knows (long and short), a few it does not,
# values that are huge, signed, non-ASCII, control characters, quotes and Slurm's time words.
OPTION_NAMES = [spec.name for spec in OPTION_SPECS + SBATCH_COMMAND_SPECS] + ["foo", "mem-bind", "x", ""]
SHORT_NAMES = [spec.short for spec in OPTION_SPECS + SBATCH_COMMAND_SPECS if spec.short] + ["v", "Q", "k"]
HOSTILE_VALUES = ["", "0", "-1", "+5", "1-2", "9" * 19, "9" * 4400, "uts" + "9" * 30, "now+" + "9" * 30 + "days",
                  "now-9999999999999days", "1-1:1:1", "99:99", "12:00pm", "2024-13-40", "0000-01-01", "12/31",
                  "\u0663", "\uff13", "\u00b2", "a,b", "ALL", "NONE", "A=b", "gpu:2", "B:USR1@" + "9" * 5000,
                  "'q", "\\", "#", " ", "\u00a0", "\x1b[2J", "\x85", "\u202e", "\ud800", "teatime", "today"]
values = st.one_of(st.sampled_from(HOSTILE_VALUES), st.text(max_size=30),
                   st.builds(lambda head, tail: head + tail, st.sampled_from(HOSTILE_VALUES), st.text(max_size=8)))
# Half the options drawn are those whose values are numbers or times, where the traps are.
names = st.one_of(st.sampled_from(NUMERIC_OPTIONS + ("begin", "signal")), st.sampled_from(OPTION_NAMES))
option_word = st.one_of(
    st.builds(lambda name, value: [f"--{name}={value}"], names, values),
    st.builds(lambda name, value: [f"--{name}", value], names, values),
    st.builds(lambda name, value: [f"-{name}{value}"], st.sampled_from(SHORT_NAMES), values),
    st.builds(lambda value: [value], values),
)
option_words = st.lists(option_word, min_size=1, max_size=5).map(lambda groups: [w for group in groups for w in group])
PROPERTY_SETTINGS = settings(max_examples=examples(500), deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(option_words)
def test_any_option_words_give_a_job_or_a_rejection_on_every_api_version(words):
    for source in ("#SBATCH", "sbatch_arguments"):
        try:
            parse_options(words, source)
        except Rejection:
            pass
    for minor in MINORS:
        try:
            job_for(words, minor)
        except Rejection:
            pass


@PROPERTY_SETTINGS
@given(option_words)
def test_any_option_words_give_an_sbatch_command_or_a_rejection(words):
    script = "#!/bin/bash\n" + "".join(f"#SBATCH {word}\n" for word in words[:2]) + "echo hi\n"
    try:
        build_sbatch_request(script, words[2:], "name", "/home/u", ENVIRONMENT, "tag")
    except Rejection:
        pass


# Half the submissions of a pass carry a number or time of the kind that once ended every pass.
poison_words = st.builds(lambda name, value, rest: [f"--{name}={value}", *rest], st.sampled_from(NUMERIC_OPTIONS + ("begin",)),
                         st.sampled_from(["9" * 4400, "now-9999999999999days", "9" * 19, "1:" + "9" * 5000]), option_words)
SUBMISSION_IDS = itertools.count(1)  # one journal serves every example: each submission is new to it


@settings(max_examples=examples(30), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(option_words | poison_words, min_size=1, max_size=3))
def test_whatever_submissions_hold_a_pass_ends_each_submitted_or_rejected(config_file, email, submissions):
    config = config_file()  # the same file every example: config_file writes it anew
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        api = FakeJobbergate(rsps, FakeIssuer(rsps))
        FakeSlurm(rsps, JWT_KEY)
        ids = []
        for words in submissions:
            script = "#!/bin/bash\n" + "".join(f"#SBATCH {word}\n" for word in words[:2]) + "echo hi\n"
            ids.append(next(SUBMISSION_IDS))
            api.add_submission(ids[-1], {"job.sh": script.encode("utf-8", "surrogatepass")}, email=email,
                               sbatch_arguments=words[2:])

        assert run(config) == 0
        assert {api.status(submission_id) for submission_id in ids} <= {"SUBMITTED", "REJECTED"}


# A pass meeting a bug on one submission's input (stood for by a check that raises on it).

POISON = b"#!/bin/bash\n# poison\necho hi\n"


@pytest.fixture
def poisoned(monkeypatch) -> dict[str, bool]:
    """While state["on"], the check of a script holding "poison" raises what no code expects."""
    real, state = jobbergate_sync.script_text, {"on": True}

    def script_text(script_bytes: bytes, filename: str) -> str:
        if state["on"] and b"poison" in script_bytes:
            raise RuntimeError("a bug met on this input")
        return real(script_bytes, filename)

    monkeypatch.setattr(jobbergate_sync, "script_text", script_text)
    return state


def run_logged(config: str, capsys) -> tuple[int, list[dict]]:
    code = main(["--once", "--config", config, "--log-format", "json"])
    return code, [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]


def failure_rows(tmp_path) -> list[tuple]:
    with sqlite3.connect(tmp_path / "state" / "journal.sqlite3") as db:
        return db.execute("SELECT submission_id, passes FROM item_failures").fetchall()


def test_an_unexpected_failure_is_that_submissions_alone(stack, config_file, email, capsys, poisoned):
    stack.api.add_submission(1, {"job.sh": POISON}, email=email)
    for submission_id in range(2, 12):
        stack.api.add_submission(submission_id, email=email)
    stack.api.add_submission(50, email=email, status="SUBMITTED", slurm_job_id=777)
    stack.slurm.add_job(777, "COMPLETED")

    code, lines = run_logged(config_file(), capsys)

    assert code == jobbergate_sync.EXIT_ITEMS_FAILED
    assert [stack.api.status(i) for i in range(2, 12)] == ["SUBMITTED"] * 10
    assert stack.api.status(1) == "CREATED"
    assert stack.api.status(50) == "DONE" and stack.api.health == [90]  # the update phase and the ping ran
    [error] = [line for line in lines if line["level"] == "ERROR"]
    assert error["submission_id"] == 1 and "RuntimeError: a bug met on this input" in error["exc_info"]
    assert lines[-1]["errors"] == 1 and lines[-1]["submitted"] == 10


def test_an_unexpected_failure_while_updating_one_submission_leaves_the_others_updated(stack, config_file, capsys,
                                                                                        monkeypatch):
    for submission_id, job_id in ((1, 100), (2, 200)):
        stack.api.add_submission(submission_id, status="SUBMITTED", slurm_job_id=job_id)
        stack.slurm.add_job(job_id, "COMPLETED")
    real = jobbergate_sync.UpdatePhase.update_one

    def update_one(self, item, jobs):
        if item["id"] == 1:
            raise KeyError("a bug met on this item")
        real(self, item, jobs)

    monkeypatch.setattr(jobbergate_sync.UpdatePhase, "update_one", update_one)

    code, lines = run_logged(config_file(), capsys)

    assert code == jobbergate_sync.EXIT_ITEMS_FAILED
    assert stack.api.status(2) == "DONE" and stack.api.status(1) == "SUBMITTED" and stack.api.health == [90]
    [error] = [line for line in lines if line["level"] == "ERROR"]
    assert error["submission_id"] == 1 and "KeyError" in error["exc_info"]


def test_a_submission_failing_unexpectedly_in_three_passes_in_a_row_is_rejected(stack, config_file, email,
                                                                                   capsys, poisoned, tmp_path):
    stack.api.add_submission(1, {"job.sh": POISON}, email=email)
    config = config_file()

    assert [run_logged(config, capsys)[0] for _ in range(2)] == [1, 1]
    assert stack.api.status(1) == "CREATED" and failure_rows(tmp_path) == [(1, 2)]
    code, _ = run_logged(config, capsys)

    assert code == jobbergate_sync.EXIT_ITEMS_FAILED
    assert stack.api.status(1) == "REJECTED"
    message = stack.api.submissions[1]["report_message"]
    assert "3 passes in a row" in message and "RuntimeError: a bug met on this input" in message
    assert failure_rows(tmp_path) == []


def test_a_pass_that_goes_well_clears_the_count(stack, config_file, email, capsys, poisoned, tmp_path):
    stack.api.add_submission(1, {"job.sh": POISON}, email=email)
    config = config_file()
    assert [run_logged(config, capsys)[0] for _ in range(2)] == [1, 1]
    poisoned["on"] = False

    assert run_logged(config, capsys)[0] == 0

    assert stack.api.status(1) == "SUBMITTED" and failure_rows(tmp_path) == []


# What a user wrote never reaches an admin's terminal raw, and a configuration error never echoes a line.

@pytest.mark.parametrize("name", ["a\u202eb.sh", "a\x85b", "a\u200bb", "a\x9bb", "a\ud800b"])
def test_a_file_name_with_a_control_or_format_character_is_refused(name):
    with pytest.raises(Rejection, match="control character"):
        jobbergate_sync.validated_filename(name)


def test_an_escape_sequence_in_an_option_reaches_neither_the_text_log_nor_the_owner_raw(stack, config_file, email,
                                                                                        capsys):
    stack.api.add_submission(1, {"job.sh": b"#!/bin/bash\n#SBATCH --fo\x1b[2J\x1b[31mo=1\necho hi\n"}, email=email)

    assert main(["--once", "--config", config_file(), "--log-format", "text"]) == 0

    err = capsys.readouterr().err
    assert "\x1b" not in err and "--fo\\x1b[2J\\x1b[31mo" in err
    assert stack.api.status(1) == "REJECTED"
    assert "\x1b" not in stack.api.submissions[1]["report_message"]


def test_a_log_line_cannot_be_forged_by_a_line_break():
    formatter = jobbergate_sync.make_formatter("text")
    record = jobbergate_sync.log.makeRecord("x", 20, __file__, 0, "rejecting: %s", ("a\n2026 ERROR forged\u202e",), None)
    assert formatter.format(record).endswith("rejecting: a\\n2026 ERROR forged\\u202e")


def test_a_configuration_syntax_error_names_the_line_never_its_content(tmp_path, capsys):
    secret = "S3cr3t-Pasted-On-Its-Own-Line-0123456789"
    config = tmp_path / "bad.ini"
    config.write_text(f"[oidc]\nclient_id = c\n{secret}\n")
    config.chmod(0o600)

    assert main(["--once", "--config", str(config), "--log-format", "text"]) == jobbergate_sync.EX_CONFIG

    err = capsys.readouterr().err
    assert f"configuration file {config}: line 3:" in err and secret not in err


def test_a_file_without_a_section_header_names_line_1_only(tmp_path):
    config = tmp_path / "bad.ini"
    config.write_text("client_secret = hunter2-hunter2\n")
    with pytest.raises(jobbergate_sync.ConfigError) as refused:
        jobbergate_sync.load_config(str(config), {})
    assert "line 1" in str(refused.value) and "hunter2" not in str(refused.value)


# Emails: one canonical form, and an account only for an address of a mapped domain.

EMAIL_PARTS = ["alice", "Alice", "\u212aate", "al\u0130ce", "a b", "", "@", "example.com", "EXAMPLE.com",
               "attacker.example", "\x00", "\u202e"]
emails = st.one_of(st.text(max_size=40), st.builds("{}@{}".format, st.sampled_from(EMAIL_PARTS) | st.text(max_size=8),
                                                   st.sampled_from(EMAIL_PARTS) | st.text(max_size=8)))


@PROPERTY_SETTINGS
@given(emails)
def test_any_email_maps_only_as_its_ascii_lowercase_form_in_a_mapped_domain(email):
    sections = {"mapper": {"type": "email-local-part", "domains": "example.com", "user": "", "map_file": "",
                           "min_uid": 1000}}
    mapper = jobbergate_sync.UserMapper(jobbergate_sync.Config(sections, "", None, None), lookup=lambda name: None)
    try:
        username = mapper.username_for(email)
    except Rejection:
        return
    assert email.isascii() and email.lower() == f"{username}@example.com"
