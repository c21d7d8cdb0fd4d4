"""The sbatch backend on each leg's own Slurm, the tool running inside the leg's root: `check`, and
a pass while slurmctld is stopped. (Every other Slurm-facing scenario runs in test_matrix.py, whose
sbatch targets are selected with ``-k sbatch``.)"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import helpers
from jobbergate_sync import Rejection, build_sbatch_request, comment_has_tag
from scenario import new_submission, status_of, tag
from tool import Tool


def stack_legs() -> list[str]:
    try:
        return list(helpers.get_stack().legs)
    except helpers.StackNotUp:
        return ["none"]


LEGS = stack_legs()
legs = pytest.mark.parametrize("leg", LEGS)


def sbatch_tool(make_tool: Callable[..., Tool], leg: str) -> Tool:
    if leg == "none":
        pytest.fail(helpers.NOT_UP, pytrace=False)
    return make_tool(f"sbatch-{leg}", cluster=f"sbatch-{leg}", leg=leg, backend="sbatch")


@legs
def test_check_finds_the_commands_slurmctld_and_slurmdbd(make_tool, stack, leg):
    tool = sbatch_tool(make_tool, leg)
    result = tool.check()
    assert result.returncode == 0, result.stdout
    lines = {line[5:].split(":", 1)[0]: line for line in result.stdout.splitlines()}
    assert f"sbatch {stack.leg(leg).version}" in lines["Slurm commands"], result.stdout
    assert lines["slurmctld"].startswith("ok   slurmctld: squeue answered"), result.stdout
    assert lines["slurmdbd"].startswith("ok   slurmdbd: sacct answered"), result.stdout
    assert "slurmrestd" not in result.stdout


@legs
def test_slurmctld_stopped_exits_69_leaves_the_submission_created_then_submits_once(
        make_tool, services, alice: Any, leg):
    tool = sbatch_tool(make_tool, leg)
    sub = new_submission(alice, {"job.sh": b"#!/bin/bash\ntrue\n"}, client_id=f"sbatch-{leg}",
                         execution_directory=f"/home/alice/jgs-sbatch/{leg}")
    services.stop(f"slurmctld@{leg}")
    result = tool.run()
    assert result.returncode == 69, result.stderr[-2000:]
    assert "Unable to contact slurm controller" in result.stderr
    assert status_of(alice, sub) == "CREATED"
    services.start(f"slurmctld@{leg}")
    tool.run_until(lambda: status_of(alice, sub) in ("SUBMITTED", "DONE"))
    job_id = alice.get_submission(sub["id"])["slurm_job_id"]
    sub_tag = tag(sub, f"sbatch-{leg}")

    def accounted() -> list[str]:
        listing = helpers.slurm_cli("sacct", "-n", "-X", "-P", "-o", "JobIDRaw,Comment", "--starttime=now-15minutes",
                                    leg=leg).stdout
        return [line.split("|", 1)[0] for line in listing.splitlines() if comment_has_tag(line.split("|", 1)[-1], sub_tag)]

    helpers.wait_for(accounted, 60, 1, f"slurmdbd's record of job {job_id}")
    assert accounted() == [str(job_id)]  # submitted exactly once


# Blocks and arguments that read one way to a naive parser and another to sbatch, all accepted by
# the tool. Each runs through the leg's own sbatch with `-v --test-only`, which prints every option
# it set and submits nothing: sbatch must have read exactly the name, comment and directory the
# tool parsed (and put in its journal), and nothing #PBS or #BSUB lines say.
READ_BACK_CASES = {
    "no-space-after-sbatch": ("#!/bin/bash\n#SBATCH--job-name=nospace\n#SBATCH-vD/var\necho\n", ()),
    "empty-word-ends-the-line": ("#!/bin/bash\n#SBATCH --job-name \"\" --chdir=/var\n#SBATCH --exclusive\necho\n", ()),
    "pbs-and-bsub": ("#!/bin/bash\n#PBS -N pbsname\n#PBS -d /var\necho\n#BSUB -cwd /var\n", ()),
    "short-clusters": ("#!/bin/bash\necho\n", ("-HJclustered", "-vD/var", "--comm", "'a note'")),
    "unicode-space": ("#!/bin/bash\n#SBATCH --comment=x\u2003--chdir=/var\necho\n", ()),
}


def assert_sbatch_reads_what_the_tool_parsed(stack: Any, leg: str, name: str, script: str, arguments: tuple[str, ...]) -> None:
    """The leg's sbatch, given the tool's arguments and `script`, sets the name, comment and directory
    the tool parsed (and put in its journal), and reads no #PBS/#BSUB line."""
    if leg == "none":
        pytest.fail(helpers.NOT_UP, pytrace=False)
    made = build_sbatch_request(script, arguments, "sub-name", "/", {}, "jobbergate-sync:read-back:1")  # sbatch runs in /
    path = f"/tmp/jgs-read-back-{name}.sh"
    script_file = stack.leg(leg).root / path[1:]
    script_file.write_text(script)
    try:
        result = helpers.slurm_cli("sbatch", "-v", "--test-only", *made.arguments, path, leg=leg)
    finally:
        script_file.unlink()
    assert result.returncode == 0, result.stderr
    read = dict(re.findall(r"^sbatch: ([a-z-]+) +: (.*)$", result.stderr, re.MULTILINE))
    assert read["job-name"] == made.name and read["comment"] == made.arguments[-1].split("=", 1)[1]
    assert os.path.normpath("/" + read.get("chdir", "/").lstrip("/")) == made.working_directory  # sbatch prefixes its cwd
    assert read["ignore-pbs"] == "set" and "pbsname" not in result.stderr


@legs
@pytest.mark.parametrize("case", sorted(READ_BACK_CASES))
def test_sbatch_reads_exactly_the_options_the_tool_parsed(stack, leg, case):
    assert_sbatch_reads_what_the_tool_parsed(stack, leg, case, *READ_BACK_CASES[case])


# Lines made of the pieces where a reader of #SBATCH lines can go wrong: the prefix with and
# without a space, quotes, backslashes, comments, empty words, non-ASCII spaces.
BLOCK_PIECES = st.sampled_from(["--job-name", "=", "-J", "x", "y z", "-v", "-D", "--chdir=/var", "/tmp", "--comment",
                                "--comm=", '"', "'", "\\", " ", "\t", "#", "\u2003", '""', "\\ ", "\r"])
BLOCK_LINES = st.lists(st.tuples(st.sampled_from(["#SBATCH", "#SBATCH ", "#SLURM", "# ", ""]),
                                 st.lists(BLOCK_PIECES, max_size=6).map("".join)).map("".join), min_size=1, max_size=4)


@legs
@settings(max_examples=100, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=BLOCK_LINES)
def test_sbatch_reads_any_block_the_tool_accepts_as_the_tool_does(stack, leg, lines):
    script = "#!/bin/bash\n" + "\n".join(lines) + "\necho\n"
    try:
        build_sbatch_request(script, (), "sub-name", "/", {}, "jobbergate-sync:read-back:1")
    except Rejection:
        return
    assert_sbatch_reads_what_the_tool_parsed(stack, leg, "generated", script, ())
