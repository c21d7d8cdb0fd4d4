"""End-to-end scenarios: work created through the real jobbergate-api as a user would, then the
installed `jobbergate-sync` run against the real slurmrestd."""

from __future__ import annotations

import json
import os
import pwd
import time
from pathlib import Path

import pytest

from scenario import job_for, new_submission, status_of, unique

HAPPY_SCRIPT = b"""#!/bin/bash
#SBATCH --job-name=jgs-happy
#SBATCH --time=00:05:00
#SBATCH --output=happy-%j.out
#SBATCH --ntasks=1
source ./helper.sh
echo "user=$(id -un) pwd=$(pwd) greeting=$GREETING"
env | sort > env-$SLURM_JOB_ID.txt
sleep 2
"""


def test_happy_path_runs_as_the_user_with_the_scripts_directives(alice, tool, slurm):
    workdir = f"/home/alice/jgs/{unique('happy')}"
    sub = new_submission(alice, {"job.sh": HAPPY_SCRIPT, "helper.sh": b"GREETING=hello-from-support\n"},
                         sbatch_arguments=["--partition=debug"], execution_directory=workdir)

    result = tool.run(env={"AGENT_ONLY_CANARY": "must-not-reach-jobs"})

    assert result.returncode == 0, result.stderr
    current = alice.get_submission(sub["id"])
    assert current["status"] == "SUBMITTED"
    job_id = current["slurm_job_id"]
    job = slurm.slurm_job(job_id)
    assert job["name"] == "jgs-happy"
    assert job["time_limit"] == 5
    assert job["standard_output"] == f"{workdir}/happy-%j.out"
    assert job["current_working_directory"] == workdir
    assert job["user_name"] == "alice" and job["partition"] == "debug"
    alice_uid = pwd.getpwnam("alice").pw_uid
    for name in ("job.sh", "helper.sh"):
        assert os.stat(f"{workdir}/{name}").st_uid == alice_uid
    assert os.stat(workdir).st_uid == alice_uid

    tool.run_until(lambda: status_of(alice, sub) == "DONE")

    done = alice.get_submission(sub["id"])
    assert json.loads(done["slurm_job_info"])["job_id"] == job_id
    output = Path(f"{workdir}/happy-{job_id}.out").read_text()
    assert f"user=alice pwd={workdir} greeting=hello-from-support" in output
    environment = Path(f"{workdir}/env-{job_id}.txt").read_text()
    assert "must-not-reach-jobs" not in environment and "JOBBERGATE_SYNC" not in environment
    assert "HOME=/home/alice" in environment and "USER=alice" in environment


def test_failing_and_overtime_jobs_end_aborted_with_the_reason(alice, tool):
    failing = new_submission(alice, {"fail.sh": b"#!/bin/bash\nexit 3\n"})
    overtime = new_submission(alice, {"slow.sh": b"#!/bin/bash\n#SBATCH --time=1\nsleep 600\n"})

    tool.run_until(lambda: status_of(alice, failing) == "ABORTED" and status_of(alice, overtime) == "ABORTED",
                   timeout=240, pause=5)

    failed = alice.get_submission(failing["id"])
    assert failed["slurm_job_state"] == "FAILED"
    assert failed["report_message"] == "NonZeroExitCode (exit code 3)"
    timed_out = alice.get_submission(overtime["id"])
    assert timed_out["slurm_job_state"] == "TIMEOUT"
    assert timed_out["report_message"] == "TimeLimit"


@pytest.mark.parametrize("files, arguments, owner, message", [
    ({"job.sh": b"#!/bin/bash\n#SBATCH --uid=0\nid\n"}, None, "alice", "--uid is not allowed"),
    ({"job.sh": b"#!/bin/bash\nid\n"}, ["--burst-buffer=x"], "alice", "unsupported option --burst-buffer"),
    ({"job.sh": b"#!/bin/bash\nid\n"}, ["--export=ALL"], "alice", "--export=ALL is not allowed"),
    ({"job.sh": b"echo no interpreter line\n"}, None, "alice", "does not start with '#!'"),
    ({"job.sh": b"#!/bin/bash\nid\n"}, None, "ghost", "'ghost@example.com' maps to user 'ghost', which does not exist"),
    ({"job.sh": b"#!/bin/bash\nid\n"}, None, "root-user", "'root@example.com' maps to 'root' (uid 0), a system account"),
])
def test_bad_submissions_are_rejected_and_never_reach_slurm(users, tool, slurm, files, arguments, owner, message):
    sub = new_submission(users[owner], files, sbatch_arguments=arguments)

    result = tool.run()

    assert result.returncode == 0, result.stderr
    current = users[owner].get_submission(sub["id"])
    assert current["status"] == "REJECTED"
    assert message in current["report_message"]
    assert job_for(slurm, sub) == []


def test_cancelled_before_submission_is_closed_without_a_job(alice, tool, slurm):
    sub = new_submission(alice, {"job.sh": b"#!/bin/bash\nsleep 1\n"})
    alice.cancel(sub["id"])

    assert tool.run().returncode == 0

    current = alice.get_submission(sub["id"])
    assert current["status"] == "ABORTED" and current["slurm_job_id"] is None
    assert job_for(slurm, sub) == []


def test_cancelled_while_running_cancels_the_slurm_job_as_its_owner(alice, tool, slurm):
    sub = new_submission(alice, {"job.sh": b"#!/bin/bash\nsleep 600\n"})
    tool.run_until(lambda: (alice.get_submission(sub["id"]).get("slurm_job_state") == "RUNNING"))
    job_id = alice.get_submission(sub["id"])["slurm_job_id"]

    alice.cancel(sub["id"])
    results = tool.run_until(lambda: status_of(alice, sub) == "ABORTED")

    assert slurm.slurm_job(job_id)["job_state"] == "CANCELLED"
    cancel_lines = [line for result in results for line in result.log if line["message"].startswith("cancelled Slurm job")]
    assert cancel_lines and cancel_lines[0]["user"] == "alice", [line["message"] for r in results for line in r.log]


def test_job_purged_from_slurmctld_gets_its_end_state_from_slurmdbd(alice, tool, slurm):
    sub = new_submission(alice, {"job.sh": b"#!/bin/bash\nexit 0\n"})
    assert tool.run().returncode == 0
    job_id = alice.get_submission(sub["id"])["slurm_job_id"]
    deadline = time.monotonic() + 180
    while slurm.slurm_job(job_id) is not None:  # MinJobAge=30: purged some 30-80 s after it ends
        assert time.monotonic() < deadline, "the job was never purged from slurmctld"
        time.sleep(3)

    assert tool.run().returncode == 0

    current = alice.get_submission(sub["id"])
    assert current["status"] == "DONE" and current["slurm_job_state"] == "COMPLETED"


def test_token_is_fetched_once_and_an_expired_cached_token_is_replaced(tool, issuer):
    issuer.reset()
    for _ in range(3):
        assert tool.run().returncode == 0
    assert issuer.issued("local-slurm") == 1

    expired = issuer.mint(client="local-slurm", ttl=-30)
    tool.token_cache.write_text(json.dumps({"token_url": tool.settings["oidc.issuer"] + "/protocol/openid-connect/token",
                                            "client_id": "local-slurm", "access_token": expired,
                                            "expires_at": time.time() + 3600}))
    result = tool.run()
    assert result.returncode == 0, result.stderr
    assert issuer.issued("local-slurm") == 2


def test_health_shows_the_cluster_healthy_with_our_interval(alice, tool):
    assert tool.run().returncode == 0
    status = alice.cluster_status("local-slurm")
    assert status["is_healthy"] is True and status["interval"] == 90


def test_two_clusters_each_see_only_their_own_submissions(alice, tool, make_tool, slurm):
    other = make_tool("other", cluster="other-slurm")
    # long enough not to end within the pass that submits it (a bare `true` could be seen DONE at once)
    ours = new_submission(alice, {"job.sh": b"#!/bin/bash\nsleep 10\n"})
    theirs = new_submission(alice, {"job.sh": b"#!/bin/bash\nsleep 10\n"}, client_id="other-slurm")

    assert tool.run().returncode == 0
    assert status_of(alice, ours) == "SUBMITTED" and status_of(alice, theirs) == "CREATED"
    assert job_for(slurm, theirs, cluster="other-slurm") == []

    assert other.run().returncode == 0
    assert status_of(alice, theirs) == "SUBMITTED"
    assert len(job_for(slurm, theirs, cluster="other-slurm")) == 1
    assert len(job_for(slurm, ours)) == 1


def test_slurmrestd_outage_keeps_submissions_created_until_it_returns(alice, tool, services):
    sub = new_submission(alice, {"job.sh": b"#!/bin/bash\nsleep 10\n"})
    services.stop("slurmrestd")
    try:
        result = tool.run()
        assert result.returncode == 69, result.stderr
        assert status_of(alice, sub) == "CREATED"
        assert alice.get_submission(sub["id"])["report_message"] is None
    finally:
        services.start("slurmrestd")
    result = tool.run()
    assert result.returncode == 0, result.stderr
    assert status_of(alice, sub) == "SUBMITTED"
