"""The sbatch backend on each leg's own Slurm, the tool running inside the leg's root: `check`, and
a pass while slurmctld is stopped. (Every other Slurm-facing scenario runs in test_matrix.py, whose
sbatch targets are selected with ``-k sbatch``.)"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

import pytest

import helpers
from jobbergate_sync import build_sbatch_request
from scenario import new_submission, status_of
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
    tag = f"jobbergate-sync:sbatch-{leg}:{sub['id']}"

    def accounted() -> list[str]:
        listing = helpers.slurm_cli("sacct", "-n", "-X", "-P", "-o", "JobIDRaw,Comment", "--starttime=now-15minutes",
                                    leg=leg).stdout
        return [line.split("|", 1)[0] for line in listing.splitlines() if line.split("|", 1)[-1].startswith(tag)]

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


@legs
@pytest.mark.parametrize("case", sorted(READ_BACK_CASES))
def test_sbatch_reads_exactly_the_options_the_tool_parsed(stack, leg, case):
    if leg == "none":
        pytest.fail(helpers.NOT_UP, pytrace=False)
    script, arguments = READ_BACK_CASES[case]
    made = build_sbatch_request(script, arguments, "sub-name", "/tmp", {}, "jobbergate-sync:read-back:1")
    path = f"/tmp/jgs-read-back-{case}.sh"
    (stack.leg(leg).root / path[1:]).write_text(script)
    result = helpers.slurm_cli("sbatch", "-v", "--test-only", *made.arguments, path, leg=leg)
    assert result.returncode == 0, result.stderr
    read = dict(re.findall(r"^sbatch: ([a-z-]+) +: (.*)$", result.stderr, re.MULTILINE))
    assert read["job-name"] == made.name and read["comment"] == made.arguments[-1].split("=", 1)[1]
    assert os.path.join("/tmp", read.get("chdir", "")).rstrip("/") == made.working_directory
    assert read["ignore-pbs"] == "set" and "pbsname" not in result.stderr
