"""#SBATCH parsing and translation to slurmrestd job JSON; script, file name and pending-item checks."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence

import pytest

import jobbergate_sync
from jobbergate_sync import (
    Rejection,
    api_minor,
    build_job_request,
    parse_options,
    parse_pending,
    sbatch_block_arguments,
    script_text,
    split_sbatch_words,
    validated_filename,
)

FAMILIES = [38, 39, 40, 42]
BASE_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/home/alice", "USER": "alice"}
WORKDIR = "/home/alice/jobs"
TAG = jobbergate_sync.submission_tag("my-cluster", 42, "2026-11-26T16:08:48.944717Z")


def build(args: Sequence[str] = (), family: int = 38, directives: Sequence[str] = (),
          name: str = "my-submission", workdir: str = WORKDIR,
          env: Optional[Dict[str, str]] = None, release: Optional[str] = None) -> jobbergate_sync.JobRequest:
    script = "#!/bin/bash\n" + "".join(f"#SBATCH {line}\n" for line in directives) + "echo hello\n"
    return build_job_request(script, list(args), name, workdir, dict(BASE_ENV if env is None else env), TAG, family,
                             release)


def job_of(args: Sequence[str] = (), family: int = 38, directives: Sequence[str] = (), **kwargs: Any) -> Dict[str, Any]:
    return build(args, family, directives, **kwargs).payload["job"]


def environment_of(job: Dict[str, Any], family: int) -> Dict[str, str]:
    """The job's environment as a dict, whichever shape the family uses."""
    if family == 38:
        assert isinstance(job["environment"], dict)
        return job["environment"]
    assert isinstance(job["environment"], list)
    return dict(entry.split("=", 1) for entry in job["environment"])


def unlimited(family: int) -> Any:
    return 0 if family == 38 else {"set": True, "infinite": True, "number": 0}


def number(family: int, value: int) -> Any:
    return value if family == 38 else {"set": True, "infinite": False, "number": value}


# ---------------------------------------------------------------------------------------------
# split_sbatch_words
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("--time=5 --job-name=x", ["--time=5", "--job-name=x"]),
        ("  -N  2\t-n 4  ", ["-N", "2", "-n", "4"]),
        ('--job-name="my job"', ["--job-name=my job"]),
        ("--job-name='my job'", ["--job-name=my job"]),
        ('--comment="it\'s fine"', ["--comment=it's fine"]),
        ("--comment='say \"hi\"'", ['--comment=say "hi"']),
        (r"--job-name=my\ job", ["--job-name=my job"]),
        (r'--comment="a\"b"', ['--comment=a"b']),
        (r"--comment='a\'b'", ["--comment=a'b"]),
        (r"--comment=back\\slash", [r"--comment=back\slash"]),
        ('a"b c"d', ["ab cd"]),
        ('--comment=""', ["--comment="]),
        # sbatch's get_argument gives nothing for a word with no character, and reads no further
        ('""', []),
        ("--job-name '' --time=5", ["--job-name"]),
        # only ASCII whitespace separates words, as C's isspace(); an escaped tab ends the word
        ("--comment=a\u00a0b\u2003c --time=5", ["--comment=a\u00a0b\u2003c", "--time=5"]),
        ("--comment=a\\\tb", ["--comment=a", "b"]),
        ("--time=5 # a comment --partition=x", ["--time=5"]),
        ("--time=5 #--partition=x", ["--time=5"]),
        ("--job-name=a#b --partition=x", ["--job-name=a"]),
        ('--comment="#1 job"', ["--comment=#1 job"]),
        ("--comment='#1'", ["--comment=#1"]),
        (r"--comment=\#1", ["--comment=#1"]),
        ("# only a comment", []),
        ("", []),
        ("   \t ", []),
        ("--comment=$(id);rm|x&y`z`", ["--comment=$(id);rm|x&y`z`"]),
    ],
)
def test_split_sbatch_words(text: str, words: List[str]) -> None:
    assert split_sbatch_words(text) == words


@pytest.mark.parametrize(("text", "quote"), [('--job-name="abc', '"'), ("--job-name='abc", "'"),
                                             ("'a' \"b", '"'), (r'"a\"', '"')])
def test_split_sbatch_words_unterminated_quote(text: str, quote: str) -> None:
    with pytest.raises(Rejection, match=f"unterminated {quote} quote"):
        split_sbatch_words(text)


# ---------------------------------------------------------------------------------------------
# sbatch_block_arguments
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "arguments"),
    [
        ("#!/bin/bash\n#SBATCH --time=5\n#SBATCH -J name -p debug\necho hi\n",
         ["--time=5", "-J", "name", "-p", "debug"]),
        # the block ends at the first command: later #SBATCH lines are ignored, as sbatch does
        ("#!/bin/bash\n#SBATCH -J first\necho hi\n#SBATCH -J second\n", ["-J", "first"]),
        ("#!/bin/bash\n#SBATCH -J first\n  true  \n#SBATCH -J second\n", ["-J", "first"]),
        # blank lines, whitespace-only lines and comments inside the block are fine
        ("#!/bin/bash\n\n# set up\n#SBATCH -t 5\n\n   \n\t\n# more\n#SBATCH -p debug\nsrun x\n",
         ["-t", "5", "-p", "debug"]),
        # '##SBATCH' (the usual way to disable a directive) and an indented '#SBATCH' are comments
        ("#!/bin/bash\n##SBATCH -p off\n  #SBATCH -p indented\n#SBATCH -p on\n", ["-p", "on"]),
        # #SLURM lines are directives too
        ("#!/bin/bash\n#SLURM --time=5\n", ["--time=5"]),
        # a directive line may carry a trailing comment, and a bare '#SBATCH' adds nothing
        ("#!/bin/bash\n#SBATCH --time=5 # five minutes\n#SBATCH\n", ["--time=5"]),
        # CRLF line ends
        ("#!/bin/bash\r\n#SBATCH -t 5\r\n#SBATCH -p debug\r\necho\r\n", ["-t", "5", "-p", "debug"]),
        # an option and its value may sit on separate lines: sbatch gathers one argv
        ("#!/bin/bash\n#SBATCH -N\n#SBATCH 2\n", ["-N", "2"]),
        # no #SBATCH block at all
        ("#!/bin/bash\necho hi\n", []),
        ("#!/bin/bash\n", []),
        ("", []),
        # a shebang carrying what looks like options is skipped
        ("#!/bin/bash --time=5\n#SBATCH -p debug\n", ["-p", "debug"]),
        # sbatch compares the first 7 (or 6) characters only: no space is needed after the prefix
        ("#!/bin/bash\n#SBATCH--time=5\n#SLURM-p debug\n#SBATCHfoo\n", ["--time=5", "-p", "debug", "foo"]),
        # a line whose first non-blank character is not '#' ends the block, whatever follows
        ("#!/bin/bash\n \t#x\n\v\n#SBATCH -t 5\n\u00a0#SBATCH -p x\n#SBATCH -p y\n", ["-t", "5"]),
        # an empty word ends its line; the next line goes on with the same argument list
        ("#!/bin/bash\n#SBATCH -J '' -W\n#SBATCH x\n", ["-J", "x"]),
        # quoting inside the block follows split_sbatch_words
        ("#!/bin/bash\n#SBATCH --job-name='a b' --comment=\"x # y\"\n", ["--job-name=a b", "--comment=x # y"]),
    ],
)
def test_sbatch_block_arguments(script: str, arguments: List[str]) -> None:
    assert sbatch_block_arguments(script) == arguments


@pytest.mark.parametrize("line", ["#SBATCH hetjob", "#SBATCH packjob", "#SBATCH HETJOB", "#SBATCH   hetjob # second",
                                  "#SBATCHhetjob", "#SBATCH -n 1 hetjob"])
def test_hetjob_separator_refused(line: str) -> None:
    script = f"#!/bin/bash\n#SBATCH -n 1\n{line}\n#SBATCH -n 2\nsrun x\n"
    with pytest.raises(Rejection, match=r"heterogeneous jobs \(#SBATCH hetjob\) are not supported"):
        sbatch_block_arguments(script)


def test_hetjob_after_the_block_is_just_a_comment() -> None:
    assert sbatch_block_arguments("#!/bin/bash\n#SBATCH -n 1\necho\n#SBATCH hetjob\n") == ["-n", "1"]


def test_unterminated_quote_in_block_refused() -> None:
    with pytest.raises(Rejection, match="unterminated ' quote"):
        sbatch_block_arguments("#!/bin/bash\n#SBATCH --job-name='oops\n")


@pytest.mark.parametrize("separator", ["\x0c", "\x1c", "\u2028"])
def test_block_lines_are_split_on_newline_only(separator: str) -> None:
    script = f"#!/bin/bash\n# notes{separator}more notes\n#SBATCH --time=5\necho\n"
    assert sbatch_block_arguments(script) == ["--time=5"]


# ---------------------------------------------------------------------------------------------
# parse_options
# ---------------------------------------------------------------------------------------------


def parsed(words: List[str]) -> List[tuple]:
    return [(option.spec.name, option.value) for option in parse_options(words, "#SBATCH")]


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["--time=10"], [("time", "10")]),
        (["--time", "10"], [("time", "10")]),
        (["-t", "10"], [("time", "10")]),
        (["-t10"], [("time", "10")]),
        (["-N", "2"], [("nodes", "2")]),
        (["-N2"], [("nodes", "2")]),
        (["-N1-4"], [("nodes", "1-4")]),
        (["--part=debug"], [("partition", "debug")]),
        (["--part", "debug"], [("partition", "debug")]),
        (["--job=x"], [("job-name", "x")]),
        (["--mem=4G"], [("mem", "4G")]),  # exact name wins over the prefix of --mem-per-cpu
        (["--mem-per-c=1G"], [("mem-per-cpu", "1G")]),
        (["--time-min=5"], [("time-min", "5")]),
        (["--comment="], [("comment", "")]),
        (["--comment=a=b"], [("comment", "a=b")]),
        (["--hold"], [("hold", None)]),
        (["-H"], [("hold", None)]),
        (["--nice"], [("nice", None)]),
        (["--nice=5"], [("nice", "5")]),
        (["--exclusive"], [("exclusive", None)]),
        (["--exclusive=user"], [("exclusive", "user")]),
        (["-t", "-5"], [("time", "-5")]),  # a required argument is taken even if it looks like an option
        (["-J", "a", "--time=5", "-p", "debug", "--requeue"],
         [("job-name", "a"), ("time", "5"), ("partition", "debug"), ("requeue", None)]),
    ],
)
def test_parse_options(words: List[str], expected: List[tuple]) -> None:
    assert parsed(words) == expected


def test_parse_options_records_the_source() -> None:
    options = parse_options(["-p", "debug"], "sbatch_arguments")
    assert [option.source for option in options] == ["sbatch_arguments"]


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["--me=1"], r"unsupported option --me in sbatch_arguments"),  # ambiguous: mem, mem-per-cpu
        (["--ex=1"], r"unsupported option --ex in sbatch_arguments"),  # ambiguous: exclusive, exclude, export...
        (["--bogus=1"], r"unsupported option --bogus in sbatch_arguments"),
        (["--parsable"], r"unsupported option --parsable in sbatch_arguments"),
        (["--"], r"unsupported option -- in sbatch_arguments"),
        (["-Z"], r"unsupported option -Z in sbatch_arguments"),
        (["-Zfoo"], r"unsupported option -Z in sbatch_arguments"),
        (["--hold=yes"], r"option --hold takes no value \(in sbatch_arguments\)"),
        (["--requeue=1"], r"option --requeue takes no value"),
        (["-Hx"], r"option -H takes no value"),
        (["--time"], r"option --time needs a value \(in sbatch_arguments\)"),
        (["-p"], r"option -p needs a value \(in sbatch_arguments\)"),
        (["script.sh"], r"unexpected argument 'script\.sh' in sbatch_arguments: only options are allowed"),
        (["-"], r"unexpected argument '-' in sbatch_arguments"),
        (["--exclusive", "user"], r"unexpected argument 'user'"),  # optional arguments need '='
        (["-t", "5", "extra"], r"unexpected argument 'extra'"),
    ],
)
def test_parse_options_refusals(words: List[str], message: str) -> None:
    with pytest.raises(Rejection, match=message):
        parse_options(words, "sbatch_arguments")


# ---------------------------------------------------------------------------------------------
# api_minor and payload shape
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "minor"), [("v0.0.38", 38), ("v0.0.39", 39), ("v0.0.41", 41), ("v0.0.44", 44)])
def test_api_minor(version: str, minor: int) -> None:
    assert api_minor(version) == minor


@pytest.mark.parametrize("family", FAMILIES)
def test_payload_shape(family: int) -> None:
    script = "#!/bin/bash\necho hello\n"
    request = build_job_request(script, [], "my-submission", WORKDIR, dict(BASE_ENV), TAG, family)
    payload = request.payload
    job = payload["job"]
    if family <= 39:
        assert set(payload) == {"script", "job"}
        assert payload["script"] == script
        assert "script" not in job
    else:
        assert set(payload) == {"job"}
        assert job["script"] == script
    if family == 38:
        assert job["environment"] == BASE_ENV
    else:
        assert job["environment"] == ["PATH=/usr/bin:/bin", "HOME=/home/alice", "USER=alice"]
    assert job["name"] == "my-submission"
    assert job["current_working_directory"] == WORKDIR
    assert job["comment"] == TAG
    assert request.working_directory == WORKDIR


def test_minimal_v38_payload_is_exactly_what_slurmrestd_accepted() -> None:
    """Matches the [live] minimal payload of the slurmrestd reference (plus name and comment)."""
    script = "#!/bin/bash\necho hello\n"
    payload = build_job_request(script, [], "n", "/home/alice", {"PATH": "/usr/local/bin:/usr/bin:/bin"}, "t", 38).payload
    assert payload == {"script": script, "job": {"name": "n", "current_working_directory": "/home/alice", "comment": "t",
                                                 "environment": {"PATH": "/usr/local/bin:/usr/bin:/bin"}}}


# ---------------------------------------------------------------------------------------------
# Precedence, name, cwd, output paths, comment
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_sbatch_arguments_override_directives(family: int) -> None:
    job = job_of(["--partition=fromargs", "-J argname"], family,
                 directives=["--partition=fromscript", "-t 5", "--job-name=scriptname"])
    assert job["partition"] == "fromargs"
    assert job["name"] == "argname"
    assert job["time_limit"] == number(family, 5)


def test_later_sbatch_argument_wins() -> None:
    assert job_of(["-p a", "-p b"])["partition"] == "b"


def test_an_option_and_its_value_may_be_separate_entries() -> None:
    # Clients send ["--nodes", "2"] as often as ["--nodes 2"]; both are one command line.
    job = job_of(["--partition", "debug", "-N", "2"])
    assert job["partition"] == "debug"
    assert job["nodes"] == "2"


def test_each_sbatch_argument_entry_is_split_into_words() -> None:
    job = job_of(["--partition debug --time 10", "-N 2"])
    assert (job["partition"], job["time_limit"], job["nodes"]) == ("debug", 10, "2")


@pytest.mark.parametrize(
    ("args", "directives", "name"),
    [([], [], "my-submission"), ([], ["-J fromscript"], "fromscript"), (["--job-name=fromargs"], [], "fromargs"),
     (["-J fromargs"], ["--job-name=fromscript"], "fromargs")],
)
def test_default_job_name(args, directives, name) -> None:
    assert job_of(args, 40, directives)["name"] == name


@pytest.mark.parametrize(
    ("args", "cwd"),
    [
        ([], WORKDIR),
        (["--chdir=/scratch/alice"], "/scratch/alice"),
        (["-D /scratch/alice/"], "/scratch/alice"),
        (["--chdir=run1"], WORKDIR + "/run1"),
        (["--chdir=./a/b"], WORKDIR + "/a/b"),
        (["--chdir=../other"], "/home/alice/other"),
        (["--chdir="], WORKDIR),
    ],
)
@pytest.mark.parametrize("family", [38, 40])
def test_working_directory(args: List[str], cwd: str, family: int) -> None:
    request = build(args, family)
    assert request.payload["job"]["current_working_directory"] == cwd
    assert request.working_directory == cwd


@pytest.mark.parametrize(
    ("args", "key", "path"),
    [
        (["--output=out-%j.txt"], "standard_output", WORKDIR + "/out-%j.txt"),
        (["-o logs/out.txt"], "standard_output", WORKDIR + "/logs/out.txt"),
        (["--error=err.txt"], "standard_error", WORKDIR + "/err.txt"),
        (["-e /var/tmp/err.txt"], "standard_error", "/var/tmp/err.txt"),
        (["--input=in.txt"], "standard_input", WORKDIR + "/in.txt"),
        (["--output=/abs/out.txt"], "standard_output", "/abs/out.txt"),
        (["--chdir=/scratch", "--output=out.txt"], "standard_output", "/scratch/out.txt"),
        (["--output=out.txt", "--chdir=sub"], "standard_output", WORKDIR + "/sub/out.txt"),
    ],
)
def test_relative_output_paths_join_the_job_cwd(args: List[str], key: str, path: str) -> None:
    assert job_of(args, 40)[key] == path


def test_no_output_key_without_the_option() -> None:
    job = job_of([], 40)
    assert not {"standard_output", "standard_error", "standard_input"} & set(job)


@pytest.mark.parametrize(
    ("args", "comment"),
    [([], TAG), (["--comment=hello"], TAG + " hello"), (['--comment="hello world"'], TAG + " hello world"),
     (["--comment="], TAG)],
)
@pytest.mark.parametrize("family", [38, 42])
def test_comment_carries_the_tag(args: List[str], comment: str, family: int) -> None:
    job = job_of(args, family)
    assert job["comment"] == comment
    assert jobbergate_sync.comment_has_tag(job["comment"], TAG)


def test_the_tag_names_the_cluster_the_submission_and_its_job_script_s_creation_time() -> None:
    assert TAG == "jobbergate-sync:my-cluster:42:20261126T160848.944717Z"


@pytest.mark.parametrize("created_at", [None, 1764173328, ["2026"]])
def test_a_job_script_without_a_creation_time_still_gives_a_tag(created_at: Any) -> None:
    script = {"id": 3, "files": [entry()], **({} if created_at is None else {"created_at": created_at})}
    submission = parse_pending(pending_item(job_script=script))
    assert submission.script_created_at is None
    assert jobbergate_sync.submission_tag("my-cluster", 42, submission.script_created_at) == "jobbergate-sync:my-cluster:42:"


def test_a_submission_with_the_same_id_from_a_recreated_jobbergate_database_has_another_tag() -> None:
    recreated = jobbergate_sync.submission_tag("my-cluster", 42, "2026-12-04T09:15:02.118204Z")
    assert recreated != TAG
    assert not jobbergate_sync.comment_has_tag(TAG, recreated)
    assert not jobbergate_sync.comment_has_tag(recreated, TAG)
    assert not jobbergate_sync.comment_has_tag("jobbergate-sync:my-cluster:42", TAG)  # what versions before this one wrote


@pytest.mark.parametrize("created_at", ["2026-11-26 16:08:48+00:00", "a b\tc\n" * 20, "", None])
def test_the_tag_is_one_word_of_bounded_length_whatever_the_creation_time(created_at: Optional[str]) -> None:
    tag = jobbergate_sync.submission_tag("my-cluster", 42, created_at)
    assert tag.startswith("jobbergate-sync:my-cluster:42:") and " " not in tag
    assert len(tag) <= len("jobbergate-sync:my-cluster:42:") + jobbergate_sync.MAX_TAG_TIME_CHARACTERS
    assert jobbergate_sync.comment_tag(jobbergate_sync.tagged_comment(tag, "the user's comment")) == tag


# ---------------------------------------------------------------------------------------------
# Times, memory, nodes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "minutes"),
    [
        ("10", 10), ("90", 90), ("1", 1),
        ("1:30", 2), ("0:30", 1), ("2:00", 2), ("0:59", 1), ("0:60", 1), ("0:61", 2),  # M:S, rounded up
        ("1:00:00", 60), ("01:30:00", 90), ("1:00:01", 61), ("0:0:30", 1),  # H:M:S
        ("2-0", 2880), ("1-12", 2160),  # D-H
        ("1-0:30", 1470), ("0-1:1", 61),  # D-H:M
        ("1-0:0:30", 1441), ("3-01:02:03", 3 * 1440 + 63),  # D-H:M:S
        ("UNLIMITED", None), ("unlimited", None), ("INFINITE", None), ("-1", None),
        ("0", None), ("0:0", None), ("00:00:00", None), ("0-0", None),  # zero means no limit
    ],
)
@pytest.mark.parametrize("family", FAMILIES)
def test_time_formats(value: str, minutes: Optional[int], family: int) -> None:
    job = job_of([f"--time={value}", f"--time-min={value}"], family)
    expected = unlimited(family) if minutes is None else number(family, minutes)
    assert job["time_limit"] == expected
    assert job["time_minimum"] == expected


@pytest.mark.parametrize("value", ["abc", "1:2:3:4", "1-", "-5", "1h", "1.5", "1-2-3", ":30", ""])
def test_bad_time_refused(value: str) -> None:
    with pytest.raises(Rejection, match=rf"--time: {re.escape(repr(value))} is not a Slurm time"):
        job_of([f"--time={value}"])


@pytest.mark.parametrize(
    ("value", "mb"),
    [("4000", 4000), ("500M", 500), ("500m", 500), ("4G", 4096), ("4g", 4096), ("4GB", 4096), ("1T", 1024 * 1024),
     ("2048K", 2), ("1024k", 1), ("512K", 1), ("100MB", 100)],
)
@pytest.mark.parametrize("option,key", [("mem", "memory_per_node"), ("mem-per-cpu", "memory_per_cpu"),
                                        ("tmp", "temporary_disk_per_node")])
def test_memory_units(value: str, mb: int, option: str, key: str) -> None:
    assert job_of([f"--{option}={value}"], 39)[key] == mb
    # v0.0.40+ memory fields are objects: a plain integer drew a type warning from 24.11's slurmrestd
    assert job_of([f"--{option}={value}"], 40)[key] == (mb if option == "tmp" else number(40, mb))


def test_mem_zero_means_all_memory() -> None:
    assert job_of(["--mem=0"], 38)["memory_per_node"] == 0


def test_kilobytes_round_up_like_slurm() -> None:
    assert job_of(["--mem=1500K"], 38)["memory_per_node"] == 2


@pytest.mark.parametrize("value", ["lots", "4X", "-1", "", "4GiB", "1.5G", "G"])
def test_bad_memory_refused(value: str) -> None:
    with pytest.raises(Rejection, match=rf"--mem: {re.escape(repr(value))} is not a memory size"):
        job_of([f"--mem={value}"])


@pytest.mark.parametrize(("value", "low", "high"), [("2", 2, 2), ("1-4", 1, 4), ("10", 10, 10)])
@pytest.mark.parametrize("family", FAMILIES)
def test_nodes(value: str, low: int, high: int, family: int) -> None:
    job = job_of([f"--nodes={value}"], family)
    if family == 38:
        assert job["nodes"] == value
        assert "minimum_nodes" not in job
    else:
        assert (job["minimum_nodes"], job["maximum_nodes"]) == (low, high)
        assert "nodes" not in job


@pytest.mark.parametrize("value", ["two", "1-", "-4", "1,2", "1-4:2"])
def test_bad_nodes_refused(value: str) -> None:
    with pytest.raises(Rejection, match=rf"--nodes expects N or MIN-MAX, got {re.escape(repr(value))}"):
        job_of([f"--nodes={value}"], 40)


@pytest.mark.parametrize(
    ("args", "key", "value"),
    [
        (["-n 4"], "tasks", 4),
        (["--ntasks=4"], "tasks", 4),
        (["-c 2"], "cpus_per_task", 2),
        (["--ntasks-per-node=8"], "tasks_per_node", 8),
        (["--mincpus=3"], "minimum_cpus_per_node", 3),
        (["--threads-per-core=1"], "threads_per_core", 1),
        (["-p gpu"], "partition", "gpu"),
        (["-A proj1"], "account", "proj1"),
        (["-q high"], "qos", "high"),
        (["-a 1-10%2"], "array", "1-10%2"),
        (["-d afterok:12"], "dependency", "afterok:12"),
        (["-C intel&ib"], "constraints", "intel&ib"),
        (["-L matlab:1"], "licenses", "matlab:1"),
        (["--reservation=maint"], "reservation", "maint"),
        (["--mail-user=alice@example.com"], "mail_user", "alice@example.com"),
        (["--hold"], "hold", True),
        (["--requeue"], "requeue", True),
        (["--no-requeue"], "requeue", False),
        (["--overcommit"], "overcommit", True),
        (["--contiguous"], "contiguous", True),
        (["--nice"], "nice", 100),
        (["--nice=-5"], "nice", -5),
        (["--nice=+10"], "nice", 10),
    ],
)
def test_simple_translations(args: List[str], key: str, value: Any) -> None:
    assert job_of(args, 40)[key] == value


@pytest.mark.parametrize(("args", "message"), [(["--ntasks=0"], r"--ntasks expects a positive whole number"),
                                               (["-c two"], r"--cpus-per-task expects a positive whole number"),
                                               (["--nice=low"], r"--nice expects a whole number")])
def test_bad_numbers_refused(args: List[str], message: str) -> None:
    with pytest.raises(Rejection, match=message):
        job_of(args, 40)


# ---------------------------------------------------------------------------------------------
# Mail, exclusive, GPUs/GRES, node lists, signal
# ---------------------------------------------------------------------------------------------

ALL_MAIL = ["BEGIN", "END", "FAIL", "REQUEUE", "STAGE_OUT", "INVALID_DEPENDENCY"]


@pytest.mark.parametrize(
    ("value", "flags"),
    [("ALL", ALL_MAIL), ("all", ALL_MAIL), ("END,FAIL", ["END", "FAIL"]), ("'end, fail'", ["END", "FAIL"]),
     ("BEGIN,ALL", ALL_MAIL), ("FAIL,ALL", ["FAIL", "BEGIN", "END", "REQUEUE", "STAGE_OUT", "INVALID_DEPENDENCY"])],
)
@pytest.mark.parametrize("family", [39, 40, 42])
def test_mail_type_is_a_flag_list_from_v39(value: str, flags: List[str], family: int) -> None:
    assert job_of([f"--mail-type={value}"], family)["mail_type"] == flags


def test_mail_type_stays_an_sbatch_string_on_v38() -> None:
    assert job_of(["--mail-type=ALL"], 38)["mail_type"] == "ALL"
    assert job_of(["--mail-type=END,FAIL"], 38)["mail_type"] == "END,FAIL"


@pytest.mark.parametrize(
    ("args", "family", "expected"),
    [
        (["--exclusive"], 38, {"exclusive": True}),
        (["--exclusive"], 39, {"exclusive": "true"}),
        (["--exclusive"], 40, {"exclusive": "true"}),
        (["--exclusive"], 42, {"shared": "none"}),
        (["--exclusive=user"], 38, {"exclusive": "user"}),
        (["--exclusive=mcs"], 40, {"exclusive": "mcs"}),
        (["--exclusive=user"], 42, {"shared": "user"}),
        (["--exclusive=topo"], 42, {"shared": "topo"}),
    ],
)
def test_exclusive(args: List[str], family: int, expected: Dict[str, Any]) -> None:
    job = job_of(args, family)
    for key, value in expected.items():
        assert job[key] == value
    if family >= 42:
        assert "exclusive" not in job  # removed in v0.0.42: it would be silently ignored
    else:
        assert "shared" not in job


def test_bad_exclusive_value_refused() -> None:
    with pytest.raises(Rejection, match=r"--exclusive accepts no value or user, mcs, topo; got 'bogus'"):
        job_of(["--exclusive=bogus"], 40)


@pytest.mark.parametrize(
    ("args", "family", "key", "value"),
    [
        (["--gres=gpu:2"], 38, "gres", "gpu:2"),
        (["--gres=gpu:2"], 39, "tres_per_node", "gres:gpu:2"),
        (["--gres=gpu:2"], 40, "tres_per_node", "gres/gpu:2"),
        (["--gres=gpu:2"], 42, "tres_per_node", "gres/gpu:2"),
        (["--gres=gpu:a100:1,nvme:1"], 40, "tres_per_node", "gres/gpu:a100:1,gres/nvme:1"),
        (["--gres=gpu:a100:1,nvme:1"], 39, "tres_per_node", "gres:gpu:a100:1,gres:nvme:1"),
        (["--gpus=2"], 38, "gpus", "2"),
        (["-G 2"], 39, "tres_per_job", "gres:gpu:2"),
        (["--gpus=2"], 40, "tres_per_job", "gres/gpu:2"),
        (["--gpus=2"], 42, "tres_per_job", "gres/gpu:2"),
        (["--gpus-per-node=4"], 38, "gpus_per_node", "4"),
        (["--gpus-per-node=4"], 40, "tres_per_node", "gres/gpu:4"),
        (["--gpus-per-task=1"], 39, "tres_per_task", "gres:gpu:1"),
        (["--gpus-per-task=1"], 42, "tres_per_task", "gres/gpu:1"),
    ],
)
def test_gres_and_gpus(args: List[str], family: int, key: str, value: str) -> None:
    job = job_of(args, family)
    assert job[key] == value
    if family > 38:
        assert not {"gres", "gpus", "gpus_per_node", "gpus_per_task"} & set(job)


@pytest.mark.parametrize(("option", "key"), [("gpus", "tres_per_job"), ("gpus-per-node", "tres_per_node")])
def test_typed_gpu_count(option: str, key: str) -> None:
    assert job_of([f"--{option}=volta:3"], 40)[key] == "gres/gpu:volta:3"


@pytest.mark.parametrize(
    ("args", "family", "key", "value"),
    [
        (["--nodelist=n[1-2]"], 38, "nodelist", "n[1-2]"),
        (["-w n[1-2]"], 39, "required_nodes", "n[1-2]"),
        (["-w n[1-2]"], 42, "required_nodes", "n[1-2]"),
        (["--exclude=n3"], 38, "exclude_nodes", "n3"),
        (["-x n3"], 40, "excluded_nodes", "n3"),
    ],
)
def test_node_list_keys_renamed(args: List[str], family: int, key: str, value: str) -> None:
    job = job_of(args, family)
    assert job[key] == value
    old_and_new = {"nodelist", "required_nodes", "exclude_nodes", "excluded_nodes"}
    assert old_and_new & set(job) == {key}


def test_signal_v38_is_the_sbatch_string() -> None:
    assert job_of(["--signal=B:USR1@90"], 38)["signal"] == "B:USR1@90"


@pytest.mark.parametrize(
    ("value", "signal", "delay", "flags"),
    [("B:USR1@90", "USR1", 90, ["BATCH_JOB"]), ("USR2", "USR2", 60, []), ("R:10@30", "10", 30, ["RESERVATION_JOB"]),
     ("RB:USR1@5", "USR1", 5, ["BATCH_JOB", "RESERVATION_JOB"])],
)
def test_signal_from_v39(value: str, signal: str, delay: int, flags: List[str]) -> None:
    job = job_of([f"--signal={value}"], 40)
    assert job["kill_warning_signal"] == signal
    assert job["kill_warning_delay"] == number(40, delay)
    assert job["kill_warning_flags"] == flags
    assert "signal" not in job


def test_begin_iso_date_is_passed_as_written_except_on_v39() -> None:
    """v0.0.40+ run Slurm's parse_time() on a string and v0.0.38 reads the sbatch string; v0.0.39 reads
    only a bare integer (an object there made no job and no error)."""
    from datetime import datetime

    for minor in (38, 40, 41, 42, 44):
        assert job_of(["--begin=2030-01-02T03:04:05"], minor)["begin_time"] == "2030-01-02T03:04:05"
    assert job_of(["--begin=2030-01-02T03:04:05"], 39)["begin_time"] == int(datetime(2030, 1, 2, 3, 4, 5).timestamp())


def test_begin_relative_on_v39_uses_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobbergate_sync.time, "time", lambda: 1_000_000.0)
    assert job_of(["--begin=now+2hours"], 39)["begin_time"] == 1_000_000 + 7200
    assert job_of(["--begin=now+2hours"], 42)["begin_time"] == "now+2hours"


def local(*fields: int) -> int:
    import time as _time

    return int(_time.mktime((*fields, *(0,) * (6 - len(fields)), 0, 0, -1)))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", (2030, 1, 2, 10, 30, 15)),
        ("now+1hour", (2030, 1, 2, 11, 30, 15)),
        ("now+90", (2030, 1, 2, 10, 31, 45)),
        ("now+2days", (2030, 1, 4, 10, 30, 15)),
        ("now + 1 week", (2030, 1, 9, 10, 30, 15)),
        ("now-10minutes", (2030, 1, 2, 10, 20, 15)),
        ("today", (2030, 1, 2, 0, 0)),
        ("tomorrow", (2030, 1, 3, 0, 0)),
        ("midnight", (2030, 1, 3, 0, 0)),
        ("noon", (2030, 1, 2, 12, 0)),
        ("teatime", (2030, 1, 2, 16, 0)),
        ("fika", (2030, 1, 2, 15, 0)),
        ("today teatime", (2030, 1, 2, 16, 0)),
        ("tomorrow noon", (2030, 1, 3, 12, 0)),
        ("16:00", (2030, 1, 2, 16, 0)),
        ("9:15", (2030, 1, 3, 9, 15)),
        ("10:30", (2030, 1, 3, 10, 30)),  # not after now: tomorrow
        ("10:31:05", (2030, 1, 2, 10, 31, 5)),
        ("4:00 pm", (2030, 1, 2, 16, 0)),
        ("12:00am", (2030, 1, 3, 0, 0)),
        ("12/25", (2030, 12, 25, 0, 0)),
        ("01/01", (2031, 1, 1, 0, 0)),  # already past this year: next year
        ("12/25/31", (2031, 12, 25, 0, 0)),
        ("12.25.31", (2031, 12, 25, 0, 0)),
        ("122531", (2031, 12, 25, 0, 0)),
        ("2030-03-04", (2030, 3, 4, 0, 0)),
        ("2030-03-04T05:06", (2030, 3, 4, 5, 6)),
        ("2030-03-04T05:06:07", (2030, 3, 4, 5, 6, 7)),
        ("03/04-05:06", (2030, 3, 4, 5, 6)),
    ],
)
def test_parse_slurm_time(text: str, expected: tuple) -> None:
    now = local(2030, 1, 2, 10, 30, 15)
    assert jobbergate_sync.parse_slurm_time(text, now) == local(*expected)


def test_parse_slurm_time_uts() -> None:
    assert jobbergate_sync.parse_slurm_time("uts1900000000", 0) == 1900000000


@pytest.mark.parametrize("text", ["", "later", "now+", "now+1fortnight", "now1", "25:00", "10:7", "13/01",
                                  "2030-13-01", "12:00 pm pm", "Today", "uts12", "2030-1-02"])
def test_parse_slurm_time_refusals(text: str) -> None:
    with pytest.raises(ValueError):
        jobbergate_sync.parse_slurm_time(text, local(2030, 1, 2, 10, 30, 15))


@pytest.mark.parametrize("minor", [38, 39, 40, 42, 44])
@pytest.mark.parametrize("value", ["now", "now+1hour", "today", "midnight", "noon", "teatime", "16:00", "12/25",
                                   "12/25/31", "2030-01-02", "2030-01-02T03:04:05"])
def test_every_sbatch_begin_form_is_accepted(value: str, minor: int) -> None:
    begin = job_of([f"--begin={value}"], minor)["begin_time"]
    assert isinstance(begin, int) if minor == 39 else begin == value


@pytest.mark.parametrize("minor", [38, 39, 42])
def test_bad_begin_refused_by_name(minor: int) -> None:
    with pytest.raises(Rejection, match=r"--begin: 'next week' is not a Slurm time"):
        job_of(["--begin='next week'"], minor)


# ---------------------------------------------------------------------------------------------
# --export and the environment
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_export_adds_name_value_pairs(family: int) -> None:
    job = job_of(["--export=FOO=bar,EMPTY=,EQ=a=b"], family, directives=["--export=FROM_SCRIPT=1"])
    env = environment_of(job, family)
    assert env == {**BASE_ENV, "FROM_SCRIPT": "1", "FOO": "bar", "EMPTY": "", "EQ": "a=b"}


@pytest.mark.parametrize("family", [38, 40])
def test_export_may_override_the_base_environment(family: int) -> None:
    env = environment_of(job_of(["--export=PATH=/opt/bin"], family), family)
    assert env["PATH"] == "/opt/bin"


@pytest.mark.parametrize("value", ["NONE", "none", "NIL"])
def test_export_none_keeps_only_the_base_environment(value: str) -> None:
    assert job_of([f"--export={value}"], 38)["environment"] == BASE_ENV


@pytest.mark.parametrize("value", ["ALL", "all", "ALL,FOO=bar", "FOO=bar,ALL"])
def test_export_all_refused(value: str) -> None:
    with pytest.raises(Rejection, match=r"--export=ALL is not allowed"):
        job_of([f"--export={value}"], 40)


@pytest.mark.parametrize("value", ["HOME", "FOO=bar,SECRET", "1X=y", "A-B=c", "=x"])
def test_export_without_value_or_bad_name_refused(value: str) -> None:
    with pytest.raises(Rejection, match=r"--export entry .* must be NAME=value"):
        job_of([f"--export={value}"], 40)


# ---------------------------------------------------------------------------------------------
# Forbidden options, control characters, shell metacharacters
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("--uid=0", r"--uid is not allowed"),
        ("--uid root", r"--uid is not allowed"),
        ("--ui=0", r"--uid is not allowed"),  # a unique prefix is still the same option
        ("--gid=0", r"--gid is not allowed"),
        ("--wrap='id > /tmp/x'", r"--wrap is not allowed"),
        ("--export-file=/etc/shadow", r"--export-file is not allowed"),
        ("--get-user-env", r"--get-user-env is not supported"),
        ("--get-user-env=10L", r"--get-user-env is not supported"),
    ],
)
@pytest.mark.parametrize("where", ["sbatch_arguments", "#SBATCH"])
def test_forbidden_options_refused(argument: str, message: str, where: str) -> None:
    with pytest.raises(Rejection, match=message):
        if where == "sbatch_arguments":
            job_of([argument], 40)
        else:
            job_of([], 40, directives=[argument])


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\x00b", "a\tb", "a\x1bb", "a\x7fb", "a\x01"])
def test_control_characters_in_sbatch_arguments_refused(value: str) -> None:
    with pytest.raises(Rejection, match=r"sbatch_arguments entry .* contains a newline, NUL or other control character"):
        job_of([f"--job-name={value}"], 40)


@pytest.mark.parametrize("value", ["a\tb", "a\x00b", "a\x1b[31mb", "a\x7fb", "a\x08b"])
def test_control_characters_in_directive_values_refused(value: str) -> None:
    script = f"#!/bin/bash\n#SBATCH --job-name='{value}'\necho\n"
    with pytest.raises(Rejection, match=r"the value of --job-name in #SBATCH contains a newline, NUL or other control"):
        build_job_request(script, [], "n", WORKDIR, dict(BASE_ENV), TAG, 40)


@pytest.mark.parametrize("family", [38, 42])
def test_shell_metacharacters_are_passed_literally(family: int) -> None:
    job = job_of(["--job-name='$(rm -rf ~); echo `id` | tee x & wait'", "--output=out_$USER_%j.txt"], family,
                 directives=["--comment=\"a;b>c<d*e?\""])
    assert job["name"] == "$(rm -rf ~); echo `id` | tee x & wait"
    assert job["standard_output"] == WORKDIR + "/out_$USER_%j.txt"
    assert job["comment"] == TAG + " a;b>c<d*e?"


def test_unsupported_option_in_sbatch_arguments_refused() -> None:
    with pytest.raises(Rejection, match=r"unsupported option --cpu-freq in sbatch_arguments"):
        job_of(["--cpu-freq=high"], 40)


def test_unsupported_option_in_directives_refused() -> None:
    with pytest.raises(Rejection, match=r"unsupported option --cpu-freq in #SBATCH"):
        job_of([], 40, directives=["--cpu-freq=high"])


def test_options_after_the_block_are_not_translated() -> None:
    script = "#!/bin/bash\n#SBATCH -p debug\necho\n#SBATCH --uid=0\n"
    job = build_job_request(script, [], "n", WORKDIR, dict(BASE_ENV), TAG, 38).payload["job"]
    assert job["partition"] == "debug"
    assert "uid" not in job


# ---------------------------------------------------------------------------------------------
# script_text
# ---------------------------------------------------------------------------------------------


def test_script_text_returns_the_text() -> None:
    assert script_text("#!/bin/bash\necho é\n".encode(), "job.sh") == "#!/bin/bash\necho é\n"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"#!/bin/bash\n\xff\xfe\n", r"entrypoint 'job\.sh' is not UTF-8 text \(byte 12\)"),
        (b"#!/bin/bash\necho \x00\n", r"entrypoint 'job\.sh' contains a NUL byte"),
        (b"echo hello\n", r"entrypoint 'job\.sh' does not start with '#!'"),
        (b"\n#!/bin/bash\n", r"entrypoint 'job\.sh' does not start with '#!'"),
        (b" #!/bin/bash\n", r"entrypoint 'job\.sh' does not start with '#!'"),
        (b"", r"entrypoint 'job\.sh' does not start with '#!'"),
        (b"\xef\xbb\xbf#!/bin/bash\n", r"entrypoint 'job\.sh' does not start with '#!'"),  # BOM
    ],
)
def test_script_text_refusals(data: bytes, message: str) -> None:
    with pytest.raises(Rejection, match=message):
        script_text(data, "job.sh")


# ---------------------------------------------------------------------------------------------
# validated_filename and parse_pending
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["job.sh", "data file.txt", ".bashrc", "..hidden", "a..b", "x" * 255, "é" * 127,
                                  "-rf", "naïve.py"])
def test_good_file_names(name: str) -> None:
    assert validated_filename(name) == name


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../x", r"is not a plain file name"),
        ("/etc/x", r"is not a plain file name"),
        ("a/b", r"is not a plain file name"),
        ("dir/", r"is not a plain file name"),
        (".", r"is not a plain file name"),
        ("..", r"is not a plain file name"),
        ("", r"is empty or not a string"),
        (None, r"is empty or not a string"),
        (5, r"is empty or not a string"),
        (["job.sh"], r"is empty or not a string"),
        ("a\x00b", r"contains a NUL byte"),
        ("a\nb", r"contains a control character"),
        ("a\tb", r"contains a control character"),
        ("a\x1bb", r"contains a control character"),
        ("a\x7fb", r"contains a control character"),
        ("x" * 256, r"is longer than 255 bytes"),
        ("é" * 128, r"is longer than 255 bytes"),  # 256 bytes in UTF-8
    ],
)
def test_bad_file_names(name: Any, message: str) -> None:
    with pytest.raises(Rejection, match=message):
        validated_filename(name)


def pending_item(**overrides: Any) -> Dict[str, Any]:
    item: Dict[str, Any] = {
        "id": 7,
        "name": "demo",
        "owner_email": "alice@example.com",
        "execution_directory": "/home/alice/jobs",
        "execution_parameters": {},
        "sbatch_arguments": ["--partition=debug", "--nodes=1"],
        "job_script": {
            "id": 3,
            "name": "demo-script",
            "created_at": "2026-11-26T16:08:48.944717Z",
            "files": [
                {"parent_id": 3, "filename": "job.sh", "file_type": "ENTRYPOINT"},
                {"parent_id": 3, "filename": "helpers.sh", "file_type": "SUPPORT"},
            ],
        },
    }
    for key, value in overrides.items():
        if value is _REMOVE:
            item.pop(key)
        else:
            item[key] = value
    return item


_REMOVE = object()


def files(*entries: Any) -> Dict[str, Any]:
    return {"id": 3, "files": list(entries)}


def entry(filename: Any = "job.sh", file_type: Any = "ENTRYPOINT", parent_id: Any = 3) -> Dict[str, Any]:
    return {"parent_id": parent_id, "filename": filename, "file_type": file_type}


def test_parse_pending_valid_item() -> None:
    submission = parse_pending(pending_item())
    assert submission.id == 7
    assert submission.name == "demo"
    assert submission.owner_email == "alice@example.com"
    assert submission.script_created_at == "2026-11-26T16:08:48.944717Z"
    assert submission.execution_directory == "/home/alice/jobs"
    assert submission.sbatch_arguments == ("--partition=debug", "--nodes=1")
    assert [(f.parent_id, f.filename, f.is_entrypoint) for f in submission.files] == [
        (3, "job.sh", True), (3, "helpers.sh", False)]
    assert submission.entrypoint.filename == "job.sh"


def test_parse_pending_optional_fields_may_be_absent() -> None:
    submission = parse_pending(pending_item(execution_directory=_REMOVE, sbatch_arguments=_REMOVE))
    assert submission.execution_directory is None
    assert submission.sbatch_arguments == ()


def test_parse_pending_optional_fields_may_be_null() -> None:
    submission = parse_pending(pending_item(execution_directory=None, sbatch_arguments=None))
    assert submission.execution_directory is None
    assert submission.sbatch_arguments == ()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": _REMOVE}, r"submission 7: field 'name' is missing or not a str"),
        ({"name": 12}, r"submission 7: field 'name' is missing or not a str"),
        ({"owner_email": _REMOVE}, r"submission 7: field 'owner_email' is missing or not a str"),
        ({"owner_email": ["a@b"]}, r"field 'owner_email' is missing or not a str"),
        ({"execution_directory": 5}, r"field 'execution_directory' is missing or not a str"),
        ({"sbatch_arguments": "--partition=debug"}, r"field 'sbatch_arguments' is missing or not a list"),
        ({"sbatch_arguments": ["-N", 2]}, r"submission 7: sbatch_arguments must be a list of strings"),
        ({"job_script": _REMOVE}, r"submission 7: field 'job_script' is missing or not a dict"),
        ({"job_script": "3"}, r"field 'job_script' is missing or not a dict"),
        ({"job_script": {"id": 3}}, r"submission 7: its job script lists no files"),
        ({"job_script": files()}, r"its job script lists no files"),
        ({"job_script": {"id": 3, "files": "job.sh"}}, r"its job script lists no files"),
        ({"job_script": files("job.sh")}, r"malformed job script file entry"),
        ({"job_script": files(entry(parent_id=None))}, r"malformed job script file entry"),
        ({"job_script": files(entry(parent_id="3"))}, r"malformed job script file entry"),
        ({"job_script": files(entry(file_type="OTHER"))}, r"malformed job script file entry"),
        ({"job_script": files(entry(file_type=None))}, r"malformed job script file entry"),
        ({"job_script": files(entry(filename="../../etc/cron.d/x"))}, r"is not a plain file name"),
        ({"job_script": files(entry(filename=None))}, r"is empty or not a string"),
        ({"job_script": files(entry(), entry(filename="job.sh", file_type="SUPPORT"))},
         r"job script file name 'job\.sh' appears more than once"),
        ({"job_script": files(entry("a.sh", "SUPPORT"), entry("b.sh", "SUPPORT"))},
         r"the job script has 0 ENTRYPOINT files; exactly one is required"),
        ({"job_script": files(entry("a.sh"), entry("b.sh"))},
         r"the job script has 2 ENTRYPOINT files; exactly one is required"),
    ],
)
def test_parse_pending_refusals(overrides: Dict[str, Any], message: str) -> None:
    with pytest.raises(Rejection, match=message):
        parse_pending(pending_item(**overrides))


# A name with "\n" and "\x1f" would be whole forged records in squeue's and sacct's text output.
@pytest.mark.parametrize("name", ["a\nb", "analysis\n77\x1f0\x1fN/A\x1fRUNNING", "a\x1bb", "a\u202eb", "a\x85b",
                                  "a\u2028b", "a\u200bb", "a\ud800b"])
def test_parse_pending_refuses_a_name_with_a_control_character(name: str) -> None:
    with pytest.raises(Rejection, match=r"submission 7: field 'name' contains a control character \(U\+[0-9A-F]{4}\)"):
        parse_pending(pending_item(name=name))


@pytest.mark.parametrize("value", ["a\u202eb", "a\x85b", "a\u2028b", "a\u2029b", "a\ufeffb"])
def test_format_and_c1_characters_in_option_values_refused(value: str) -> None:
    with pytest.raises(Rejection, match=r"the value of --comment in #SBATCH contains a newline, NUL or other control"):
        build_job_request(f"#!/bin/bash\n#SBATCH --comment='{value}'\n", [], "n", WORKDIR, dict(BASE_ENV), TAG, 40)
    with pytest.raises(Rejection, match=r"sbatch_arguments entry .* contains a newline, NUL or other control"):
        job_of([f"--job-name={value}"], 40)


def test_names_with_other_unicode_are_kept() -> None:
    assert parse_pending(pending_item(name="analyse é 解析 \u00a0x")).name == "analyse é 解析 \u00a0x"


# ---------------------------------------------------------------------------------------------
# What each API version can carry (Slurm source, data_parser/v0.0.39 ... v0.0.44 parsers.c)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "flags"),
    [("INVALID_DEPEND", ["INVALID_DEPENDENCY"]), ("TIME_LIMIT", ["TIME=100%"]), ("TIME_LIMIT_90", ["TIME=90%"]),
     ("time_limit_80,TIME_LIMIT_50", ["TIME=80%", "TIME=50%"]), ("ARRAY_TASKS,END", ["ARRAY_TASKS", "END"]),
     ("NONE", []), ("END,NONE", []), ("STAGE_OUT", ["STAGE_OUT"])],
)
@pytest.mark.parametrize("minor", [39, 40, 44])
def test_mail_type_sbatch_names_become_api_flags(value: str, flags: List[str], minor: int) -> None:
    assert job_of([f"--mail-type={value}"], minor)["mail_type"] == flags


@pytest.mark.parametrize("minor", [38, 42])
def test_unknown_mail_type_refused_by_name(minor: int) -> None:
    with pytest.raises(Rejection, match=r"--mail-type: TIME=90%, SOMETIMES is not a mail type"):
        job_of(["--mail-type=END,TIME=90%,SOMETIMES"], minor)


@pytest.mark.parametrize(("option", "minors"), [("--distribution=block", (39, 40)), ("--nice=5", (39,)),
                                                ("--cores-per-socket=4", (39, 41, 42, 43, 44)),
                                                ("--overcommit", (38,)), ("--contiguous", (38,))])
def test_options_a_version_cannot_carry_are_refused_by_name(option: str, minors: tuple) -> None:
    name = option.split("=")[0]
    for minor in minors:
        with pytest.raises(Rejection, match=rf"^{name} cannot be used with this cluster's slurmrestd API v0\.0\.{minor}"):
            job_of([option], minor)
    for minor in set(range(38, 45)) - set(minors):
        assert job_of([option], minor)


@pytest.mark.parametrize(("args", "minor", "expected"), [
    (["--no-requeue"], 38, {"no_requeue": True}),  # v0.0.38's "requeue" sets requeue whatever its value
    (["--no-requeue"], 40, {"requeue": False}),
    (["--requeue", "--no-requeue"], 38, {"no_requeue": True}),
    (["--no-requeue", "--requeue"], 38, {"requeue": True}),
    (["--no-requeue", "--requeue"], 44, {"requeue": True}),
])
def test_no_requeue_reaches_slurm_on_every_version(args: List[str], minor: int, expected: Dict[str, Any]) -> None:
    job = job_of(args, minor)
    assert {key: job[key] for key in ("requeue", "no_requeue") if key in job} == expected


def test_cores_per_socket_kept_where_a_field_exists() -> None:
    assert job_of(["--cores-per-socket=4"], 40)["cores_per_socket"] == 4
    assert job_of(["--cores-per-socket=4"], 38)["cores_per_socket"] == 4


def test_distribution_kept_from_v41() -> None:
    assert job_of(["-m", "block"], 41)["distribution"] == "block"


@pytest.mark.parametrize("release", ["23.11.0", "23.11.1"])
def test_nice_refused_on_the_v40_releases_that_abort_on_it(release: str) -> None:
    with pytest.raises(Rejection, match=rf"--nice cannot be used with this cluster's slurmrestd \(Slurm {release}"):
        build(["--nice=5"], 40, release=release)
    assert build(["--nice=5"], 40, release="23.11.2").payload["job"]["nice"] == 5
    assert build(["--nice=5"], 41, release=release).payload["job"]["nice"] == 5


@pytest.mark.parametrize("minor", [38, 39, 40])
def test_exclusive_topo_refused_before_v41(minor: int) -> None:
    with pytest.raises(Rejection, match=rf"--exclusive=topo cannot be used with this cluster's slurmrestd API v0\.0\.{minor}"):
        job_of(["--exclusive=topo"], minor)
    assert job_of(["--exclusive=topo"], 41)["exclusive"] == "topo"


@pytest.mark.parametrize(
    ("args", "minor", "expected"),
    [
        (["--gres=nvme:1", "--gpus-per-node=2"], 42, "gres/nvme:1,gres/gpu:2"),
        (["--gpus-per-node=2", "--gres=nvme:1"], 40, "gres/gpu:2,gres/nvme:1"),
        (["--gres=gpu:1,nvme:1", "--gpus-per-node=a100:2"], 44, "gres/gpu:a100:2,gres/nvme:1"),  # later gpu wins
        (["--gres=gpu:1", "--gres=nvme:1"], 42, "gres/nvme:1"),  # a repeated option replaces, as in sbatch
    ],
)
def test_gres_and_gpus_per_node_merge_into_one_tres_per_node(args: List[str], minor: int, expected: str) -> None:
    assert job_of(args, minor)["tres_per_node"] == expected


def test_gres_and_gpus_per_node_stay_separate_on_v38() -> None:
    job = job_of(["--gres=nvme:1", "--gpus-per-node=2"], 38)
    assert (job["gres"], job["gpus_per_node"]) == ("nvme:1", "2")


@pytest.mark.parametrize(("release", "expected"), [("23.02.8", "gres:gpu:2"), (None, "gres:gpu:2"),
                                                   ("23.11.10", "gres/gpu:2"), ("24.05.8", "gres/gpu:2")])
def test_gres_prefix_on_v39_follows_the_release(release: Optional[str], expected: str) -> None:
    job = build(["--gres=gpu:2", "--gpus=2"], 39, release=release).payload["job"]
    assert job["tres_per_node"] == expected
    assert job["tres_per_job"] == expected


@pytest.mark.parametrize("minor", [38, 39, 40, 44])
@pytest.mark.parametrize(("args", "winner", "loser"), [
    (["--mem=4G", "--mem-per-cpu=1G"], "memory_per_cpu", "memory_per_node"),
    (["--mem-per-cpu=1G", "--mem=4G"], "memory_per_node", "memory_per_cpu"),
])
def test_only_the_later_of_mem_and_mem_per_cpu_is_sent(args: List[str], winner: str, loser: str, minor: int) -> None:
    job = job_of(args, minor)
    assert winner in job and loser not in job


def test_command_line_memory_beats_the_directive() -> None:
    job = job_of(["--mem-per-cpu=1G"], 42, directives=["--mem=4G"])
    assert "memory_per_node" not in job and job["memory_per_cpu"] == number(42, 1024)


def test_the_request_names_the_option_of_each_field() -> None:
    request = build(["-m", "block", "--mem=1G", "-t", "5"], 41)
    assert request.options_by_field == {"distribution": "--distribution", "memory_per_node": "--mem",
                                        "time_limit": "--time"}
