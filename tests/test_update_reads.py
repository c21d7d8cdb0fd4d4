"""What the update phase reads from slurmrestd: our jobs only (GET jobs/state, or GET jobs with
update_time), full records only for the jobs whose state changed; and a lean start."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

import jobbergate_sync
from fakes import FakeSlurm, run, slurm_of
from jobbergate_sync import Deadline, Http, SlurmRest, load_config, no_job_changes, parse_state_entry, state_query_chunks

ROOT = Path(__file__).resolve().parent.parent


def task(job_id: int, array_id: int, task_id: Any, state: str, pending: str = "", user: str = "alice") -> dict[str, Any]:
    """A v0.0.40+ slurmctld record of an array task (task_id None: the tasks not yet split off)."""
    return {"job_id": job_id, "job_state": [state], "state_reason": "None", "user_name": user,
            "array_job_id": {"set": True, "number": array_id},
            "array_task_id": {"set": task_id is not None, "number": task_id or 0},
            "array_task_string": pending, "exit_code": {"return_code": {"set": True, "number": 0}}}


def slurm_client(config_file: Any, tmp_path: Path, version: str) -> SlurmRest:
    config = load_config(config_file(**{"slurmrestd.api_version": version}), {})
    (tmp_path / "state").mkdir(mode=0o700, exist_ok=True)
    return SlurmRest(config, Http(Deadline(60), 1, 0), states_path=str(tmp_path / "state" / "slurm-jobs.json"))


def queries(slurm: FakeSlurm, route: str) -> list[dict[str, list[str]]]:
    """The query parameters of each request slurmrestd got on `route` ("jobs", "jobs/state", "job/")."""
    found = []
    for _, url, _ in slurm.requests:
        path = urlparse(url).path.rstrip("/")
        if path.endswith("/" + route) or (route == "job/" and "/slurm/" in path and "/job/" in path):
            found.append(parse_qs(urlparse(url).query))
    return found


def active(stack: Any, *job_ids: int) -> None:
    for number, job_id in enumerate(job_ids, start=1):
        stack.api.add_submission(number, status="SUBMITTED", slurm_job_id=job_id)


# ---------------------------------------------------------------------------------------------
# Pure parts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("entry", "parsed"), [
    ({"job_id": "12", "state": ["RUNNING"]}, (12, None, ["RUNNING"])),
    ({"job_id": "12_3", "state": ["PENDING"]}, (12, 3, ["PENDING"])),
    ({"job_id": "12_*", "state": ["PENDING"]}, None),  # the whole array, not one task
    ({"job_id": "12+1", "state": ["RUNNING"]}, None),  # a heterogeneous job's component
    ("12", None),
])
def test_state_entries(entry: Any, parsed: Any) -> None:
    assert parse_state_entry(entry) == parsed


def test_chunks_fit_the_url_budget_and_keep_every_id_in_order() -> None:
    ids = list(range(1_000_000, 1_002_000))
    chunks = list(state_query_chunks(ids, 7000))
    assert len(chunks) > 1
    assert [job_id for chunk in chunks for job_id in chunk] == ids
    assert all(len("".join(f"job_id={job_id}&" for job_id in chunk)) <= 7000 for chunk in chunks)


@pytest.mark.parametrize(("status", "body", "unchanged"), [
    (304, None, True),  # v0.0.38
    (200, {"jobs": [], "warnings": [{"description": "No job changes since update_time=5"}]}, True),  # v0.0.39+
    (200, {"jobs": [], "warnings": []}, False),  # a cluster without jobs
    (200, {"jobs": [{"job_id": 1}], "warnings": []}, False),
])
def test_what_says_no_job_changed(status: int, body: Any, unchanged: bool) -> None:
    assert no_job_changes(status, body) is unchanged


# ---------------------------------------------------------------------------------------------
# GET jobs/state (v0.0.40 on)
# ---------------------------------------------------------------------------------------------


def test_states_asks_for_our_ids_only_and_leaves_out_jobs_slurm_does_not_hold(stack, config_file, tmp_path) -> None:
    slurm = slurm_of(stack, "v0.0.44")
    for job_id in (30, 31, 500):
        slurm.add_job(job_id, ["RUNNING"])
    client = slurm_client(config_file, tmp_path, "v0.0.44")
    held = client.states([31, 30, 999])
    assert {job_id: [job["job_state"] for job in records] for job_id, records in held.items()} == {
        30: [["RUNNING"]], 31: [["RUNNING"]]}
    [query] = queries(slurm, "jobs/state")
    assert query["job_id"] == ["30", "31", "999"]  # repeated parameters: a comma list is refused
    assert queries(slurm, "jobs") == []


def test_long_id_lists_go_in_chunks(stack, config_file, tmp_path) -> None:
    slurm = slurm_of(stack, "v0.0.41")
    ids = list(range(1_000_000, 1_010_000))
    for job_id in ids[::7]:
        slurm.add_job(job_id, ["PENDING"])
    held = slurm_client(config_file, tmp_path, "v0.0.41").states(ids)
    assert sorted(held) == ids[::7]
    asked = queries(slurm, "jobs/state")
    assert len(asked) == len(list(state_query_chunks(ids, 65536))) > 1
    assert [int(job_id) for query in asked for job_id in query["job_id"]] == ids


ARRAYS = [task(28, 28, 1, "COMPLETED"), task(27, 28, 0, "RUNNING"),  # array 28: task 0 started as job 27
          task(40, 40, None, "PENDING", pending="2-5")]  # array 40: tasks 2 to 5 not yet split off


@pytest.mark.parametrize(("version", "state_queries"), [("v0.0.40", 1), ("v0.0.42", 2)])
def test_every_task_of_an_array_is_followed(stack, config_file, tmp_path, version: str, state_queries: int) -> None:
    """v0.0.40 lists a started task under its array's id; from v0.0.41 under its own ("27_0"), which
    does not say which array it is of: that array is then asked alone."""
    slurm = slurm_of(stack, version)
    for record in ARRAYS:
        slurm.jobs[record["job_id"]] = record
    slurm.add_job(30, ["RUNNING"])
    held = slurm_client(config_file, tmp_path, version).states([28, 30, 40])
    labels = {job_id: sorted(jobbergate_sync.array_task_label(job) for job in records) for job_id, records in held.items()}
    assert labels == {28: ["0", "1"], 30: ["?"], 40: ["2", "3", "4", "5"]}
    assert all(jobbergate_sync.array_job_id_of(job) == 28 for job in held[28])
    assert len(queries(slurm, "jobs/state")) == state_queries


def test_a_pinned_version_without_jobs_state_reads_the_job_list(stack, config_file, tmp_path) -> None:
    """Slurm 23.11 serves v0.0.40 without jobs/state."""
    slurm = slurm_of(stack, "v0.0.40")
    slurm.serves_state_query = False
    slurm.add_job(30, ["RUNNING"])
    client = slurm_client(config_file, tmp_path, "v0.0.40")
    assert list(client.states([30])) == [30]
    assert list(client.states([30])) == [30]
    assert len(queries(slurm, "jobs/state")) == 1  # tried once in a process, then the job list
    assert len(queries(slurm, "jobs")) == 2


def test_unchanged_jobs_cost_one_state_query_and_no_job_reads(stack, config_file) -> None:
    slurm = slurm_of(stack, "v0.0.42")
    for job_id in (30, 31, 32):
        slurm.add_job(job_id, ["RUNNING"])
    slurm.add_job(500, ["PENDING"], user="bob")  # not ours
    active(stack, 30, 31, 32)
    config = config_file(**{"slurmrestd.api_version": "v0.0.42"})
    assert run(config) == 0
    assert len(stack.api.called("update")) == 3  # first sight: each job's full record read and reported
    assert len(queries(slurm, "job/")) == 3
    slurm.requests.clear()
    assert run(config) == 0
    assert len(stack.api.called("update")) == 3
    assert [query["job_id"] for query in queries(slurm, "jobs/state")] == [["30", "31", "32"]]
    assert queries(slurm, "job/") == [] and queries(slurm, "jobs") == []
    slurm.jobs[31].update(job_state=["COMPLETED"], state_reason="None")
    slurm.requests.clear()
    assert run(config) == 0
    assert [urlparse(url).path for _, url, _ in slurm.requests if "/job/" in url] == ["/slurm/v0.0.42/job/31"]
    assert [(body["slurm_job_id"], body["slurm_job_state"]) for body in stack.api.called("update")][3:] == [
        (31, "COMPLETED")]


def test_a_report_due_again_reads_the_full_record(stack, config_file, tmp_path) -> None:
    slurm = slurm_of(stack, "v0.0.42")
    slurm.add_job(30, ["PENDING"], reason="Priority")
    active(stack, 30)
    config = config_file(**{"slurmrestd.api_version": "v0.0.42", "run.resend_after": 600})
    assert run(config) == 0
    with sqlite3.connect(tmp_path / "state" / "journal.sqlite3") as db:
        db.execute("UPDATE submissions SET last_reported_at = ?", (time.time() - 601,))
    assert run(config) == 0
    updates = stack.api.called("update")
    assert [(body["slurm_job_state"], body["slurm_job_state_reason"]) for body in updates] == [
        ("PENDING", "Priority"), ("PENDING", "Priority")]


def test_an_arrays_progress_is_reported_from_states_alone(stack, config_file) -> None:
    slurm = slurm_of(stack, "v0.0.40")
    for record in (task(28, 28, 1, "RUNNING", user=slurm.default_user), task(27, 28, 0, "RUNNING", user=slurm.default_user),
                   task(26, 28, 2, "RUNNING", user=slurm.default_user)):
        slurm.jobs[record["job_id"]] = record
    active(stack, 28)
    config = config_file(**{"slurmrestd.api_version": "v0.0.40"})
    assert run(config) == 0
    slurm.jobs[27]["job_state"] = ["COMPLETED"]
    assert run(config) == 0
    assert [body["slurm_job_state_reason"] for body in stack.api.called("update")] == [
        "array: 0 of 3 task records finished", "array: 1 of 3 task records finished"]


# ---------------------------------------------------------------------------------------------
# GET jobs?update_time= (v0.0.38, v0.0.39)
# ---------------------------------------------------------------------------------------------


def remembered(tmp_path: Path) -> dict[str, Any]:
    return json.loads((tmp_path / "state" / "slurm-jobs.json").read_text())


@pytest.mark.parametrize("version", ["v0.0.38", "v0.0.39"])
def test_no_change_since_the_last_read_answers_from_memory(stack, config_file, tmp_path, version: str) -> None:
    slurm = slurm_of(stack, version) if version != "v0.0.38" else stack.slurm
    slurm.add_job(100, "RUNNING")
    slurm.add_job(101, "PENDING")
    slurm.add_job(500, "PENDING", user="bob")
    client = slurm_client(config_file, tmp_path, version)
    first = client.states([100, 101])
    assert queries(slurm, "jobs") == [{}]  # nothing remembered yet: every job
    assert sorted(remembered(tmp_path)["held"]) == ["100", "101"]  # ours only
    slurm.last_job_update -= 60  # nothing changed since well before the first read
    second = client.states([100, 101])
    since = queries(slurm, "jobs")[1]["update_time"]
    assert since == [str(remembered(tmp_path)["since"])]
    assert {job_id: [job["job_state"] for job in records] for job_id, records in second.items()} == {
        job_id: [job["job_state"] for job in records] for job_id, records in first.items()}
    assert not any(jobbergate_sync.is_full_record(job) for records in second.values() for job in records)


def test_a_change_anywhere_answers_every_job_and_is_remembered(stack, config_file, tmp_path) -> None:
    slurm = stack.slurm
    slurm.add_job(100, "RUNNING")
    slurm.add_job(500, "PENDING", user="bob")
    client = slurm_client(config_file, tmp_path, "v0.0.38")
    client.states([100])
    slurm.last_job_update -= 60
    slurm.jobs[500]["job_state"] = "RUNNING"  # another user's job changed: slurmctld answers everything
    slurm.jobs[100]["job_state"] = "COMPLETED"
    held = client.states([100])
    assert "update_time" in queries(slurm, "jobs")[1]
    assert held[100][0]["job_state"] == "COMPLETED" and jobbergate_sync.is_full_record(held[100][0])
    assert remembered(tmp_path)["held"]["100"][0]["job_state"] == "COMPLETED"


@pytest.mark.parametrize("spoil", ["stale", "new id", "garbage", "other url"])
def test_a_memory_that_cannot_answer_means_a_full_read(stack, config_file, tmp_path, spoil: str) -> None:
    slurm = stack.slurm
    slurm.add_job(100, "RUNNING")
    slurm.add_job(101, "RUNNING")
    client = slurm_client(config_file, tmp_path, "v0.0.38")
    client.states([100])
    slurm.last_job_update -= 60
    path = tmp_path / "state" / "slurm-jobs.json"
    memory = remembered(tmp_path)
    asked = [100]
    if spoil == "stale":
        memory["read_at"] -= jobbergate_sync.STATES_MEMORY_MAX_AGE + 1
    elif spoil == "new id":
        asked = [100, 101]  # a job the last read did not look for
    elif spoil == "other url":
        memory["url"] = "http://elsewhere:6820"
    path.write_text("{not json" if spoil == "garbage" else json.dumps(memory))
    held = client.states(asked)
    assert queries(slurm, "jobs")[1] == {}
    assert sorted(held) == asked


def test_update_passes_on_v38_read_no_job_while_nothing_changes(stack, config_file) -> None:
    stack.slurm.add_job(100, "RUNNING")
    stack.slurm.add_job(101, "PENDING", reason="Priority")
    active(stack, 100, 101)
    config = config_file()
    assert run(config) == 0
    stack.slurm.last_job_update -= 60
    stack.slurm.requests.clear()
    assert run(config) == 0
    assert [urlparse(url).path for _, url, _ in stack.slurm.requests] == ["/slurm/v0.0.38/ping", "/slurm/v0.0.38/jobs"]
    assert sorted(body["slurm_job_state"] for body in stack.api.called("update")) == ["PENDING", "RUNNING"]  # workers


# ---------------------------------------------------------------------------------------------
# Lean start
# ---------------------------------------------------------------------------------------------

LAZY_MODULES = ("jwt", "tenacity", "pythonjsonlogger", "logging.handlers")

NO_OP_PASS = """
import json, os, re, sys, time
import responses
import jobbergate_sync
api, config, state = sys.argv[1:4]
with os.fdopen(os.open(state + "/token.json", os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
    json.dump({"token_url": sys.argv[4], "client_id": sys.argv[5], "access_token": "cached-token",
               "expires_at": time.time() + 3600}, handle)
empty = {"items": [], "pages": 0, "total": 0, "page": 1, "size": 100}
with responses.RequestsMock() as mock:
    mock.add(responses.GET, re.compile(re.escape(api) + "/job-submissions/agent/(pending|active).*"), json=empty)
    mock.add(responses.PUT, re.compile(re.escape(api) + "/clusters/status.*"), status=202)
    code = jobbergate_sync.main(["--once", "--config", config, "--log-format", "text"])
print(json.dumps({"code": code, "imported": [name for name in %r if name in sys.modules]}))
""" % (LAZY_MODULES,)


def test_a_no_op_pass_imports_none_of_the_lazily_imported_modules(config_file, tmp_path) -> None:
    config = config_file(run__role="always")  # role = auto asks slurmrestd (a token: jwt) which head node is in charge
    (tmp_path / "state").mkdir(mode=0o700)
    issuer = load_config(config, {}).oidc
    result = subprocess.run(
        [sys.executable, "-c", NO_OP_PASS, jobbergate_sync.load_config(config, {}).jobbergate.api_url.rstrip("/"),
         config, str(tmp_path / "state"), issuer.issuer.rstrip("/") + "/protocol/openid-connect/token", issuer.client_id],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome == {"code": 0, "imported": []}, result.stderr
