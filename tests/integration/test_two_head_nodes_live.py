"""Two head nodes on the real stack: two jobbergate-sync instances, each with its own state directory
and host name (head1, head2), run passes side by side against one Slurm leg and API version while
submissions keep arriving. Two slurmctld cannot run side by side here, so a proxy in front of the
leg's slurmrestd rewrites its ping answer to list two controllers, head1 then head2, each UP or DOWN
as the test says (the entries shaped as that version's own, see fakes.ping_of_controllers); every
other request passes through to the real slurmrestd and slurmctld.

Switching which controller is in charge, then SIGKILLing the active instance right after Slurm
accepted a job and switching back: every submission ends with exactly one Slurm job carrying its tag
(counted in slurmctld and slurmdbd), none lost."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import pytest

import helpers
from fakes import ping_of_controllers
from faulty_proxy import FaultyProxy
from scenario import new_submission, tag
from tool import Result, Tool

CLUSTER = "other-slurm"  # the agent these two instances stand for; local-slurm is every other test's
SCRIPT = {"job.sh": b"#!/bin/bash\ntrue\n"}
PING_PATH = re.compile(r"^/slurm/v0\.0\.\d+/ping/?$")
# A pass stops starting work after 10 s; the host taking over waits that plus two 5 s exchanges.
QUICK = {"run.deadline": 10, "slurmrestd.timeout": 5}
TAKEOVER_WAIT = 21
SUBMISSIONS_PER_PHASE = (20, 20, 10)  # while head1, then head2, then head1 again is in charge


class Controllers:
    """The controllers the proxied ping answer lists, in SlurmctldHost order: name -> answering."""

    def __init__(self, proxy: FaultyProxy):
        self.up = {"head1": True, "head2": True}
        proxy.rewrite = self.rewrite

    def rewrite(self, method: str, path: str, body: bytes) -> Optional[bytes]:
        if method != "GET" or not PING_PATH.match(path.split("?")[0]):
            return None
        return json.dumps(ping_of_controllers(json.loads(body), self.up)).encode()


def two_instances(make_tool: Any, leg: str, proxy: FaultyProxy) -> tuple[Tool, Tool]:
    """The tools of head1 and head2: their own state directories, one leg and API version, through the proxy."""
    head1, head2 = (make_tool(name, cluster=CLUSTER, leg=leg, run__host_names=name, slurmrestd__url=proxy.url,
                              **{key.replace(".", "__"): value for key, value in QUICK.items()})
                    for name in ("head1", "head2"))
    return head1, head2


def side_by_side(tools: list[Tool]) -> list[Result]:
    """One pass of each instance at the same time, as the two hosts' timers run them."""
    with ThreadPoolExecutor(len(tools)) as pool:
        return list(pool.map(lambda tool: tool.run(), tools))


def message(result: Result) -> str:
    return result.summary()["message"]


def pending_ids(submissions: list[dict[str, Any]], user: Any) -> list[int]:
    return [item["id"] for item in submissions if user.get_submission(item["id"])["status"] == "CREATED"]


def passes_until_none_pending(active: Tool, standby: Tool, in_charge: str, submissions: list[dict[str, Any]],
                              arriving: int, user: Any, figures: Any, timeout: float = 240) -> list[Result]:
    """Passes of both instances side by side every few seconds, two new submissions arriving before
    each until `arriving` have, then until every submission is past CREATED. The one not in charge
    must stand by every time. Returns the passes of the instance in charge."""
    deadline = time.monotonic() + timeout
    passes = []
    while True:
        for _ in range(min(2, arriving)):
            submissions.append(new_submission(user, SCRIPT, client_id=CLUSTER))
            arriving -= 1
        ours, theirs = side_by_side([active, standby])
        passes.append(ours)
        figures.record("two_head_passes", 2)
        assert ours.returncode in (0, 1), ours.stderr[-3000:]  # 1: an item of another test of this cluster failed
        assert theirs.returncode == 0 and "standby" in message(theirs), theirs.stderr[-3000:]
        assert f"runs on {in_charge}" in message(theirs)
        if not arriving and not pending_ids(submissions, user):
            return passes
        assert time.monotonic() < deadline, f"still pending: {pending_ids(submissions, user)}; last:\n{ours.stderr[-3000:]}"
        time.sleep(2)


def tagged_jobs(slurm: helpers.SlurmControl, stack: helpers.Stack, leg: str, tags: set[str]) -> dict[str, set[str]]:
    """tag -> the ids of the Slurm jobs carrying it, in slurmctld and in slurmdbd."""
    found: dict[str, set[str]] = {}
    for job in slurm.slurm_jobs():
        if job.get("comment") in tags:
            found.setdefault(job["comment"], set()).add(str(job["job_id"]))
    accounting = helpers.slurm_cli("sacct", "-a", "-X", "-n", "-P", "-o", "JobID,Comment", "-S", "now-2hours",
                                   stack=stack, leg=leg)
    for line in accounting.stdout.splitlines():
        job_id, _, comment = line.partition("|")
        if comment in tags:
            found.setdefault(comment, set()).add(job_id)
    return found


@pytest.mark.parametrize("leg", ["2205", "2411", "2511"])
def test_two_instances_follow_the_controller_in_charge_and_a_killed_one_runs_nothing_twice(
        make_tool, stack, slurm_on, alice, figures, leg):
    proxy = FaultyProxy(stack.leg(leg).url)
    controllers = Controllers(proxy)
    head1, head2 = two_instances(make_tool, leg, proxy)
    submissions: list[dict[str, Any]] = []
    try:
        passes_until_none_pending(head1, head2, "head1", submissions, SUBMISSIONS_PER_PHASE[0], alice, figures)
        assert not head2.journal.exists()  # it stood by: no journal, no submit

        controllers.up = {"head1": False, "head2": True}  # head1's slurmctld stops answering
        passes_until_none_pending(head2, head1, "head2", submissions, SUBMISSIONS_PER_PHASE[1], alice, figures)

        submissions += [new_submission(alice, SCRIPT, client_id=CLUSTER) for _ in range(SUBMISSIONS_PER_PHASE[2])]
        # One worker: with several, the other workers' submits may also be accepted before the kill lands.
        killed = head2.run(env={"JOBBERGATE_SYNC_CRASH_AT": "after-slurm-submit", "JOBBERGATE_SYNC_RUN_WORKERS": "1"})
        assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILLed once slurmrestd accepted a job
        figures.record("crash_points")
        controllers.up = {"head1": True, "head2": True}  # head1 is back in charge
        after_takeover = passes_until_none_pending(head1, head2, "head1", submissions, 0, alice, figures)
    finally:
        proxy.close()

    assert len(submissions) == sum(SUBMISSIONS_PER_PHASE)
    adopted = [line for result in after_takeover for line in result.log if line["message"].startswith("submission")
               and "adopting Slurm job" in line["message"]]
    assert len(adopted) == 1, "head1 adopts the job head2 submitted just before it was killed"
    statuses = {item["id"]: alice.get_submission(item["id"]) for item in submissions}
    unfinished = {submission_id: (body["status"], body.get("slurm_job_id"), body.get("report_message"))
                  for submission_id, body in statuses.items() if body["status"] not in ("SUBMITTED", "DONE")}
    assert unfinished == {}  # none lost, none rejected
    tags = {tag(item, CLUSTER): item["id"] for item in submissions}
    slurm = slurm_on(leg)

    def every_tag_found() -> Optional[dict[str, set[str]]]:
        jobs = tagged_jobs(slurm, stack, leg, set(tags))
        return jobs if set(jobs) == set(tags) else None

    found = helpers.wait_for(every_tag_found, 60, 2, "a job of every submission in slurmctld or slurmdbd")
    duplicates = {name: ids for name, ids in found.items() if len(ids) != 1}
    figures.record("two_head_submissions", len(submissions))
    figures.record("two_head_duplicates", sum(len(ids) - 1 for ids in found.values()))
    assert duplicates == {}
    assert {tags[name]: int(next(iter(ids))) for name, ids in found.items()} == {
        submission_id: body["slurm_job_id"] for submission_id, body in statuses.items()}


@pytest.mark.parametrize("leg", ["2205", "2411", "2511"])
def test_a_job_purged_before_the_takeover_is_adopted_from_slurmdbd(make_tool, stack, slurm_on, alice, figures, leg):
    """head1 is killed right after Slurm accepted a job; the job runs, ends and slurmctld forgets it
    (MinJobAge) before head2 takes over: head2 finds it in slurmdbd by its tag and submits nothing."""
    proxy = FaultyProxy(stack.leg(leg).url)
    controllers = Controllers(proxy)
    head1, head2 = two_instances(make_tool, leg, proxy)
    slurm = slurm_on(leg)
    try:
        side_by_side([head1, head2])  # head1 takes over and waits, head2 stands by
        time.sleep(TAKEOVER_WAIT)
        submission = new_submission(alice, SCRIPT, client_id=CLUSTER)
        killed = head1.run(env={"JOBBERGATE_SYNC_CRASH_AT": "after-slurm-submit"})
        assert killed.returncode == -9, killed.stderr[-3000:]
        figures.record("crash_points")
        [job] = [job for job in slurm.slurm_jobs() if job.get("comment") == tag(submission, CLUSTER)]
        helpers.wait_for(lambda: slurm.slurm_job(job["job_id"]) is None, 240, 3, "slurmctld to purge the job")

        controllers.up = {"head1": False, "head2": True}
        waiting = head2.run()
        assert "end by" in message(waiting), waiting.stderr[-3000:]
        time.sleep(TAKEOVER_WAIT)
        adopting = head2.run()
    finally:
        proxy.close()

    assert adopting.returncode == 0, adopting.stderr[-3000:]
    assert any("found in slurmdbd" in line["message"] for line in adopting.log), adopting.stderr[-3000:]
    assert alice.get_submission(submission["id"])["slurm_job_id"] == job["job_id"]
    found = tagged_jobs(slurm, stack, leg, {tag(submission, CLUSTER)})
    assert found == {tag(submission, CLUSTER): {str(job["job_id"])}}
    figures.record("two_head_duplicates", len(found[tag(submission, CLUSTER)]) - 1)
