"""The sbatch backend ([slurm] backend = sbatch): the sbatch command built from a submission, and
Slurm's commands answered with what the real ones printed on Slurm 22.05, 24.11 and 25.11
(tests/fixtures/sbatch/<version>/, captured on the integration stack's Slurms)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

import jobbergate_sync
from fakes import check_lines, journal_rows, run, tag
from jobbergate_sync import (
    CommandResult,
    ItemError,
    LocalUser,
    Rejection,
    SlurmCommands,
    Unavailable,
    build_sbatch_request,
    load_config,
    report_from_records,
    report_from_slurmctld,
    report_from_slurmdbd,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sbatch"
VERSIONS = ("22.05", "24.11", "25.11")
JSON_VERSIONS = ("24.11", "25.11")  # 22.05's squeue --json has a raw exit status, sacct's a wrong one
TAG = tag(7, "cluster")
ENVIRONMENT = {"PATH": "/usr/bin:/bin", "HOME": "/home/alice", "USER": "alice", "LOGNAME": "alice"}
ALICE = LocalUser("alice", 1001, 1001, "/home/alice")


def recorded(version: str, name: str) -> dict[str, Any]:
    """A command's answer as captured (returncode, stdout, stderr)."""
    return json.loads((FIXTURES / version / f"{name}.json").read_text())


def request(script: str = "#!/bin/bash\ntrue\n", arguments: tuple[str, ...] = (), name: str = "sub-name",
            directory: str = "/home/alice/jobs") -> jobbergate_sync.SbatchRequest:
    return build_sbatch_request(script, arguments, name, directory, ENVIRONMENT, TAG)


# ------------------------------------------------------------------------------ the sbatch command

def test_arguments_go_to_sbatch_rewritten_from_the_parse_then_the_name_and_the_tagged_comment():
    made = request("#!/bin/bash\n#SBATCH --time=5 --spread-job\necho\n", ("--nodes 2", "--exclusive", "-HJx", "--part", "debug"))
    assert made.arguments == ["--ignore-pbs", "--nodes=2", "--exclusive", "--hold", "--job-name=x", "--partition=debug",
                              "--job-name=x", f"--comment={TAG}"]
    assert made.script.startswith("#!/bin/bash\n#SBATCH --time=5")  # sbatch reads the block itself
    assert made.environment == ENVIRONMENT and made.directory == "/home/alice/jobs"


def test_the_name_and_comment_follow_the_options_like_the_slurmrestd_path():
    made = request("#!/bin/bash\n#SBATCH -J from-script --comment='script note'\n", ("--comment='args note'",))
    assert made.name == "from-script"
    assert made.arguments[-1] == f"--comment={TAG} args note"  # the tag leads; the later comment wins
    assert request(arguments=("--job-name=from-args",)).name == "from-args"


def test_working_directory_follows_chdir_relative_to_the_execution_directory():
    assert request("#!/bin/bash\n#SBATCH --chdir=sub\n").working_directory == "/home/alice/jobs/sub"
    assert request(arguments=("-D", "/tmp")).working_directory == "/tmp"
    assert request().working_directory == "/home/alice/jobs"


@pytest.mark.parametrize("script, arguments, named", [
    ("#!/bin/bash\n#SBATCH --uid=0\n", (), "--uid"),
    ("#!/bin/bash\n", ("--gid=0",), "--gid"),
    ("#!/bin/bash\n", ("--export=ALL",), "--export=ALL"),
    ("#!/bin/bash\n#SBATCH --export ALL,FOO=1\n", (), "--export=ALL"),
    ("#!/bin/bash\n", ("--export=HOME",), "'HOME' must be NAME=value"),
    ("#!/bin/bash\n", ("--export-file=/etc/shadow",), "--export-file"),
    ("#!/bin/bash\n", ("--get-user-env",), "--get-user-env"),
    ("#!/bin/bash\n", ("--wrap=id",), "--wrap"),
    ("#!/bin/bash\n", ("--ui=0",), "--uid"),  # getopt_long takes a unique abbreviation
    ("#!/bin/bash\n", ("--exp=ALL",), "--export, --export-file"),
    ("#!/bin/bash\n", ("--wait",), "--wait"),
    ("#!/bin/bash\n", ("-W",), "--wait"),
    ("#!/bin/bash\n", ("-M", "other"), "--clusters"),
    ("#!/bin/bash\n", ("--test-only",), "--test-only"),
    ("#!/bin/bash\n#SBATCH --spread-job --uid=0\n", (), "--uid"),
])
def test_forbidden_options_are_refused_by_name_before_sbatch_runs(script, arguments, named):
    with pytest.raises(Rejection) as refused:
        request(script, arguments)
    assert named in str(refused.value)


def test_an_option_this_tool_does_not_translate_is_left_to_sbatch_with_its_value_attached():
    assert request(arguments=("--spread-job", "--gres-flags", "enforce-binding")).arguments[1:3] == [
        "--spread-job", "--gres-flags=enforce-binding"]
    request("#!/bin/bash\n#SBATCH --gres-flags\n#SBATCH enforce-binding\n")  # one argument list over the lines
    with pytest.raises(Rejection, match="unexpected argument 'enforce-binding' in sbatch_arguments"):
        request(arguments=("--exclusive", "enforce-binding"))  # sbatch would run a file of that name


def test_control_characters_in_arguments_are_refused():
    with pytest.raises(Rejection, match="control character"):
        request(arguments=("--comment=a\nb",))


@pytest.mark.parametrize("script, arguments, named", [
    # short options cluster as getopt clusters them, with sbatch's arities
    ("#!/bin/bash\n", ("-vW",), "--wait"),
    ("#!/bin/bash\n", ("-sW",), "--wait"),
    ("#!/bin/bash\n", ("-vMother",), "--clusters"),
    ("#!/bin/bash\n", ("-Qh",), "--help"),
    ("#!/bin/bash\n", ("--cluster=other",), "--cluster"),
    ("#!/bin/bash\n", ("--test",), "--test-only"),
    ("#!/bin/bash\n", ("--usa",), "--usage"),
    ("#!/bin/bash\n", ("--external",), "--external"),
    ("#!/bin/bash\n", ("--autocomplete=--",), "--autocomplete"),
    # sbatch reads '#SBATCH' with no space after it
    ("#!/bin/bash\n#SBATCH--wait\n", (), "--wait"),
    ("#!/bin/bash\n#SBATCH--test-only\n", (), "--test-only"),
    ("#!/bin/bash\n#SBATCH--clusters=other\n", (), "--clusters"),
    ("#!/bin/bash\n#SBATCH--uid=0 --export=ALL --get-user-env\n", (), "--uid"),
    ("#!/bin/bash\n#SLURM-vW\n", (), "--wait"),
    ("#!/bin/bash\n#SBATCH -vW\n", (), "--wait"),
    # one argument list over the block's lines, as sbatch gathers it
    ("#!/bin/bash\n#SBATCH -v\n#SBATCH -W\n", (), "--wait"),
    ("#!/bin/bash\n#SBATCH--export=all\n", (), "--export=ALL"),
    ("#!/bin/bash\n#SBATCH --export\n#SBATCH FOO=1,ALL\n", (), "--export=ALL"),
])
def test_a_refused_option_is_refused_as_sbatch_would_read_it(script, arguments, named):
    with pytest.raises(Rejection, match=f"{named} is not allowed"):
        request(script, arguments)


@pytest.mark.parametrize("script, arguments, message", [
    ("#!/bin/bash\n#SBATCHfoo\n", (), "unexpected argument 'foo' in #SBATCH"),  # sbatch: "Invalid directive"
    ("#!/bin/bash\n", ("--wa",), r"'--wa' in sbatch_arguments is ambiguous \(--wait, --wait-all-nodes"),
    ("#!/bin/bash\n", ("--clu=x",), "ambiguous"),
    ("#!/bin/bash\n", ("-u",), "unknown option '-u'"),
    ("#!/bin/bash\n", ("-v-W",), "unknown option '--'"),
    ("#!/bin/bash\n#SBATCH --\x1b[31m\n", (), r"unknown option '--\\x1b\[31m'"),  # never raw in a log
    ("#!/bin/bash\n", ("--hold=1",), "--hold in sbatch_arguments takes no value"),
    ("#!/bin/bash\n", ("--", "--wait"), "unexpected argument '--wait'"),
    ("#!/bin/bash\n#SBATCH -t\n", (), "option -t \\(--time\\) in #SBATCH needs a value"),
])
def test_what_sbatch_would_refuse_is_refused_before_it_runs(script, arguments, message):
    with pytest.raises(Rejection, match=message):
        request(script, arguments)


@pytest.mark.parametrize("script, arguments, directory", [
    ("#!/bin/bash\n", ("-QD/tmp/elsewhere",), "/tmp/elsewhere"),
    ("#!/bin/bash\n#SBATCH--chdir=/tmp/elsewhere\n", (), "/tmp/elsewhere"),
    ("#!/bin/bash\n#SBATCH -QD sub\n", (), "/home/alice/jobs/sub"),
    ("#!/bin/bash\n#SBATCH --ch\n#SBATCH /tmp/x\n", (), "/tmp/x"),
    # sbatch reads nothing of a line after an empty word: the --chdir there is not the job's
    ("#!/bin/bash\n#SBATCH -v '' --chdir=/tmp/x\n", (), "/home/alice/jobs"),
    # only ASCII whitespace separates words: this is all one comment
    ("#!/bin/bash\n#SBATCH --comment=x\u2003--chdir=/tmp/x\n", (), "/home/alice/jobs"),
    # --ignore-pbs: sbatch never reads #PBS and #BSUB directives
    ("#!/bin/bash\n#PBS -d /tmp/elsewhere\necho\n", (), "/home/alice/jobs"),
    ("#!/bin/bash\necho\n#BSUB -cwd /tmp/elsewhere\n", (), "/home/alice/jobs"),
])
def test_the_journals_directory_is_the_one_sbatch_reads(script, arguments, directory):
    made = request(script, arguments)
    assert made.working_directory == directory
    assert made.arguments[0] == "--ignore-pbs"


def test_an_empty_word_ends_the_line_so_a_value_may_come_from_the_next_line():
    """What sbatch 25.11 itself made of this block (`sbatch -v --test-only`): job-name "--output=o",
    no --wait."""
    made = request("#!/bin/bash\n#SBATCH --job-name \"\" --wait\n#SBATCH --output=o\necho\n")
    assert made.name == "--output=o"
    assert made.arguments[-2:] == ["--job-name=--output=o", f"--comment={TAG}"]


def test_the_name_and_comment_come_from_the_same_parse_as_sbatchs():
    made = request("#!/bin/bash\n#SBATCH -HJfrom-block\n", ("-vJ", "from-args", "--comm", "note"))
    assert made.name == "from-args"
    assert made.arguments == ["--ignore-pbs", "--verbose", "--job-name=from-args", "--comment=note", "--job-name=from-args",
                              f"--comment={TAG} note"]


@pytest.mark.parametrize("name", ["a\nb", "a\x1fb", "a\x1b[31mb", "a\u202eb", "a\x85b", "a\u2028b"])
def test_a_job_name_with_a_control_character_is_refused(name):
    with pytest.raises(Rejection, match=r"contains a control character \(U\+"):
        request(name=name)
    with pytest.raises(Rejection, match="control character"):
        request(arguments=(f"--comment=x{name}",))
    if "\n" not in name:  # a newline ends an #SBATCH line
        with pytest.raises(Rejection, match="control character"):
            request(f"#!/bin/bash\n#SBATCH --job-name='{name}'\n")


# ---------------------------------------------------------------------------- a fake command runner

class Runner:
    """Records each command (argv, user, directory, environment, stdin) and answers in turn."""

    def __init__(self, *answers: Any):
        self.answers = list(answers)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, argv: list[str], timeout: float, user: Optional[LocalUser] = None,
                 directory: Optional[str] = None, environment: Optional[dict[str, str]] = None,
                 stdin: str = "") -> CommandResult:
        self.calls.append({"argv": argv, "timeout": timeout, "user": user, "directory": directory,
                           "environment": environment, "stdin": stdin})
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return CommandResult(argv, answer["returncode"], answer["stdout"], answer["stderr"])


def ok(stdout: str = "", stderr: str = "") -> dict[str, Any]:
    return {"returncode": 0, "stdout": stdout, "stderr": stderr}


@pytest.fixture
def backend_config(config_file) -> Any:
    def make(**overrides: Any) -> jobbergate_sync.Config:
        return load_config(config_file(**{"slurm.backend": "sbatch", "slurmrestd.jwt_key_file": None, **overrides}), {})
    return make


def backend(config, *answers: Any) -> tuple[SlurmCommands, Runner]:
    runner = Runner(*answers)
    return SlurmCommands(config, run=runner, lookup=lambda name: ALICE if name == "alice" else None), runner


# ------------------------------------------------------------------------------------------ submit

@pytest.mark.parametrize("version", VERSIONS)
def test_submit_runs_sbatch_parsable_as_the_user_in_the_directory_with_the_script_on_stdin(backend_config, version):
    slurm, runner = backend(backend_config(), recorded(version, "submit_ok"))
    made = request(arguments=("--time=5",))
    assert slurm.submit(made, "alice") == 1
    [call] = runner.calls
    assert call["argv"] == ["/usr/bin/sbatch", "--parsable", "--ignore-pbs", "--time=5", "--job-name=sub-name",
                            f"--comment={TAG}"]
    assert call["user"] == ALICE and call["directory"] == "/home/alice/jobs"
    assert call["environment"] == ENVIRONMENT and call["stdin"] == made.script
    assert call["timeout"] == 30.0


def test_submit_reads_the_federated_parsable_form(backend_config):
    slurm, _ = backend(backend_config(), ok("4242;cluster-a\n"))
    assert slurm.submit(request(), "alice") == 4242


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name, message", [
    ("bad_mem", "Invalid --mem specification"),
    ("bad_time", "Invalid --time specification"),
    ("bad_nodes", '"two" is not a valid node count'),
    ("bad_option", "unrecognized option '--no-such-option'"),
])
def test_a_job_sbatch_refuses_is_rejected_with_its_message_and_the_arguments(backend_config, version, name, message):
    slurm, _ = backend(backend_config(), recorded(version, name))
    with pytest.raises(Rejection) as refused:
        slurm.submit(request(arguments=("--nodes=two",)), "alice")
    assert str(refused.value).startswith(f"sbatch refused the job: {message}")
    assert "(sbatch_arguments: --nodes=two)" in str(refused.value) and "Try " not in str(refused.value)


@pytest.mark.parametrize("version", VERSIONS)
def test_an_invalid_partition_is_rejected_with_slurmctlds_reason(backend_config, version):
    slurm, _ = backend(backend_config(), recorded(version, "bad_partition"))
    with pytest.raises(Rejection) as refused:
        slurm.submit(request(), "alice")
    assert str(refused.value) == ("sbatch refused the job: invalid partition specified: no-such-partition; "
                                  "Batch job submission failed: Invalid partition name specified")


@pytest.mark.parametrize("answer", [
    recorded("24.11", "down_sbatch"),
    {"returncode": 1, "stdout": "", "stderr": "sbatch: error: Munge encode failed: Failed to access \"/run/munge/munge.socket.2\"\n"},
    {"returncode": 1, "stdout": "", "stderr": "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation\n"},
    {"returncode": -9, "stdout": "", "stderr": ""},
    ok("garbage"),
    Unavailable("/usr/bin/sbatch --parsable: no answer within 30 s"),
])
def test_slurm_unreachable_or_no_job_id_leaves_the_submit_for_the_tag_to_settle(backend_config, answer):
    slurm, _ = backend(backend_config(), answer)
    with pytest.raises(Unavailable):
        slurm.submit(request(), "alice")


# ------------------------------------------------------------------------------------------ states

@pytest.mark.parametrize("version", VERSIONS)
def test_states_reads_just_those_jobs_from_one_squeue(backend_config, version):
    slurm, runner = backend(backend_config(), recorded(version, "squeue_json"))
    states = slurm.states({1, 2, 3, 999999})
    [call] = runner.calls
    assert call["argv"] == ["/usr/bin/squeue", "--json", "--states=all", "--jobs=1,2,3,999999"]
    assert call["user"] is None  # read as root
    assert set(states) == {1, 2, 3}  # 999999: slurmctld does not hold it
    assert sorted(job["job_id"] for job in states[2]) == [2, 5]  # both tasks of array 2
    failed = report_from_records(1, states[1], report_from_slurmctld)
    assert failed.state == "FAILED" and failed.reason == "NonZeroExitCode (exit code 3)"
    assert report_from_records(2, states[2], report_from_slurmctld).state == "COMPLETED"
    assert report_from_records(3, states[3], report_from_slurmctld).state == "RUNNING"


@pytest.mark.parametrize("version", ("24.11", "25.11"))
def test_every_asked_job_unknown_is_an_empty_answer(backend_config, version):
    slurm, _ = backend(backend_config(), recorded(version, "squeue_json_one_missing"))
    assert slurm.states([999999]) == {} and recorded(version, "squeue_json_one_missing")["returncode"] == 1
    slurm, _ = backend(backend_config(), recorded(version, "squeue_json_one_missing"))
    assert slurm.job(999999) is None


def test_states_of_no_job_runs_nothing(backend_config):
    slurm, runner = backend(backend_config())
    assert slurm.states([]) == {} and runner.calls == []


@pytest.mark.parametrize("name", ["down_squeue_json", "down_squeue_o"])
def test_slurmctld_down_is_unavailable(backend_config, name):
    slurm, _ = backend(backend_config(), recorded("24.11", name))
    with pytest.raises(Unavailable, match="Unable to contact slurm controller"):
        slurm.states([1])


SEP = jobbergate_sync.FIELD_SEPARATOR


def text_line(*fields: str) -> str:
    return SEP.join(fields) + "\n"


def test_without_json_squeue_is_read_in_its_fixed_text_format_from_then_on(backend_config):
    no_json = {"returncode": 255, "stdout": "", "stderr": "squeue: unrecognized option '--json'\n"}
    listing = (text_line("1", "1", "N/A", "FAILED", "NonZeroExitCode", "alice", "job", "/home/alice", f"{TAG} a|b")
               + text_line("5", "2", "0", "COMPLETED", "None", "alice", "arr", "/home/alice", TAG)
               + text_line("2", "2", "1", "RUNNING", "None", "alice", "arr", "/home/alice", TAG)
               + text_line("9", "9", "2-5", "PENDING", "JobHeldUser", "alice", "arr", "/home/alice", ""))
    slurm, runner = backend(backend_config(), no_json, ok(listing), ok(listing))
    states = slurm.states([1, 2, 9])
    assert runner.calls[1]["argv"][:3] == ["/usr/bin/squeue", "--noheader", "--states=all"]
    assert runner.calls[1]["argv"][3] == "--format=" + SEP.join(["%A", "%F", "%K", "%T", "%r", "%u", "%j", "%Z", "%k"])
    assert states[1][0]["comment"] == f"{TAG} a|b" and states[1][0]["array_job_id"] == 0
    assert report_from_records(1, states[1], report_from_slurmctld).state == "FAILED"
    assert report_from_records(2, states[2], report_from_slurmctld).state == "RUNNING"
    assert states[9][0]["array_task_string"] == "2-5"
    assert list(slurm.jobs_with_tag(TAG, "alice")) == [1, 2]
    assert "--json" not in runner.calls[2]["argv"]  # remembered: no second try


@pytest.mark.parametrize("version", VERSIONS)
def test_a_held_array_reads_the_same_in_json_and_in_text(backend_config, version):
    held_id = int(recorded(version, "submit_held_array")["stdout"])
    no_json = {"returncode": 255, "stdout": "", "stderr": "squeue: unrecognized option '--json'\n"}
    from_json, _ = backend(backend_config(), recorded(version, "squeue_json_held"))
    from_text, _ = backend(backend_config(), no_json, recorded(version, "squeue_text"))
    for slurm in (from_json, from_text):
        [record] = slurm.states([held_id])[held_id]
        assert jobbergate_sync.array_task_label(record) == "0-3"
        report = report_from_records(held_id, [record], report_from_slurmctld)
        assert (report.state, report.reason) == ("PENDING", "JobHeldUser")
        assert jobbergate_sync.comment_has_tag(record["comment"], "jobbergate-sync:cap:9")


@pytest.mark.parametrize("version", VERSIONS)
def test_sacct_text_records_read_like_its_json_ones(backend_config, version):
    no_json = {"returncode": 1, "stdout": "", "stderr": "sacct: error: No serializer loaded for mime type application/json\n"}
    slurm, _ = backend(backend_config(), no_json, recorded(version, "sacct_text"), recorded(version, "sacct_text_array"))
    [failed] = slurm.accounting_job(1)
    assert report_from_slurmdbd(failed).reason == "Failed (exit code 3)"  # even where 22.05's JSON has it wrong
    assert failed["comment"]["job"] == "jobbergate-sync:cap:1 hi" and failed["working_directory"] == "/home/alice/sbcap"
    array = slurm.accounting_job(2)
    assert sorted((record["job_id"], record["array"]["task_id"]) for record in array) == [(2, 1), (5, 0)]
    assert report_from_records(2, array, report_from_slurmdbd).state == "COMPLETED"


@pytest.mark.parametrize("version", VERSIONS)
def test_the_release_comes_from_version(backend_config, version):
    slurm, _ = backend(backend_config(), recorded(version, "sbatch_version"))
    assert slurm.tool_release("sbatch") == {"22.05": "22.05.8", "24.11": "24.11.5", "25.11": "25.11.7"}[version]


@pytest.mark.parametrize("version", VERSIONS)
def test_jobs_with_tag_finds_the_tagged_jobs_among_the_users_own(backend_config, version):
    slurm, runner = backend(backend_config(), recorded(version, "squeue_json"))
    assert list(slurm.jobs_with_tag("jobbergate-sync:cap:2", "alice")) == [2]
    assert runner.calls[0]["argv"] == ["/usr/bin/squeue", "--json", "--states=all", "--user=alice"]


# ------------------------------------------------------------------------------------------ sacct

@pytest.mark.parametrize("version", JSON_VERSIONS)
def test_a_purged_job_is_read_from_sacct(backend_config, version):
    slurm, runner = backend(backend_config(), recorded(version, "sacct_json"), recorded(version, "sacct_json"))
    records = slurm.accounting_job(1)
    assert runner.calls[0]["argv"] == ["/usr/bin/sacct", "--json", "--jobs=1"]
    report = report_from_records(1, records, report_from_slurmdbd)
    assert report.state == "FAILED" and "exit code 3" in report.reason
    array = slurm.accounting_job(2)
    assert sorted(record["job_id"] for record in array) == [2, 5]
    assert report_from_records(2, array, report_from_slurmdbd).state == "COMPLETED"


def test_sacct_of_slurm_22_05_is_read_as_text_for_its_exit_codes(backend_config):
    slurm, runner = backend(backend_config(), recorded("22.05", "sacct_json"), recorded("22.05", "sacct_text"),
                            recorded("22.05", "sacct_text_array"))
    [failed] = slurm.accounting_job(1)
    assert report_from_slurmdbd(failed).reason == "Failed (exit code 3)"  # its JSON says exit code 0
    assert slurm.accounting_job(2)  # text from now on: no second JSON read
    assert [call["argv"][1] for call in runner.calls] == ["--json", "--noheader", "--noheader"]


@pytest.mark.parametrize("version", VERSIONS)
def test_a_job_sacct_does_not_know_is_none(backend_config, version):
    text_too = [ok("")] if version not in JSON_VERSIONS else []  # 22.05's JSON is followed by its text
    slurm, _ = backend(backend_config(), recorded(version, "sacct_json_missing"), *text_too)
    assert slurm.accounting_job(999999) is None


def test_without_json_sacct_is_read_as_parsable2_with_epoch_times(backend_config):
    no_json = {"returncode": 1, "stdout": "", "stderr": "sacct: error: No serializer loaded for mime type application/json\n"}
    listing = (text_line("7", "7", "FAILED", "None", "3:0", "alice", "job", "/home/alice/x", "1796092919", TAG)
               + text_line("8_0", "9", "COMPLETED", "None", "0:0", "alice", "arr", "/home/alice/x", "1796092920", "")
               + text_line("8_1", "8", "CANCELLED by 1001", "None", "0:15", "alice", "arr", "/home/alice/x", "1796092920", ""))
    slurm, runner = backend(backend_config(), no_json, ok(listing))
    records = slurm.accounting_jobs_since("alice", 1796092000)
    argv = runner.calls[1]["argv"]
    assert argv[:4] == ["/usr/bin/sacct", "--noheader", "--parsable2", f"--delimiter={SEP}"]
    assert "--user=alice" in argv and any(word.startswith("--starttime=now-") for word in argv)
    assert runner.calls[1]["environment"]["SLURM_TIME_FORMAT"] == "%s"
    first = records[0]
    assert first["time"]["submission"] == 1796092919 and first["comment"]["job"] == TAG
    assert report_from_slurmdbd(first).reason == "Failed (exit code 3)"
    array = [record for record in records if record["array"]["job_id"] == 8]
    assert report_from_records(8, array, report_from_slurmdbd).state == "CANCELLED"


def test_slurmdbd_down_is_unavailable(backend_config):
    slurm, _ = backend(backend_config(), {"returncode": 1, "stdout": "", "stderr":
                                          "sacct: error: Problem talking to the database: Connection refused\n"})
    with pytest.raises(Unavailable):
        slurm.accounting_job(1)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_backlog_comes_from_sdiag(backend_config, version):
    slurm, _ = backend(backend_config(), recorded(version, "sdiag"))
    assert slurm.accounting_backlog() == 0
    slurm, _ = backend(backend_config(), recorded("24.11", "down_sdiag"))
    with pytest.raises(Unavailable):
        slurm.accounting_backlog()


# ------------------------------------------------------------------------------------------ cancel

@pytest.mark.parametrize("version", VERSIONS)
def test_cancel_runs_scancel_as_the_owner_and_leaves_the_outcome_to_a_reread(backend_config, version):
    slurm, runner = backend(backend_config(), recorded(version, "scancel"), recorded(version, "scancel_missing"))
    assert slurm.cancel(3, "alice") is None
    assert runner.calls[0]["argv"] == ["/usr/bin/scancel", "3"] and runner.calls[0]["user"] == ALICE
    assert slurm.cancel(999999, "alice") is None  # scancel says nothing of a job it does not know


def test_cancel_says_false_for_a_finished_job_and_unavailable_when_slurmctld_is_down(backend_config):
    finished = {"returncode": 1, "stdout": "", "stderr":
                "scancel: error: Kill job error on job id 3: Job/step already completing or completed\n"}
    slurm, _ = backend(backend_config(), finished, recorded("24.11", "down_scancel"))
    assert slurm.cancel(3, "alice") is False
    with pytest.raises(Unavailable):
        slurm.cancel(1, "alice")


def test_cancel_as_a_user_missing_here_is_an_item_error(backend_config):
    slurm, runner = backend(backend_config())
    with pytest.raises(ItemError, match="user mallory does not exist"):
        slurm.cancel(3, "mallory")
    assert runner.calls == []


# --------------------------------------------------------------------------- configuration

def test_the_sbatch_backend_needs_no_slurmrestd_secret(backend_config):
    config = backend_config()
    assert config.slurm.backend == "sbatch" and config.slurm_jwt_key is None


@pytest.mark.parametrize("key, value, message", [
    ("slurm.backend", "rsh", "[slurm] backend: must be one of slurmrestd, sbatch"),
    ("slurm.sbatch", "sbatch", "[slurm] sbatch: must be an absolute path"),
    ("slurm.timeout", "0", "[slurm] timeout: must be at least 0.1"),
])
def test_bad_backend_settings_are_named(backend_config, key, value, message):
    with pytest.raises(jobbergate_sync.ConfigError) as refused:
        backend_config(**{key: value})
    assert message in str(refused.value)


# ------------------------------------------------- real commands: fake Slurm executables, the real runner

FAKE_TOOL = """#!/usr/bin/python3
import json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
tool = os.path.basename(sys.argv[0])
call = {"tool": tool, "argv": sys.argv[1:], "uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()),
        "cwd": os.getcwd(), "env": dict(os.environ), "stdin": sys.stdin.read()}
with open(os.path.join(here, "calls.jsonl"), "a") as log:
    log.write(json.dumps(call) + "\\n")
with open(os.path.join(here, "answers.json")) as handle:
    answers = json.load(handle)
answer = answers.get(" ".join([tool, *sys.argv[1:]]), answers.get(tool, {"returncode": 0, "stdout": "", "stderr": ""}))
if sys.argv[1:] == ["--version"]:
    answer = {"returncode": 0, "stdout": "slurm 24.11.5\\n", "stderr": ""}
sys.stdout.write(answer["stdout"])
sys.stderr.write(answer["stderr"])
sys.exit(answer["returncode"])
"""


QUIET_CLUSTER = {"scontrol": recorded("24.11", "scontrol_ping"), "squeue": ok('{"jobs": []}'),
                 "sacct": ok('{"jobs": []}'), "sdiag": ok("DBD Agent queue size: 0\n")}


class FakeTools:
    """Executables named like Slurm's commands that log how they were run and answer as told."""

    def __init__(self, directory: Path):
        self.directory = directory
        for tool in jobbergate_sync.SLURM_TOOLS:
            path = directory / tool
            path.write_text(FAKE_TOOL)
            path.chmod(0o755)
        self.log = directory / "calls.jsonl"
        self.log.touch()
        self.log.chmod(0o666)  # the job user's sbatch logs too
        self.answer()

    def answer(self, **answers: dict[str, Any]) -> None:
        """What each tool answers: by tool name, or by the whole command ("squeue --json --states=all").
        Unless told otherwise: one controller answering ping, no job in slurmctld or slurmdbd."""
        path = self.directory / "answers.json"
        path.write_text(json.dumps({**QUIET_CLUSTER, **answers}))
        path.chmod(0o644)

    def calls(self, tool: Optional[str] = None) -> list[dict[str, Any]]:
        calls = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [call for call in calls if tool in (None, call["tool"])]

    def settings(self) -> dict[str, str]:
        return {"slurm.backend": "sbatch", "slurmrestd.jwt_key_file": None,
                **{f"slurm.{tool}": str(self.directory / tool) for tool in jobbergate_sync.SLURM_TOOLS}}


@pytest.fixture
def tools() -> Iterator[FakeTools]:
    directory = Path(tempfile.mkdtemp(prefix="jgs-tools-"))
    directory.chmod(0o755)  # reachable by the job user
    yield FakeTools(directory)
    shutil.rmtree(directory, ignore_errors=True)


def squeue_answer(job_id: int, state: str, comment: str, user: str) -> dict[str, Any]:
    """A recorded `squeue --json` answer holding one job, made this one."""
    document = json.loads(recorded("24.11", "squeue_json")["stdout"])
    record = dict(document["jobs"][0], job_id=job_id, job_state=[state], comment=comment, state_reason="None",
                  user_name=user)
    return ok(json.dumps({**document, "jobs": [record]}))


def test_a_pass_submits_through_sbatch_as_the_user_and_reports(stack, config_file, tools, email, job_user, exec_root,
                                                               tmp_path):
    script = b"#!/bin/bash\n#SBATCH --time=5\necho hi\n"
    stack.api.add_submission(1, {"job.sh": script}, email=email, sbatch_arguments=["--nodes=1"], name="my-sub")
    tools.answer(sbatch=ok("4242\n"), squeue=squeue_answer(4242, "PENDING", tag(1),
                                                                    job_user.pw_name),
                 **{"squeue --json --states=all": ok('{"jobs": []}')})  # before the submit

    assert run(config_file(**tools.settings())) == 0

    [sbatch] = tools.calls("sbatch")
    directory = str(exec_root / job_user.pw_name)
    assert sbatch["argv"] == ["--parsable", "--ignore-pbs", "--nodes=1", "--job-name=my-sub",
                              f"--comment={tag(1)}"]
    assert sbatch["uid"] == job_user.pw_uid and sbatch["gid"] == job_user.pw_gid
    assert sbatch["groups"] == sorted(set(os.getgrouplist(job_user.pw_name, job_user.pw_gid)))
    assert sbatch["cwd"] == directory and sbatch["stdin"] == script.decode()
    sbatch["env"].pop("LC_CTYPE", None)  # set by the fake's own Python (PEP 538), not by the tool
    assert sbatch["env"] == {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": job_user.pw_dir,
                             "USER": job_user.pw_name, "LOGNAME": job_user.pw_name}
    assert (exec_root / job_user.pw_name / "job.sh").read_bytes() == script
    [report] = stack.api.called("submitted")
    assert report["slurm_job_id"] == 4242 and report["slurm_job_state"] == "PENDING"
    assert journal_rows(tmp_path) == [(1, 4242, 1, "PENDING")]
    assert all(call["uid"] == os.getuid() for call in tools.calls("squeue"))


def test_a_pass_rejects_a_job_sbatch_refuses_and_forgets_it(stack, config_file, tools, email, tmp_path):
    stack.api.add_submission(1, email=email, sbatch_arguments=["--partition=nowhere"])
    tools.answer(sbatch={"returncode": 1, "stdout": "", "stderr":
                         "sbatch: error: Batch job submission failed: Invalid partition name specified\n"})
    assert run(config_file(**tools.settings())) == 0
    assert stack.api.status(1) == "REJECTED"
    assert "Invalid partition name specified" in stack.api.called("rejected")[0]["report_message"]
    assert journal_rows(tmp_path) == []


def test_a_pass_refuses_a_forbidden_option_without_running_sbatch(stack, config_file, tools, email):
    stack.api.add_submission(1, email=email, sbatch_arguments=["--uid=0"])
    assert run(config_file(**tools.settings())) == 0
    assert stack.api.status(1) == "REJECTED" and "--uid" in stack.api.called("rejected")[0]["report_message"]
    assert tools.calls("sbatch") == []


@pytest.mark.parametrize("fields, named", [
    ({"sbatch_arguments": ["-vW"]}, "--wait is not allowed"),
    ({"name": "analysis\n77\x1f0\x1fN/A\x1fRUNNING"}, "field 'name' contains a control character (U+000A)"),
])
def test_a_pass_rejects_a_hidden_refused_option_or_a_forged_name_without_running_sbatch(stack, config_file, tools, email,
                                                                                        fields, named):
    stack.api.add_submission(1, email=email, **fields)
    assert run(config_file(**tools.settings())) == 0
    assert stack.api.status(1) == "REJECTED" and named in stack.api.called("rejected")[0]["report_message"]
    assert tools.calls("sbatch") == []


def test_a_pass_with_slurmctld_down_exits_69_and_leaves_the_submission_created(stack, config_file, tools, email):
    stack.api.add_submission(1, email=email)
    tools.answer(sbatch=recorded("24.11", "down_sbatch"))
    assert run(config_file(**tools.settings())) == 69
    assert stack.api.status(1) == "CREATED"


def test_a_pass_updates_and_cancels_as_the_owner(stack, config_file, tools, email, job_user):
    stack.api.add_submission(1, email=email, status="CANCELLED", slurm_job_id=77)
    tools.answer(squeue=squeue_answer(77, "RUNNING", tag(1), job_user.pw_name))
    run(config_file(**tools.settings()))
    [scancel] = tools.calls("scancel")
    assert scancel["argv"] == ["77"] and scancel["uid"] == job_user.pw_uid


def test_a_pass_never_runs_scancel_for_a_job_of_another_user(stack, config_file, tools, email):
    stack.api.add_submission(1, email=email, status="CANCELLED", slurm_job_id=77)
    tools.answer(squeue=squeue_answer(77, "RUNNING", "", "root"))
    assert run(config_file(**tools.settings())) == 1
    assert tools.calls("scancel") == [] and stack.api.status(1) == "ABORTED"
    assert "Slurm job 77 is not a job of this submission's owner" in stack.api.submissions[1]["report_message"]


def test_dry_run_prints_the_sbatch_command_and_runs_none(stack, config_file, tools, email, capsys):
    stack.api.add_submission(1, email=email, sbatch_arguments=["--time=5"], name="dry")
    assert run(config_file(**tools.settings()), "--dry-run") == 0
    out = capsys.readouterr().out
    assert "sbatch --parsable --ignore-pbs --time=5 --job-name=dry --comment=" + tag(1) in out
    assert tools.calls("sbatch") == []


def test_the_real_runner_enters_the_directory_only_as_the_user(tools, job_user):
    if os.geteuid() != 0:
        pytest.skip("needs root to switch users")
    private = Path(tempfile.mkdtemp(prefix="jgs-private-"))  # 0700 root: the user cannot enter it
    try:
        with pytest.raises(ItemError, match="cannot enter"):
            jobbergate_sync.run_command([str(tools.directory / "sbatch")], 10, user=LocalUser(
                job_user.pw_name, job_user.pw_uid, job_user.pw_gid, job_user.pw_dir), directory=str(private))
    finally:
        private.rmdir()
    assert tools.calls() == []


def test_the_real_runner_kills_a_command_at_its_timeout(tools):
    (tools.directory / "sbatch").write_text("#!/bin/sh\nexec sleep 30\n")
    with pytest.raises(Unavailable, match="no answer within 0.5 s"):
        jobbergate_sync.run_command([str(tools.directory / "sbatch")], 0.5)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_a_command_that_cannot_be_killed_fails_its_item_at_the_timeout(tools, job_user):
    """Without CAP_KILL (a unit that lacks it) root cannot signal a command running as the user: the
    timeout still ends the wait, as the item's failure, never as a configuration error after the command."""
    (tools.directory / "sbatch").write_text("#!/bin/sh\necho 4242\nexec sleep 5\n")
    (tools.directory / "sbatch").chmod(0o755)
    tools.directory.chmod(0o755)
    attempt = ("import sys, jobbergate_sync as j\n"
               f"user = j.LocalUser({job_user.pw_name!r}, {job_user.pw_uid}, {job_user.pw_gid}, '/')\n"
               "try:\n"
               f"    j.run_command([{str(tools.directory / 'sbatch')!r}], 0.5, user=user)\n"
               "except j.SyncError as exc:\n"
               "    print(type(exc).__name__, exc)\n")
    result = subprocess.run(["setpriv", "--bounding-set=-kill", "--inh-caps=-kill", sys.executable, "-c", attempt],
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.startswith("ItemError "), result
    assert "overran and cannot be stopped (Operation not permitted: the service needs CAP_KILL)" in result.stdout


def test_a_missing_command_is_a_configuration_error():
    with pytest.raises(jobbergate_sync.ConfigError, match=r"\[slurm\] sbatch = /nonexistent/sbatch: cannot run it"):
        jobbergate_sync.run_command(["/nonexistent/sbatch"], 5)


# ------------------------------------------------------------------------------------------- check


def test_check_covers_the_commands_slurmctld_and_slurmdbd(stack, config_file, tools, capsys):
    tools.answer(squeue=recorded("24.11", "squeue_json"), sacct=recorded("24.11", "sacct_json_missing"))
    code, lines = check_lines(capsys, config_file(**tools.settings()))
    assert lines["Slurm commands"][0] == "ok" and "sbatch 24.11.5" in lines["Slurm commands"][1]
    assert lines["slurmctld"] == ("ok", "squeue answered: it holds 3 job(s)")
    assert lines["slurmdbd"][0] == "ok"
    assert "slurmrestd" not in lines
    assert code == 0


def test_check_looks_only_at_the_secret_files_the_backend_reads(stack, config_file, tools, capsys):
    # The sbatch backend reads no slurmrestd secret: a jwt_key_file left set (as a copy of an older
    # example would leave it) names a file that need not exist, and check must not stat it.
    tools.answer(squeue=recorded("24.11", "squeue_json"), sacct=recorded("24.11", "sacct_json_missing"))
    code, lines = check_lines(capsys, config_file(**{**tools.settings(), "slurmrestd.jwt_key_file": "/nonexistent/jwt.key"}))
    assert code == 0
    assert lines["secret files"][0] == "ok" and "[oidc] client_secret_file" in lines["secret files"][1]
    assert "jwt_key_file" not in lines["secret files"][1]


@pytest.mark.parametrize("version", VERSIONS)
def test_min_job_age_is_read_from_scontrol_show_config(backend_config, version):
    slurm, runner = backend(backend_config(), recorded(version, "scontrol_show_config"))
    assert slurm.min_job_age() == 30  # the integration stack's slurm.conf
    assert runner.calls[0]["argv"] == ["/usr/bin/scontrol", "show", "config"]


@pytest.mark.parametrize("horizon, status, says", [
    (300, "FAIL", "purge_horizon = 300 s exceeds slurmctld's MinJobAge (30 s)"),
    (30, "ok", "purge_horizon = 30 s, within slurmctld's MinJobAge (30 s)"),
])
def test_check_without_slurmdbd_compares_the_purge_horizon_with_min_job_age(stack, config_file, tools, capsys,
                                                                            horizon, status, says):
    tools.answer(squeue=recorded("24.11", "squeue_json"), scontrol=recorded("24.11", "scontrol_show_config"))
    code, lines = check_lines(capsys, config_file(**tools.settings(), **{"slurm.slurmdbd": "false",
                                                                         "slurm.purge_horizon": horizon}))
    assert lines["purge horizon"][0] == status and says in lines["purge horizon"][1]
    assert code == (jobbergate_sync.EX_CONFIG if status == "FAIL" else 0)


def test_check_names_a_missing_command_and_a_controller_that_does_not_answer(stack, config_file, tools, capsys):
    settings = tools.settings()
    os.chmod(settings["slurm.sdiag"], 0o644)
    code, lines = check_lines(capsys, config_file(**settings))
    assert lines["Slurm commands"][0] == "FAIL"
    assert f"[slurm] sdiag = {settings['slurm.sdiag']}: not executable" in lines["Slurm commands"][1]
    assert lines["slurmctld"][0] == "skip" and code == 78
    os.chmod(settings["slurm.sdiag"], 0o755)
    tools.answer(squeue=recorded("24.11", "down_squeue_json"))
    code, lines = check_lines(capsys, config_file(**settings))
    assert lines["slurmctld"][0] == "FAIL" and "scontrol ping" in lines["slurmctld"][1] and code == 69
