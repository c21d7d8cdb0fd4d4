"""Exactly-once under crashes, outages and slow peers, hostile input, the root/user boundary and
secrets, on the real stack. Counts go to reliability-figures.json for docs/reliability.md."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from faulty_proxy import FaultyProxy
from helpers import ApiError
from scenario import job_for, new_submission, status_of, unique
from tool import SCRIPT

SHORT_JOB = {"job.sh": b"#!/bin/bash\nsleep 1\n"}
JWT_RE = re.compile(r"eyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]{8,}")


def journal_ids(tool) -> set[int]:
    if not tool.journal.exists():
        return set()
    with sqlite3.connect(tool.journal) as db:
        return {row[0] for row in db.execute("SELECT submission_id FROM submissions")}


def record_outcome(figures, jobs: list, status: str, wanted: tuple) -> None:
    """Count a followed submission, its extra Slurm jobs, and whether it was lost."""
    figures.record("submissions_followed")
    figures.record("duplicates", max(len(jobs) - 1, 0))
    figures.record("lost", int(not jobs or status not in wanted))


def assert_exactly_one_job_and_done(alice, tool, slurm, submission, figures):
    tool.run_until(lambda: status_of(alice, submission) == "DONE")
    jobs = job_for(slurm, submission)
    record_outcome(figures, jobs, status_of(alice, submission), ("DONE",))
    assert len(jobs) == 1, jobs
    assert alice.get_submission(submission["id"])["slurm_job_id"] == jobs[0]["job_id"]
    assert tool.run().returncode == 0  # the pass after DONE prunes the journal
    assert submission["id"] not in journal_ids(tool)


CRASH_POINTS = ["token-cache", "after-files-written", "after-journal-intent", "after-slurm-submit", "after-journal-job",
                "after-agent-submitted"]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_at_each_step_boundary_never_loses_or_duplicates(alice, make_tool, slurm, figures, point):
    tool = make_tool(unique("crash"))  # a fresh state directory: the token is fetched and cached too
    submission = new_submission(alice, SHORT_JOB)

    crashed = tool.run(env={"JOBBERGATE_SYNC_CRASH_AT": point})

    assert crashed.returncode == -9, crashed.stderr
    figures.record("crash_points", 1)
    for path in (tool.token_cache, tool.journal):
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
    leftovers = list((tool.directory / "state").glob(".tmp-*"))
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in leftovers)
    assert tool.run().returncode == 0
    assert tool.run().returncode == 0
    assert_exactly_one_job_and_done(alice, tool, slurm, submission, figures)


def test_sigkill_in_the_middle_of_the_update_phase(alice, make_tool, slurm, figures):
    tool = make_tool(unique("crash-update"))
    submissions = [new_submission(alice, {"job.sh": b"#!/bin/bash\nsleep 4\n"}) for _ in range(3)]
    assert tool.run().returncode == 0
    for submission in submissions:  # a state change to report (the first pass saw them 4 s before their end)
        slurm.wait_for_state(alice.get_submission(submission["id"])["slurm_job_id"], {"COMPLETED"})
    crashed = tool.run(env={"JOBBERGATE_SYNC_CRASH_AT": "mid-update"})
    assert crashed.returncode == -9
    figures.record("crash_points", 1)
    for submission in submissions:
        assert_exactly_one_job_and_done(alice, tool, slurm, submission, figures)


@pytest.fixture
def proxied(make_tool, stack):
    """A tool whose path to one peer goes through a FaultyProxy."""
    proxies = []

    def make(peer: str):
        upstream = {"api": stack.api_url.rsplit("/jobbergate", 1)[0], "oidc": stack.oidc_base,
                    "slurmrestd": stack.slurmrestd_url}[peer]
        proxy = FaultyProxy(upstream)
        proxies.append(proxy)
        setting = {"api": ("jobbergate__api_url", proxy.url + "/jobbergate"),
                   "oidc": ("oidc__issuer", proxy.url + stack.oidc_url[len(stack.oidc_base):]),
                   "slurmrestd": ("slurmrestd__url", proxy.url)}[peer]
        return make_tool(unique(f"proxy-{peer}"), **{setting[0]: setting[1]}), proxy

    yield make
    for proxy in proxies:
        proxy.close()


@pytest.mark.parametrize("peer", ["api", "oidc", "slurmrestd"])
@pytest.mark.parametrize("fault", ["refused", "dropped", "slow", "503", "garbage"])
def test_outages_reject_nothing_end_in_time_and_heal(alice, proxied, slurm, figures, peer, fault):
    tool, proxy = proxied(peer)
    submission = new_submission(alice, SHORT_JOB)
    {"refused": lambda: proxy.set("refused"), "dropped": lambda: proxy.set("drop"), "slow": lambda: proxy.set("slow", delay=7),
     "503": lambda: proxy.set("status", status=503), "garbage": lambda: proxy.set("garbage")}[fault]()

    result = tool.run()

    figures.record("outages", 1)
    assert result.returncode == 69, result.stderr[-2000:]
    assert result.seconds < tool.settings["run.deadline"] + 15
    current = alice.get_submission(submission["id"])
    assert current["status"] == "CREATED" and current["report_message"] is None
    if fault == "slow":
        time.sleep(proxy.delay + 1)  # let a delayed request the proxy still forwards land first
    proxy.set("pass")
    healed = tool.run()
    assert healed.returncode == 0, healed.stderr[-2000:]
    jobs = job_for(slurm, submission)
    # A submit that a slow proxy still forwarded made a job during the outage; the healing pass
    # finds it by its tag, and closes it in the same pass if that short job has already ended.
    record_outcome(figures, jobs, status_of(alice, submission), ("SUBMITTED", "DONE"))
    assert status_of(alice, submission) in ("SUBMITTED", "DONE")
    assert len(jobs) == 1


FILENAME_CASES = ["../x", "/etc/jgs-x", "a/b", "a\x00b", "x" * 300]


@pytest.mark.parametrize("filename", FILENAME_CASES, ids=["dotdot", "absolute", "slash", "nul", "long"])
def test_hostile_filenames_never_write_outside_the_execution_directory(alice, tool, slurm, figures, filename):
    """Whichever layer stops the name (the API at upload, or the tool), nothing is written outside
    the execution directory, and a name the tool receives unchanged is refused by name."""
    workdir = Path(f"/home/alice/jgs/{unique('names')}")
    outside = [Path("/etc/jgs-x"), workdir.parent / "x", workdir / "a"]
    try:
        submission = new_submission(alice, {"job.sh": b"#!/bin/bash\ntrue\n", filename: b"data"},
                                    execution_directory=str(workdir))
    except ApiError as refused:  # the API refused to store that name: a layer before ours
        assert refused.status in (400, 404, 422, 500)
        figures.record("hostile_inputs_refused_by_the_api")
        return
    stored = [f["filename"] for f in alice.get_job_script(submission["job_script_id"])["files"]]

    assert tool.run().returncode == 0

    current = alice.get_submission(submission["id"])
    if filename in stored:
        assert current["status"] == "REJECTED", current
        assert "file name" in current["report_message"]
        assert job_for(slurm, submission) == []
        figures.record("hostile_inputs_refused_by_the_tool")
    else:  # the API stored a cleaned name: an ordinary file inside the directory
        assert current["status"] == "SUBMITTED", (stored, current)
        figures.record("hostile_inputs_cleaned_by_the_api")
        assert all((workdir / name).is_file() for name in stored)
    assert not any(path.exists() for path in outside)


def test_duplicate_file_names_in_one_script_are_impossible_or_refused(alice):
    script = alice.create_job_script(unique("dup"), {"job.sh": b"#!/bin/bash\ntrue\n"}, entrypoint="job.sh")
    alice.upload(script["id"], "SUPPORT", "job.sh", b"other")
    files = alice.get_job_script(script["id"])["files"]
    assert [f["filename"] for f in files].count("job.sh") == 1  # the API replaces a same-named file


@pytest.fixture
def victim():
    path = Path("/var/tmp/jgs-root-owned-victim")
    path.write_text("precious\n")
    path.chmod(0o644)
    yield path
    path.unlink()


def _as_alice(*command: str) -> None:
    subprocess.run(["runuser", "-u", "alice", "--", *command], check=True)


def test_symlink_planted_in_the_execution_directory_is_not_followed(alice, tool, slurm, figures, victim):
    workdir = f"/home/alice/jgs/{unique('planted')}"
    _as_alice("mkdir", "-p", workdir)
    _as_alice("ln", "-s", str(victim), f"{workdir}/job.sh")
    submission = new_submission(alice, {"job.sh": b"#!/bin/bash\necho pwned\n"}, execution_directory=workdir)

    assert tool.run().returncode == 0

    current = alice.get_submission(submission["id"])
    assert current["status"] == "REJECTED"
    assert f"{workdir}/job.sh is a symbolic link" in current["report_message"]
    assert victim.read_text() == "precious\n" and victim.stat().st_uid == 0
    figures.record("hostile_inputs_refused_by_the_tool")


@pytest.mark.parametrize("kind", ["symlink", "file", "root-owned", "relative"])
def test_bad_execution_directories_are_refused(alice, tool, slurm, figures, kind):
    base = f"/home/alice/jgs/{unique(kind)}"
    if kind == "symlink":
        _as_alice("mkdir", "-p", base + "-real")
        _as_alice("ln", "-s", base + "-real", base)
        expected = "is a symbolic link"
    elif kind == "file":
        _as_alice("mkdir", "-p", os.path.dirname(base))
        _as_alice("touch", base)
        expected = "is not a directory"
    elif kind == "root-owned":
        base = "/var/lib"
        expected = "is not writable by the job's user"
    else:
        base = "jobs/relative"
        expected = "is not an absolute path"
    submission = new_submission(alice, SHORT_JOB, execution_directory=base)

    assert tool.run().returncode == 0

    current = alice.get_submission(submission["id"])
    assert current["status"] == "REJECTED" and expected in current["report_message"]
    assert job_for(slurm, submission) == []
    figures.record("hostile_inputs_refused_by_the_tool")


@pytest.mark.parametrize("files, arguments, expected", [
    ({"job.sh": b"#!/bin/bash\ntrue\n", "big.bin": b"x" * 4096}, None, "is larger than the 2048-byte limit"),
    ({"job.sh": b"#!/bin/bash\n\xff\xfe\n"}, None, "is not UTF-8 text"),
    ({"job.sh": b"true\n"}, None, "does not start with '#!'"),
    ({"job.sh": b"#!/bin/bash\n#SBATCH --gid=0\ntrue\n"}, None, "--gid is not allowed"),
    ({"job.sh": b"#!/bin/bash\ntrue\n"}, ["--uid=root"], "--uid is not allowed"),
    ({"job.sh": b"#!/bin/bash\ntrue\n"}, ["--export=ALL"], "--export=ALL is not allowed"),
    ({"job.sh": b"#!/bin/bash\ntrue\n"}, ["--export=PATH"], "must be NAME=value"),
    ({"job.sh": b"#!/bin/bash\ntrue\n"}, ["--job-name=a\nb"], "contains a newline"),
    ({"job.sh": b"#!/bin/bash\ntrue\n"}, ["--comment=a\x00b"], "contains a newline, NUL"),
    ({"job.sh": b"#!/bin/bash\n#SBATCH --comment=a\x00b\ntrue\n"}, None, "contains a NUL byte"),
], ids=["too-large", "not-utf8", "no-shebang", "gid", "uid", "export-all", "export-agent-var", "newline", "nul",
        "nul-in-script"])
def test_hostile_content_and_options_are_refused(alice, make_tool, slurm, figures, files, arguments, expected):
    tool = make_tool("small-files", submit__max_file_size=2048)
    try:
        submission = new_submission(alice, files, sbatch_arguments=arguments)
    except ApiError as refused:
        # The API refused to store it, so it never reaches a cluster. A NUL in sbatch_arguments is
        # refused by PostgreSQL (text cannot hold NUL), which the API answers with a 500.
        assert refused.status in (400, 422, 500)
        figures.record("hostile_inputs_refused_by_the_api")
        return

    assert tool.run().returncode == 0

    current = alice.get_submission(submission["id"])
    assert current["status"] == "REJECTED" and expected in current["report_message"]
    assert job_for(slurm, submission) == []
    figures.record("hostile_inputs_refused_by_the_tool")


def test_shell_metacharacters_are_data_not_commands(alice, tool, slurm, figures):
    figures.record("hostile_inputs_harmless_as_data")
    marker = Path("/var/tmp/jgs-metachar-pwned")
    marker.unlink(missing_ok=True)
    name = f"$(touch${{IFS}}{marker});`touch${{IFS}}{marker}`|x&y>z"  # ${IFS}: no space to split on
    submission = new_submission(alice, SHORT_JOB, sbatch_arguments=[f"--job-name={name}"])
    assert tool.run().returncode == 0
    [job] = job_for(slurm, submission)
    assert job["name"] == name
    tool.run_until(lambda: status_of(alice, submission) == "DONE")
    assert not marker.exists()


def test_no_secret_or_token_in_any_log_line(alice, make_tool, stack, figures):
    key_bytes = stack.jwt_key_path.read_bytes()
    for log_format in ("json", "text"):
        tool = make_tool(unique(f"secrets-{log_format}"))
        new_submission(alice, SHORT_JOB)
        result = tool.run("-v", "--log-format", log_format)
        assert result.returncode == 0, result.stderr[-2000:]
        log = result.stderr + result.stdout
        assert "DEBUG" in log and "submission" in log
        token = json.loads(tool.token_cache.read_text())["access_token"]
        for secret in ("local-slurm-secret", token, key_bytes.hex()):
            assert secret not in log
        assert key_bytes.decode("latin-1") not in log
        assert JWT_RE.search(log) is None


def test_two_passes_at_once_one_works_the_other_exits_75(alice, tool):
    new_submission(alice, SHORT_JOB)
    command = [str(SCRIPT), "--once", "--config", str(tool.config)]
    began = time.monotonic()
    first, second = (subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(2))
    codes = sorted(p.wait(timeout=120) for p in (first, second))
    assert codes == [0, 75]
    assert time.monotonic() - began < 60


def test_a_pass_killed_while_holding_the_lock_does_not_block_the_next(alice, tool):
    new_submission(alice, SHORT_JOB)
    killed = tool.run(env={"JOBBERGATE_SYNC_CRASH_AT": "after-files-written"})
    assert killed.returncode == -9
    assert tool.run().returncode == 0


def peak_memory_mib_of(command: list[str]) -> tuple[int, float]:
    """Run `command` under a small Python parent and return (exit code, the largest resident set
    any of its processes reached, in MiB)."""
    wrapper = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:], stdin=subprocess.DEVNULL, "
               "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
               "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True, text=True, check=True).stdout
    code, kilobytes = out.split()
    return int(code), int(kilobytes) / 1024


def test_a_large_support_file_is_streamed_never_held_in_memory(alice, make_tool, slurm, figures):
    figures.record("hostile_inputs_streamed")
    size_mib = 128
    tool = make_tool("large-files", submit__max_file_size=(size_mib + 1) * 1024 * 1024,
                     submit__max_total_size=(size_mib + 1) * 1024 * 1024)

    def pass_with(data: bytes) -> tuple[dict[str, Any], Path, float]:
        workdir = Path(f"/home/alice/jgs/{unique('large')}")
        submission = new_submission(alice, {"job.sh": b"#!/bin/bash\nwc -c big.bin\n", "big.bin": data},
                                    execution_directory=str(workdir))
        code, peak_mib = peak_memory_mib_of([str(SCRIPT), "--once", "--config", str(tool.config)])
        assert code == 0
        return submission, workdir, peak_mib

    _, _, baseline_mib = pass_with(b"\x00" * 1024)  # the same pass with a 1 KiB file: the interpreter and its imports
    submission, workdir, peak_mib = pass_with(b"\x00" * size_mib * 1024 * 1024)

    figures.record("peak_mib_of_a_pass_with_a_128_mib_file", round(peak_mib))
    assert status_of(alice, submission) in ("SUBMITTED", "DONE")  # a quick job may end within the pass
    assert (workdir / "big.bin").stat().st_size == size_mib * 1024 * 1024
    added = peak_mib - baseline_mib
    assert added < size_mib / 4, f"a {size_mib} MiB file added {added:.0f} MiB to the pass's peak ({baseline_mib:.0f} MiB)"
